"""AnyV2V in the browser: upload a clip, edit its first frame, carry the edit through the video.

The page and the public API over `server` (the job layer: settings, checks, prepared clips, GPU jobs,
retention), `anyv2v` (the engine) and `editors` (first-frame editors). This file only lays out the page and
wires its events; the handlers, the widgets that are not layout and the API endpoints are in `ui` (the Gradio
side that is not layout).

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 7860 --share

Models and limits come from ANYV2V_* environment variables (see README.md). API: /edit_first_frame, /edit_video.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

import editors
from anyv2v.config import PRESETS, preset_config
from editors.base import MAX_CANDIDATES, Editor
from server.app_outputs import APP_SUBDIR
from server.checks import MAX_SEED
from server.editor_params import api_editor_params
from server.examples import list_examples
from server.login_throttle import LoginThrottle, LoginThrottleMiddleware
from server.presets import (
    CHANGE_PRESET_LABELS, CHANGE_PRESETS, change_preset_of, quality_label, scheduler_config, valid_inversion_steps,
)
from server import video_models
from server.service import EditService, startup_problem
from server.session_latest import LatestWins
from server.settings import AppSettings, check_model_source, parse_args
from server.visitor_jobs import VisitorJobs
from ui import clip_handlers, edit_handlers, frame_handlers
from ui.api import build_api
from ui.widgets import GPU_CONCURRENCY_ID, checked_image, editor_widget

logger = logging.getLogger("anyv2v.app")

APP_DIR = Path(__file__).resolve().parent
ASSETS_DIR = APP_DIR / "assets"
DEMO_DIR = ASSETS_DIR / "demo"
RESIZE_CHOICES = [("Crop to the size (fill, center crop)", "crop"), ("Keep the aspect ratio (longest side = size)", "keep_aspect")]
# Plain names with the technical one in small print (the slider's info line).
TAU_SLIDERS = {
    "tau_conv": ("Keep the source's layout", "tau_conv: share of steps that inject the source's convolution features"),
    "tau_sa": ("Keep the source's shapes and details", "tau_sa: share of steps that inject the source's spatial attention"),
    "tau_ta": ("Keep the source's motion", "tau_ta: share of steps that inject the source's temporal attention"),
}


# ---------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------

INTRO = """
# AnyV2V: edit a whole video by editing its first frame
**1.** Upload a short video (or pick an example). **2.** Change its first frame with an editor, or upload your own
edited picture. **3.** Describe the edited video and press **Edit the video**: the change is carried through every
frame, keeping the original motion.
"""

CSS = """
.step-help { opacity: 0.85; }
.gradio-container { max-width: 100% !important; overflow-x: hidden; }
#examples .thumbnail-item { min-width: 72px; }
@media (max-width: 640px) { .gradio-container { padding: 0 6px !important; } .row { flex-wrap: wrap !important; } }
/* Phone width: the examples in 3 columns that fit, below the (two-line) label, as tall as their rows. */
@media (max-width: 640px) {
  #examples .grid-wrap { height: auto !important; max-height: none !important; overflow-y: visible !important;
                         padding-top: 4.2em !important; }
  #examples .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important;
                              grid-template-rows: none !important; grid-auto-rows: auto !important; }
  #examples .thumbnail-item { min-width: 0 !important; }
}
"""
SCROLL_TO_STEP_1 = "() => document.getElementById('step-1')?.scrollIntoView({behavior: 'smooth'})"


def build_app(settings: AppSettings | None = None, model_problem: str | None = ...) -> gr.Blocks:  # type: ignore[assignment]
    """The Gradio Blocks app (queue configured); launch it with `launch_kwargs(settings)`."""
    settings = (settings or AppSettings.from_env()).check()
    jobs = EditService(settings)
    base = settings.base_config()
    if model_problem is ...:
        model_problem = check_model_source(settings.model)
    # What every step's builder reads: the server, its job layer, the editors, the examples and the timestep grid.
    c = SimpleNamespace(settings=settings, jobs=jobs, base=base, available=editors.available_editors(),
                        examples=list_examples(DEMO_DIR), sched=scheduler_config(settings.model),
                        visitors=VisitorJobs(),  # each browser's latest video edit, for the page it reloads
                        latest_prepare=LatestWins())  # per session: the clip of the settings shown, not a slower one

    with gr.Blocks(title="AnyV2V video editing", delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(INTRO)
        if model_problem:
            gr.Markdown(f"**The video model is not available:** {html.escape(model_problem)}", elem_id="model-problem")
        p = SimpleNamespace()  # the page's components and shared handlers, filled in step by step
        p.clip_state = gr.State(None)  # {"video", "first_frame", "resize_mode"} of the prepared clip
        p.browser_state = gr.BrowserState(None, storage_key="anyv2v-browser")  # this browser's id (local storage)
        p.candidates_state = gr.State({"editor": None, "paths": []})
        p.selected_state = gr.State(0)
        p.active_editor = gr.State(next(iter(c.available), None))  # the editor tab shown (frame clicks go to it)
        p.box_corner = gr.State(None)  # the first corner of a target box being clicked on the first frame
        if c.examples:
            p.example_gallery = gr.Gallery(
                [(e.edited_frame, e.label) for e in c.examples], label="Examples: click one to load it (video, "
                "edited frame, prompt and settings)", columns=5, rows=2, height="auto", allow_preview=False,
                object_fit="cover", elem_id="examples",
            )
        video_step(c, p)
        first_frame_step(c, p)
        video_edit_step(c, p)
        device = settings.device_name
        gr.Markdown(
            f"Default video model: `{os.path.basename(settings.model.rstrip('/'))}` (step 3 offers the others) "
            f"on {device}. "
            + ("" if device.startswith("cuda") else "Without a GPU a full-size edit takes a very long time. ")
            + f"Results are deleted after {settings.keep_hours:g} h. API: see *Use via API* below.",
            elem_classes=["step-help"],
        )
        wire_video_step(c, p)
        wire_first_frame_step(c, p)
        wire_video_edit_step(c, p)
        wire_visitors(c, p, demo)
        if c.examples:
            wire_examples(c, p)
        # Public API (gradio_client): hidden components, so the endpoints have clean signatures.
        with gr.Column(visible=False):
            build_api(jobs, settings, base, c.available, api_editor_params(c.available))

    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return demo


# ---- 1. Video ---------------------------------------------------------------------------------------------


def video_step(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """The source video, its clip settings, and the prepared clip with its first frame."""
    settings, base = c.settings, c.base
    gr.Markdown("## 1. Video", elem_id="step-1")
    with gr.Row():
        with gr.Column(min_width=300):
            p.source_video = gr.File(label="Source video (mp4, mov, webm, avi, mkv or GIF)", type="filepath",
                                     # Any file: the clip check says what is wrong with a photo in our own
                                     # words (Gradio's file-type filter only says "Invalid file type").
                                     file_types=None, elem_id="source-video", height=120)
            with gr.Row():
                p.start_time = gr.Number(label="Start time (s)", value=0, minimum=0, elem_id="start-time",
                                         min_width=140)
                p.end_time = gr.Number(label="End time (s, optional)", value=None, minimum=0, elem_id="end-time",
                                       info="Empty or 0: use the frame count.", min_width=140)
            with gr.Row():
                p.frames = gr.Slider(2, settings.max_frames, value=min(base.frames, settings.max_frames), step=1,
                                     label="Frames", info="16 is what the model was trained on.", elem_id="frames",
                                     min_width=160)
                p.fps = gr.Slider(1, 30, value=base.fps, step=1, label="Frames per second", elem_id="fps",
                                  min_width=160)
            with gr.Row():
                p.width = gr.Slider(64, settings.max_size, value=min(base.width, settings.max_size), step=64,
                                    label="Width", elem_id="width", min_width=160)
                p.height = gr.Slider(64, settings.max_size, value=min(base.height, settings.max_size), step=64,
                                     label="Height", elem_id="height", info="512×512 is the model's size.",
                                     min_width=160)
            p.resize_mode = gr.Radio(RESIZE_CHOICES, value=base.resize_mode, label="Fit to the size",
                                     elem_id="resize-mode")
            p.keep_audio = gr.Checkbox(label="Keep the source audio", value=False, elem_id="keep-audio")
        with gr.Column(min_width=300):
            p.clip_info = gr.Markdown("Upload a video to see the prepared clip here.", elem_id="clip-info")
            p.prepared_video = gr.Video(label="Prepared clip (what will be edited)", interactive=False, format=None,
                                        loop=True, elem_id="prepared-video", height=240)
            p.first_frame = gr.Image(label="Its first frame", interactive=False, format="png", type="filepath",
                                     elem_id="first-frame", height=240)
            p.first_frame_download = gr.DownloadButton("Download the first frame (PNG)", value=None,
                                                       interactive=False, elem_id="first-frame-download")


def wire_video_step(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """Preparing the clip on upload and on every clip setting, and the time estimate; the handlers later steps
    reuse go on `p`."""
    clip_inputs = p.clip_inputs = dict(frames=p.frames, fps=p.fps, start_time=p.start_time, end_time=p.end_time,
                                       width=p.width, height=p.height, resize_mode=p.resize_mode)
    p.result_outputs = [p.before_video, p.output_video, p.downloads, p.edit_status_md, p.settings_json]
    p.prepare_outputs = [p.prepared_video, p.first_frame, p.first_frame_download, p.clip_info, p.clip_state,
                         *p.mask_widgets, p.frame_status]
    p.prepare_inputs = [p.source_video, p.clip_state, p.edited_frame]
    p.reset_outputs = [*p.prepare_outputs[:-1], p.edited_frame, p.gallery, p.candidates_state, p.frame_status,
                       *p.result_outputs, p.estimate_md]
    p.prepare_options = dict(inputs_kwargs=clip_inputs, concurrency_limit=2, concurrency_id="prepare",
                             show_progress="minimal", show_progress_on=[p.clip_info], api_visibility="private")
    estimate_inputs = dict(video=p.source_video, steps=p.steps, inversion_steps=p.inversion_steps,
                           start_index=p.start_index, guidance=p.guidance, backbone=p.video_model, **clip_inputs)

    h = clip_handlers.video_step_handlers(c, p)
    p.on_prepare_latest, p.on_new_video, p.on_estimate = h.on_prepare_latest, h.on_new_video, h.on_estimate
    p.estimate_options = dict(inputs_kwargs=estimate_inputs, concurrency_limit=2, concurrency_id="estimate",
                              show_progress="hidden", api_visibility="private", trigger_mode="always_last")
    prepare = (h.on_prepare_latest, p.prepare_inputs, p.prepare_outputs)
    estimate = (h.on_estimate, None, p.estimate_md)
    for event in (p.source_video.upload, p.source_video.clear):
        event(h.on_new_video, None, p.reset_outputs, queue=False, api_visibility="private").then(
            *prepare, **p.prepare_options).then(*estimate, **p.estimate_options)
    for control in (p.frames, p.fps, p.width, p.height, p.resize_mode):
        control.change(*prepare, trigger_mode="always_last", **p.prepare_options).then(
            *estimate, **p.estimate_options)
    for control in (p.start_time, p.end_time):
        for event in (control.submit, control.blur):
            event(*prepare, trigger_mode="always_last", **p.prepare_options)
    for control in (p.steps, p.inversion_steps, p.start_index, p.guidance):
        control.change(*estimate, **p.estimate_options)


# ---- 2. First frame: one tab per editor, generated from its declared inputs ---------------------------------


def first_frame_step(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """The editor tabs (widgets from each editor's inputs), the candidates and the edited first frame."""
    gr.Markdown("## 2. First frame")
    gr.Markdown(
        "Pick an editor tab (on a phone the tabs wrap onto several rows). Editors often need a few tries: make "
        "several candidates, click the best one and press **Use this frame**. Or edit the downloaded first frame "
        "in any program and upload it in the manual tab (transparent areas keep the source).",
        elem_classes=["step-help"],
    )
    p.mask_widgets = []
    p.editor_tabs = []  # (editor, its widgets by input name, the candidates slider or None, its run button)
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            with gr.Tabs(elem_id="editor-tabs", overflow_behavior="wrap") as p.editor_tabs_row:
                for editor in c.available.values():
                    with gr.Tab(editor.title, id=editor.name, elem_id=f"editor-tab-{editor.name}"):
                        p.editor_tabs.append(editor_tab(editor, p.mask_widgets))
            first = next(iter(c.available.values()), None)
            candidates_shown = first is not None and first.supports_candidates  # the first tab's; tabs switch it
            p.gallery = gr.Gallery(label="Candidates: click one to pick it", columns=4, height=240,
                                   allow_preview=False, elem_id="candidates", format="png", visible=candidates_shown)
            p.frame_status = gr.Markdown("", elem_id="frame-status")
            p.use_btn = gr.Button("Use this frame", elem_id="use-frame-btn", visible=candidates_shown)
        with gr.Column(scale=2, min_width=300):
            p.edited_frame = checked_image(
                label="Edited first frame (used for the video edit)", type="filepath", format="png",
                image_mode="RGBA", sources=["upload", "clipboard"], elem_id="edited-frame", height=300,
            )


def editor_tab(editor: Editor, mask_widgets: list[gr.ImageEditor]) -> tuple:
    """One editor's tab content: its description, its inputs' widgets, the candidates slider and the button."""
    gr.Markdown(editor.description)
    reason = editor.unavailable_reason()
    if reason:  # the user's sentence on the page, the operator's details in the log
        logger.warning("editor %s unavailable: %s", editor.name, getattr(editor.unavailable(), "operator", ""))
        gr.Markdown(f"**Not available:** {html.escape(reason)}", elem_id=f"{editor.name}-unavailable")
    widgets = {spec.name: editor_widget(spec, f"{editor.name}-{spec.name}") for spec in editor.inputs}
    mask_widgets += [w for s, w in zip(editor.inputs, widgets.values()) if s.kind == "mask"]
    count = None
    if editor.supports_candidates:
        count = gr.Slider(1, MAX_CANDIDATES, value=1, step=1, label="Candidates",
                          info="Each candidate uses the next seed.", elem_id=f"{editor.name}-candidates")
    label = "Make candidates" if editor.supports_candidates else "Use the uploaded frame"
    button = gr.Button(label, variant="primary", elem_id=f"{editor.name}-run")
    return editor, widgets, count, button


def wire_first_frame_step(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """Running an editor, clicks on the first frame, picking a candidate, uploading a frame."""
    p.tau_outputs = [*p.taus.values(), p.start_index, p.change_preset]
    h = frame_handlers.editor_handlers(c, p)
    for editor, widgets, count, button in p.editor_tabs:
        button.click(
            h.make_editor_fn(editor), [p.clip_state, count if count is not None else gr.State(1)],
            [p.gallery, p.candidates_state, p.selected_state, p.edited_frame, p.frame_status, *p.tau_outputs],
            inputs_kwargs=widgets, concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID,
            show_progress_on=[p.gallery, p.frame_status], api_visibility="private",  # the gallery hides on some tabs
        )
    wire_frame_clicks(c, p)
    p.gallery.select(h.on_select, None, p.selected_state, queue=False, api_visibility="private")
    p.use_btn.click(h.on_use, [p.candidates_state, p.selected_state], [p.edited_frame, p.frame_status, *p.tau_outputs],
                    api_visibility="private")
    p.edited_frame.upload(h.on_frame_upload, p.edited_frame, p.frame_status, api_visibility="private")


def wire_frame_clicks(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """A click on the first frame sets the inputs an editor takes from a position (e.g. InstantID's face), for
    the editor tab shown; on AnyDoor's tab two clicks set the target box."""
    h = frame_handlers.click_handlers(c)
    for editor, widgets, _, _ in p.editor_tabs:
        click_widgets = [widgets[name] for name in editor.click_inputs if name in widgets]
        if click_widgets:
            p.first_frame.select(h.make_click_fn(editor, list(editor.click_inputs)), [p.clip_state, p.active_editor],
                                 click_widgets, concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID,
                                 api_visibility="private")
    p.editor_tabs_row.select(h.on_editor_tab, None, [p.active_editor, p.gallery, p.use_btn], queue=False,
                             api_visibility="private")
    for editor, widgets, _, _ in p.editor_tabs:  # editors with a target box (AnyDoor), pixel coordinates shown
        if "box" in widgets:
            p.first_frame.select(h.make_box_fn(editor.name), [p.clip_state, p.active_editor, p.box_corner],
                                 [p.box_corner, widgets["box"]], api_visibility="private")  # queued: gr.Info shows


# ---- 3. Video edit ----------------------------------------------------------------------------------------


def video_edit_step(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """The prompt, how much may change, the advanced settings, run and cancel, and the before/after result."""
    settings, base = c.settings, c.base
    quality_choices = [(f"{n} ({preset_config(n).inversion_steps} inversion steps)", n) for n in PRESETS]
    quality_choices.append(("custom", "custom"))
    gr.Markdown("## 3. Video edit")
    with gr.Row():
        with gr.Column(min_width=300):
            p.prompt = gr.Textbox(
                label="Describe the edited video", lines=2, elem_id="prompt",
                info="A caption of the result, not the change (e.g. 'a robot doing exercises').",
                placeholder="a man with a party hat doing exercises",
            )
            p.change_preset = gr.Radio([(CHANGE_PRESET_LABELS[k], k) for k in (*CHANGE_PRESETS, "custom")],
                                       value=change_preset_of(base.tau_conv, base.tau_sa, base.tau_ta,
                                                              base.start_index),
                                       label="How much may change?", elem_id="change-preset")
            p.taus = {
                name: gr.Slider(0, 1, value=getattr(base, name), step=0.05, label=label, info=info,
                                elem_id=name.replace("_", "-"), min_width=160)
                for name, (label, info) in TAU_SLIDERS.items()
            }
            p.start_index = gr.Slider(0, base.steps - 1, value=base.start_index, step=1,
                                      label="Skip the first steps (keeps more of the source)",
                                      info="T' (start index): sampling starts this many steps in.",
                                      elem_id="start-index", min_width=160)
            with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                p.video_model = gr.Dropdown(
                    video_models.choices(), value=base.backbone, label="Video model",
                    info="The image-to-video model that carries the edited first frame through the clip; choosing "
                         "one applies its own settings.", elem_id="video-model")
                p.video_model_note = gr.Markdown("", elem_id="video-model-note")
                p.quality = gr.Dropdown(quality_choices, value=settings.preset, label="Quality preset",
                                        info="Sets the steps and the inversion steps.", elem_id="preset")
                p.steps = gr.Slider(1, 200, value=base.steps, step=1, label="Sampling steps", elem_id="steps")
                p.inversion_steps = gr.Dropdown(
                    valid_inversion_steps(c.sched, base.steps), value=base.inversion_steps, label="Inversion steps",
                    info="Only values that serve the sampling steps are offered; more is more faithful but slower.",
                    elem_id="inversion-steps",
                )
                p.guidance = gr.Slider(0, video_models.guidance_maximum(), value=base.guidance, step=0.5,
                                       label="Guidance", info="How strongly to follow the prompt and the edited frame.",
                                       elem_id="guidance")
                p.seed = gr.Number(label="Seed", value=base.seed, precision=0, minimum=0, maximum=MAX_SEED,
                                   elem_id="seed")
                p.negative_prompt = gr.Textbox(label="Negative prompt", value=base.negative_prompt, lines=2,
                                               elem_id="negative-prompt")
            p.estimate_md = gr.Markdown("", elem_id="estimate")
            with gr.Row():
                p.run_btn = gr.Button("Edit the video", variant="primary", elem_id="run-btn", min_width=120)
                p.cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn", min_width=120)
        with gr.Column(min_width=300):
            with gr.Row():
                p.before_video = gr.Video(label="Before", interactive=False, format=None, loop=True, autoplay=True,
                                          elem_id="before-video", height=280, min_width=150)
                p.output_video = gr.Video(label="After (edited)", interactive=False, format=None, loop=True,
                                          autoplay=True, elem_id="output-video", height=280, min_width=150)
            p.edit_status_md = gr.Markdown("", elem_id="edit-status")
            p.downloads = gr.File(label="Downloads: the video and its settings (JSON)", file_count="multiple",
                                  interactive=False, elem_id="downloads")
            with gr.Accordion("Settings and measurements (JSON)", open=False):
                p.settings_json = gr.JSON(label="Settings", elem_id="settings-json")


def wire_settings(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """The preset by intent follows the four sliders and back; the quality preset, the steps and the inversion
    steps stay consistent (only inversion step counts that serve the steps are offered)."""
    taus, start_index = p.taus, p.start_index
    h = edit_handlers.settings_handlers(c, p)
    p.change_preset.input(h.on_change_preset, p.change_preset, [*taus.values(), start_index], queue=False,
                          api_visibility="private")
    for control in (*taus.values(), start_index):
        control.input(change_preset_of, [*taus.values(), start_index], p.change_preset, queue=False,
                      api_visibility="private")
    p.steps.change(h.on_steps, [p.steps, p.quality, p.inversion_steps, start_index, p.video_model],
                   [p.inversion_steps, start_index], queue=False, api_visibility="private")
    p.quality.input(h.on_quality, [p.quality, p.steps, p.video_model], [p.steps, p.inversion_steps], queue=False,
                    api_visibility="private")
    for control in (p.steps, p.inversion_steps):
        control.input(quality_label, [p.steps, p.inversion_steps], p.quality, queue=False, api_visibility="private")
    wire_video_model(c, p)


def wire_video_model(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """Choosing a video model applies its defaults to the settings it has defaults for and says so (or says,
    in one sentence, that this server has not enabled it)."""
    fields = {"frames": p.frames, "width": p.width, "height": p.height, "steps": p.steps,
              "start_index": p.start_index, "guidance": p.guidance, "negative_prompt": p.negative_prompt, **p.taus}
    outputs = [*fields.values(), p.inversion_steps, p.change_preset, p.quality, p.video_model_note]
    on_video_model = edit_handlers.video_model_handler(c, list(fields), len(outputs))
    p.video_model.input(on_video_model, p.video_model, outputs, queue=False, api_visibility="private")


def wire_video_edit_step(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """The settings' consistency, then Edit the video (locked while it runs) and Cancel."""
    wire_settings(c, p)
    h = edit_handlers.video_edit_handlers(c, p)
    run_inputs = dict(
        video=p.source_video, edited_frame=p.edited_frame, prompt=p.prompt, start_index=p.start_index, steps=p.steps,
        inversion_steps=p.inversion_steps, guidance=p.guidance, negative_prompt=p.negative_prompt, seed=p.seed,
        keep_audio=p.keep_audio, browser=p.browser_state, backbone=p.video_model, **p.taus, **p.clip_inputs,
    )
    lock_event = p.run_btn.click(h.lock, p.browser_state, [p.run_btn, *p.result_outputs], queue=False,
                                 api_visibility="private")
    run_event = lock_event.then(
        h.on_edit_video_of_browser, None, p.result_outputs, inputs_kwargs=run_inputs, concurrency_limit=1,
        concurrency_id=GPU_CONCURRENCY_ID, show_progress="full", show_progress_on=[p.output_video],
        api_visibility="private",
    )
    run_event.then(lambda: gr.Button(interactive=True), None, p.run_btn, queue=False, api_visibility="private").then(
        p.on_estimate, None, p.estimate_md, **p.estimate_options)  # now measured on this server, model loaded
    # A stop flag, not Gradio's `cancels`: the job ends as "Cancelled" within one step (see on_cancel).
    p.cancel_btn.click(h.on_cancel, None, [p.run_btn, *p.result_outputs], queue=False, api_visibility="private")


def wire_visitors(c: SimpleNamespace, p: SimpleNamespace, demo: gr.Blocks) -> None:
    """A visitor who leaves (closed or reloaded page, a gradio_client that went away) frees the GPU; a reloaded
    page says what became of this browser's edit."""
    h = edit_handlers.visitor_handlers(c)
    demo.unload(h.on_unload)
    demo.load(h.on_load, p.browser_state, [p.browser_state, p.edit_status_md], queue=False, api_visibility="private")


# ---- Examples: load everything, reset the rest, small settings on a CPU -----------------------------------


def wire_examples(c: SimpleNamespace, p: SimpleNamespace) -> None:
    taus = p.taus
    example_outputs = list(dict.fromkeys([
        *p.reset_outputs, p.source_video, p.edited_frame, p.prompt, *taus.values(), p.start_index, p.change_preset,
        p.frames, p.fps, p.width, p.height, p.resize_mode, p.start_time, p.end_time, p.steps, p.inversion_steps,
        p.quality]))
    p.example_gallery.select(clip_handlers.example_handler(c, p), p.video_model, example_outputs, queue=False, api_visibility="private").then(
        None, js=SCROLL_TO_STEP_1).then(p.on_prepare_latest, p.prepare_inputs, p.prepare_outputs, **p.prepare_options).then(
        p.on_estimate, None, p.estimate_md, **p.estimate_options)


# ---------------------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------------------


def launch_kwargs(settings: AppSettings) -> dict[str, Any]:
    """Keyword arguments of `Blocks.launch` that every way of serving the app needs."""
    return {
        "max_file_size": settings.max_upload_bytes,
        # Outputs and examples live outside Gradio's temp folder; these folders (only) may be served.
        "allowed_paths": [str(Path(settings.output_dir).expanduser().resolve() / APP_SUBDIR), str(ASSETS_DIR)],
        "theme": gr.themes.Soft(),
        "css": CSS,
        "show_error": False,  # errors are turned into readable gr.Error by `reported`; never show raw ones
        "auth": settings.auth,
        # Repeated failed logins from one address are slowed down (ANYV2V_AUTH): see server.login_throttle.
        "app_kwargs": {"middleware": [Middleware(LoginThrottleMiddleware, throttle=LoginThrottle())]} if settings.auth else {},
    }


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    args = parse_args(argv)
    settings = AppSettings.from_env().replace(
        output_dir=args.output_dir, max_upload_mb=args.max_upload_mb, queue_size=args.queue_size,
        max_frames=args.max_frames, preload=args.preload,
    ).check()
    problem = startup_problem(settings)
    demo = build_app(settings, model_problem=problem)
    logger.info("model %s, outputs in %s, cache in %s", settings.model, settings.output_dir, settings.cache_dir)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(settings))


if __name__ == "__main__":
    main()
