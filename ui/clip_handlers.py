"""Step 1 of the page (the clip) and the examples: preparing the clip when the video or a clip setting changes
(the last settings winning), the time estimate, and loading an example. Each factory returns the event handlers
`app.py` wires; their names are the page's private endpoint names."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import gradio as gr

from server.checks import build_config
from server.examples import example_clip_settings
from server import video_models
from server.presets import change_preset_of, quality_label
from server.region_tools import brush_size

from .widgets import user_error


def video_step_handlers(c: SimpleNamespace, p: SimpleNamespace) -> SimpleNamespace:
    """on_prepare_latest (the clip of the settings shown), on_new_video (everything from the previous video goes)
    and on_estimate (how long the edit will take)."""
    settings, jobs = c.settings, c.jobs
    mask_widgets = p.mask_widgets

    def no_clip(text: str) -> tuple:
        return (None, None, gr.DownloadButton(value=None, interactive=False), text, None,
                *[None for _ in mask_widgets], gr.skip())

    async def on_prepare(video: str | None, previous: dict | None, edited_frame: str | None = None,
                         progress: gr.Progress = gr.Progress(), **clip: Any):
        if not video:
            return no_clip("Upload a video to see the prepared clip here.")
        try:
            config = build_config(settings, **clip)
            progress(0.1, desc="Reading and resizing the frames")
            entry = await asyncio.to_thread(jobs.prepare, video, config, True)
        except Exception as exc:  # noqa: BLE001 - the message replaces "Preparing the clip..." and pops up
            message = user_error(exc, "preparing the video", [video]).message
            gr.Warning(message, duration=None)
            return no_clip(f"**Could not prepare the clip:** {message}")
        framing = [config.start_time, config.width, config.height, config.resize_mode]
        state = {"video": video, "first_frame": entry.first_frame_path, "resize_mode": config.resize_mode,
                 "framing": framing}
        background = gr.ImageEditor(  # the brush sized to the frame (see server.region_tools)
            value={"background": entry.first_frame_path, "layers": [], "composite": None},
            brush=gr.Brush(colors=["#ff3366"], color_mode="fixed", default_size=brush_size(*entry.prepared.size)))
        status = gr.skip()
        if edited_frame and previous and previous.get("video") == video and previous.get("framing") != framing:
            status = ("**The first frame changed** (start time, size or fit): an edited first frame made before "
                      "was made from the previous one. Make it again if it no longer matches.")
        return (entry.preview_path, entry.first_frame_path,
                gr.DownloadButton(value=entry.first_frame_path, interactive=True), entry.summary, state,
                *[background for _ in mask_widgets], status)

    latest_prepare = c.latest_prepare

    async def on_prepare_latest(video: str | None, previous: dict | None, edited_frame: str | None,
                                request: gr.Request, progress: gr.Progress = gr.Progress(), **clip: Any):
        """on_prepare, the last settings winning: one at a time per session, superseded ones dropped."""
        session, skip_all = request.session_hash or "", tuple(gr.skip() for _ in p.prepare_outputs)
        ticket = latest_prepare.ticket(session)
        async with latest_prepare.turn(session, ticket) as current:
            if not current:
                return skip_all
            outputs = await on_prepare(video, previous, edited_frame, progress, **clip)
        return outputs if latest_prepare.is_latest(session, ticket) else skip_all

    def on_new_video():
        """Everything from the previous video goes: clip, edited frame, candidates and result."""
        return (*no_clip("Preparing the clip…")[:-1], None, None, {"editor": None, "paths": []}, "",
                None, None, None, "", None, "")

    async def on_estimate(**kw: Any) -> str:
        video = kw.pop("video")
        try:
            config = build_config(settings, **kw)
            return await asyncio.to_thread(jobs.estimate, video, config)
        except Exception:  # noqa: BLE001 - invalid values are reported when the edit starts
            return ""

    return SimpleNamespace(on_prepare=on_prepare, on_prepare_latest=on_prepare_latest, on_new_video=on_new_video,
                           on_estimate=on_estimate)


def example_handler(c: SimpleNamespace, p: SimpleNamespace):
    """on_example: an example's video, edited frame, prompt and settings, small settings on a CPU, the rest reset."""
    examples = c.examples
    small = example_clip_settings(c.settings)
    taus = p.taus

    def on_example(backbone: str, evt: gr.SelectData) -> dict:  # inversion steps on the chosen model's grid
        example = examples[int(evt.index)]
        inversion = video_models.derive_inversion_steps(c.settings, backbone, small["steps"],
                                                        c.settings.base_config(backbone).inversion_steps)
        values = dict(zip(p.reset_outputs, p.on_new_video()))
        values.update({
            p.source_video: example.video, p.edited_frame: example.edited_frame, p.prompt: example.prompt,
            taus["tau_conv"]: example.tau_conv, taus["tau_sa"]: example.tau_sa,
            taus["tau_ta"]: example.tau_ta, p.start_index: example.start_index,
            p.change_preset: change_preset_of(example.tau_conv, example.tau_sa, example.tau_ta,
                                              example.start_index),
            p.frames: small["frames"], p.fps: small["fps"], p.width: small["width"], p.height: small["height"],
            p.resize_mode: "crop", p.start_time: 0, p.end_time: None, p.steps: small["steps"],
            p.inversion_steps: gr.Dropdown(choices=video_models.inversion_choices(c.settings, backbone, small["steps"]),
                                           value=inversion),
            p.quality: quality_label(small["steps"], inversion),
            p.frame_status: "Using the example's edited frame for the video edit (step 3).",
        })
        return values

    return on_example
