"""Step 2 of the page (the first frame): running an editor, picking a candidate, uploading a frame, and clicks on
the first frame (an editor's position inputs such as InstantID's face, AnyDoor's target box). Each factory returns
the event handlers `app.py` wires; their names are the page's private endpoint names."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import gradio as gr
from PIL import Image

from anyv2v.errors import CancelledError
from editors.base import Editor, as_image
from server.jobs import run_cancellable
from server.messages import candidate_captions
from server.presets import SUGGESTED_NAMES, suggested_settings
from server.region_tools import box_click

from .widgets import expected_error, progress_fn, reported


def editor_handlers(c: SimpleNamespace, p: SimpleNamespace) -> SimpleNamespace:
    """make_editor_fn (an editor tab's on_edit_frame), on_select and on_use (a candidate), on_frame_upload.
    Each returns updates for `p.tau_outputs` too: an editor's suggested video settings for step 3."""
    jobs, available = c.jobs, c.available
    tau_outputs = p.tau_outputs

    def suggested(editor: Editor) -> tuple[list[Any], str]:
        """The editor's suggested video settings as slider updates, and the sentence that says so."""
        values, preset, note = suggested_settings(editor.title, editor.video_settings)
        if preset is None:
            return [gr.skip()] * len(tau_outputs), ""
        return [values.get(name, gr.skip()) for name in SUGGESTED_NAMES] + [preset], note

    def make_editor_fn(editor: Editor) -> Callable[..., Any]:
        async def on_edit_frame(state: dict | None, candidates: Any, request: gr.Request,
                                progress: gr.Progress = gr.Progress(), **values: Any):
            if not state:
                raise expected_error("Upload a video in step 1 first: the editors work on its first frame.")
            stop = jobs.new_job(request.session_hash or "", "frame")
            with reported(f"editing the first frame with {editor.title}",
                          [v for v in values.values() if isinstance(v, str)]):
                values["resize_mode"] = state.get("resize_mode", "crop")
                frame = as_image(state["first_frame"], "first frame").convert("RGB")
                try:
                    paths = await run_cancellable(lambda stop: jobs.edit_frame(
                        editor.name, frame, values, int(candidates or 1), progress_fn(progress), stop), stop)
                except CancelledError:  # the Cancel button: shown as cancelled, not as an error
                    return (None, {"editor": None, "paths": []}, 0, gr.skip(), "**Cancelled.**",
                            *[gr.skip()] * len(tau_outputs))
            captions = candidate_captions(len(paths), values.get("seed"))
            shown = gr.Gallery(value=list(zip(paths, captions)), selected_index=0)
            state_value = {"editor": editor.name, "paths": paths}
            if len(paths) == 1:  # nothing to choose: use it right away
                updates, note = suggested(editor)
                return (shown, state_value, 0, paths[0], "Using this frame for the video edit (step 3)." + note,
                        *updates)
            return (shown, state_value, 0, gr.skip(),
                    f"{len(paths)} candidates: click the best one, then press **Use this frame**.",
                    *[gr.skip()] * len(tau_outputs))

        return on_edit_frame

    def on_select(evt: gr.SelectData) -> int:
        return int(evt.index)

    def on_use(candidates: dict, index: int):
        paths = (candidates or {}).get("paths") or []
        if not paths:
            text = "There are no candidates yet: make some with an editor first (or upload a frame in the manual tab)."
            gr.Warning(text)
            return (gr.skip(), text, *[gr.skip()] * len(tau_outputs))
        index = min(max(int(index or 0), 0), len(paths) - 1)
        updates, note = [gr.skip()] * len(tau_outputs), ""
        if candidates.get("editor") in available:
            updates, note = suggested(available[candidates["editor"]])
        return (paths[index], f"Using candidate {index + 1} for the video edit (step 3)." + note, *updates)

    def on_frame_upload(path: str | None) -> str:  # checked_image has refused unreadable files already
        return "Using the uploaded frame for the video edit (step 3)." if path else ""

    return SimpleNamespace(make_editor_fn=make_editor_fn, on_select=on_select, on_use=on_use,
                           on_frame_upload=on_frame_upload)


def click_handlers(c: SimpleNamespace) -> SimpleNamespace:
    """make_click_fn (an editor's on_frame_click), on_editor_tab (which tab is shown: clicks go only to it) and
    make_box_fn (on_box_click: two clicks set a target box)."""
    jobs, available = c.jobs, c.available

    def make_click_fn(editor: Editor, names: list[str]) -> Callable[..., Any]:
        async def on_frame_click(state: dict | None, shown: str | None, evt: gr.SelectData):
            if shown != editor.name:  # a click for another editor's tab
                return [gr.skip() for _ in names]
            if not state:
                raise expected_error("Upload a video in step 1 first.")
            x, y = evt.index
            with reported(f"reading the click for {editor.title}"):
                frame = as_image(state["first_frame"], "first frame").convert("RGB")
                values = await asyncio.to_thread(jobs.frame_click_values, editor.name, frame, x, y)
            gr.Info(f"{editor.title}: " + ", ".join(f"{name} = {values[name]}" for name in names))
            return [values[name] for name in names]

        return on_frame_click

    def on_editor_tab(evt: gr.SelectData) -> tuple[Any, Any, Any]:
        """The editor shown, and the candidates gallery and its "Use this frame" button shown only on tabs that
        make candidates (the manual tab has its own button: two "use" buttons there confused people)."""
        titles = {editor.title: editor.name for editor in available.values()}
        names = list(available)
        name = titles.get(str(evt.value))
        if name is None and isinstance(evt.index, int) and 0 <= evt.index < len(names):
            name = names[evt.index]
        if name is None:
            return gr.skip(), gr.skip(), gr.skip()
        shown = available[name].supports_candidates
        return name, gr.update(visible=shown), gr.update(visible=shown)

    def make_box_fn(name: str) -> Callable[..., Any]:
        def on_box_click(state: dict | None, shown: str | None, corner: list[int] | None, evt: gr.SelectData):
            if shown != name or not state:
                return gr.skip(), gr.skip()
            with Image.open(state["first_frame"]) as frame:
                width, height = frame.size
            corner, box, text = box_click(corner, *evt.index, width, height)
            gr.Info(text)
            return corner, box if box is not None else gr.skip()

        return on_box_click

    return SimpleNamespace(make_click_fn=make_click_fn, on_editor_tab=on_editor_tab, make_box_fn=make_box_fn)
