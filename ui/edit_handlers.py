"""Step 3 of the page (the video edit): the settings kept consistent (preset by intent, quality preset, steps and
inversion steps), Edit the video (locked while it runs, its outcome noted for this browser) and Cancel; and a
visitor who leaves (the page's jobs stop, a reloaded page says what became of its edit). Each factory returns the
event handlers `app.py` wires; their names are the page's private endpoint names."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from anyv2v.config import PRESETS, preset_config
from anyv2v.errors import CancelledError
from server.checks import build_config
from server.jobs import run_cancellable
from server.messages import edit_status
from server import video_models
from server.presets import CHANGE_PRESETS, change_preset_of, preset_values, quality_label

from .widgets import expected_error, progress_fn, reported

logger = logging.getLogger("anyv2v.app")

CANCELLED = "**Cancelled.** Nothing was written; the previous result was cleared."


def settings_handlers(c: SimpleNamespace, p: SimpleNamespace) -> SimpleNamespace:
    """on_change_preset (the preset by intent sets the four sliders), on_steps (the inversion steps offered and
    the start index follow the sampling steps) and on_quality (a quality preset sets both step counts)."""
    taus, base, settings = p.taus, c.base, c.settings

    def on_change_preset(name: str):
        if name not in CHANGE_PRESETS:
            return [gr.skip()] * 4
        return [CHANGE_PRESETS[name][key] for key in (*taus, "start_index")]

    def target_inversion(preset: str, current: Any) -> int:
        return preset_config(preset).inversion_steps if preset in PRESETS else int(current or base.inversion_steps)

    def on_steps(value: Any, preset: str, current: Any, start: Any, backbone: str):  # on the backbone's own grid
        count = max(int(value or 1), 1)
        valid = video_models.inversion_choices(settings, backbone, count)
        chosen = int(current) if current in valid else video_models.derive_inversion_steps(
            settings, backbone, count, target_inversion(preset, current))
        top = max(count - 1, 0)
        return gr.Dropdown(choices=valid, value=chosen), gr.Slider(maximum=max(top, 1), value=min(int(start or 0), top))

    def on_quality(name: str, current_steps: Any, backbone: str):
        if name not in PRESETS:
            return gr.skip(), gr.skip()
        values = preset_values(name)
        valid = video_models.inversion_choices(settings, backbone, values["steps"])
        return values["steps"], gr.Dropdown(choices=valid, value=video_models.derive_inversion_steps(
            settings, backbone, values["steps"], values["inversion_steps"]))

    return SimpleNamespace(on_change_preset=on_change_preset, on_steps=on_steps, on_quality=on_quality)


def video_model_handler(c: SimpleNamespace, fields: list[str], n_outputs: int):
    """on_video_model: a video model's defaults for the page's `fields`, then the inversion steps, the preset
    labels and a note; only the note when this server has not enabled that model."""
    settings = c.settings

    def on_video_model(name: str):
        note = video_models.defaults_note(settings, name)
        if note == video_models.unavailable_sentence(name):
            return [*[gr.skip()] * (n_outputs - 1), note]
        values = video_models.page_defaults(settings, name)
        top = max(values["steps"] - 1, 1)
        model, own = video_models.label(name), settings.base_config(name)  # own: the model's, not capped here
        # The size sits in step 1, far above this choice: its caption says the model set it.
        updates = {
            "start_index": gr.Slider(maximum=top, value=values["start_index"]),
            "height": gr.Slider(value=values["height"], info=f"{own.width}×{own.height} is {model}'s size (the "
                                "video model chosen in step 3 set it, within this server's limit)."),
            "frames": gr.Slider(value=values["frames"], info=f"{own.frames} is what {model} was trained on."),
        }
        shown = [updates.get(key, values[key]) for key in fields]
        inversion = gr.Dropdown(choices=video_models.inversion_choices(settings, name, values["steps"]),
                                value=values["inversion_steps"])
        return [*shown, inversion, change_preset_of(values["tau_conv"], values["tau_sa"], values["tau_ta"],
                                                    values["start_index"]),
                quality_label(values["steps"], values["inversion_steps"]), note]

    return on_video_model


def video_edit_handlers(c: SimpleNamespace, p: SimpleNamespace) -> SimpleNamespace:
    """lock (at the click: the old result goes, the button is locked, a stop flag is made),
    on_edit_video_of_browser (the edit) and on_cancel."""
    settings, jobs, visitors = c.settings, c.jobs, c.visitors

    async def on_edit_video(request: gr.Request, progress: gr.Progress = gr.Progress(), **kw: Any):
        video, frame, text = kw.pop("video"), kw.pop("edited_frame"), kw.pop("prompt")
        if not video:
            raise expected_error("Upload a video in step 1 first.")
        if not frame:
            raise expected_error("Choose an edited first frame in step 2 first (or click an example).")
        stop = jobs.job_stop(request.session_hash or "", "video")  # made at the click (lock)
        with reported("editing the video", [video, frame]):
            config = build_config(settings, **kw)
            entry = await asyncio.to_thread(jobs.prepare, video, config, True)
            try:
                result = await run_cancellable(
                    lambda stop: jobs.edit_video(video, frame, text, config, progress_fn(progress), stop), stop)
            except CancelledError:  # the Cancel button: shown as cancelled, not as an error
                return None, None, None, CANCELLED, None
            record = json.loads(Path(result.json_path).read_text())
        return (entry.preview_path, str(result.video_path), [str(result.video_path), str(result.json_path)],
                edit_status(result), record)

    async def on_edit_video_of_browser(request: gr.Request, progress: gr.Progress = gr.Progress(), **kw: Any):
        """on_edit_video, with the outcome noted for this browser (see server.visitor_jobs)."""
        browser, outcome = kw.pop("browser", None), "failed"
        try:
            outputs = await on_edit_video(request, progress, **kw)
            outcome = "stopped" if outputs[3] == CANCELLED else "done"
            return outputs
        finally:
            visitors.finished(browser, request.session_hash or "", outcome)

    def lock(browser: str | None, request: gr.Request):  # the old result goes; a second click cannot start a second edit
        jobs.new_job(request.session_hash or "", "video")
        visitors.started(browser, request.session_hash or "")
        return gr.Button(interactive=False), None, None, None, "", None

    def on_cancel(request: gr.Request):
        # A stop flag, not Gradio's `cancels`: the job ends normally as "Cancelled" (no red Error badges),
        # within one step, and a job still waiting in the queue ends as soon as it starts.
        jobs.cancel(request.session_hash or "")
        return gr.Button(interactive=True), None, None, None, CANCELLED, None

    return SimpleNamespace(on_edit_video_of_browser=on_edit_video_of_browser, lock=lock, on_cancel=on_cancel)


def visitor_handlers(c: SimpleNamespace) -> SimpleNamespace:
    """on_unload (a visitor who leaves: its jobs stop at their next step) and on_load (this browser's id, and
    what became of its edit before a reload)."""
    jobs, visitors, latest_prepare = c.jobs, c.visitors, c.latest_prepare

    def on_unload(request: gr.Request) -> None:
        session = request.session_hash or ""
        latest_prepare.forget(session)
        if jobs.cancel(session):  # its jobs stop at their next step; waiting ones end as soon as they start
            visitors.left(session)
            logger.info("a visitor left: its jobs were asked to stop")

    def on_load(browser: str | None, request: gr.Request):
        """This browser's id (made on its first visit), and what became of its edit before a reload."""
        browser = browser if isinstance(browser, str) and browser else uuid.uuid4().hex
        return browser, visitors.status(browser, request.session_hash or "")

    return SimpleNamespace(on_unload=on_unload, on_load=on_load)
