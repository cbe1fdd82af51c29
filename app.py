"""AnyV2V in the browser: upload a clip, edit its first frame, carry the edit through the video.

The page and the public API over `server` (the job layer: settings, checks, prepared clips, GPU jobs,
retention), `anyv2v` (the engine) and `editors` (first-frame editors). This file only lays out the page and
wires events and endpoints.

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 7860 --share

Models and limits come from ANYV2V_* environment variables (see README.md). API: /edit_first_frame, /edit_video.
"""

from __future__ import annotations

import asyncio
import html
import inspect
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
from gradio.data_classes import FileData
from PIL import Image
from starlette.middleware import Middleware

import editors
from anyv2v.config import PRESETS, RESIZE_MODES, EditConfig, preset_config
from anyv2v.errors import AnyV2VError, CancelledError
from editors.base import MAX_CANDIDATES, Editor, EditorInput, as_image
from server.app_outputs import APP_SUBDIR
from server.checks import MAX_SEED, build_config, check_image_file, whole_number
from server.editor_params import FIRST_FRAME_API_PARAMS, ApiEditorParam, api_editor_params, editor_values
from server.examples import example_clip_settings, list_examples
from server.image_uploads import normalize_upload
from server.jobs import run_cancellable
from server.login_throttle import LoginThrottle, LoginThrottleMiddleware
from server.messages import edit_status, user_message
from server.region_tools import box_click, brush_size
from server.presets import (
    CHANGE_PRESET_LABELS, CHANGE_PRESETS, change_preset_of, preset_values, quality_label,
    scheduler_config, valid_inversion_steps,
)
from server.service import EditService, startup_problem
from server import video_models
from server.session_latest import LatestWins
from server.settings import AppSettings, check_model_source, parse_args
from server.visitor_jobs import VisitorJobs

logger = logging.getLogger("anyv2v.app")

APP_DIR = Path(__file__).resolve().parent
ASSETS_DIR = APP_DIR / "assets"
DEMO_DIR = ASSETS_DIR / "demo"
GPU_CONCURRENCY_ID = "gpu"  # one model job at a time, page and API alike
RESIZE_CHOICES = [("Crop to the size (fill, center crop)", "crop"), ("Keep the aspect ratio (longest side = size)", "keep_aspect")]
# Plain names with the technical one in small print (the slider's info line).
TAU_SLIDERS = {
    "tau_conv": ("Keep the source's layout", "tau_conv: share of steps that inject the source's convolution features"),
    "tau_sa": ("Keep the source's shapes and details", "tau_sa: share of steps that inject the source's spatial attention"),
    "tau_ta": ("Keep the source's motion", "tau_ta: share of steps that inject the source's temporal attention"),
}


# ---------------------------------------------------------------------------------------------------------
# Errors: one readable line in the page and the API, never a traceback or a bare "Error" badge
# ---------------------------------------------------------------------------------------------------------


def user_error(exc: BaseException, action: str, paths: Sequence[str | None] = ()) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    message, expected = user_message(exc, action, paths)
    # Escaped because the page renders error text as HTML (file names are user-controlled).
    return gr.Error(html.escape(message, quote=False), duration=None, print_exception=False,
                    title="Error" if expected else "Unexpected error")


@contextmanager
def reported(action: str, paths: Sequence[str | None] = ()) -> Iterator[None]:
    try:
        yield
    except (gr.Error, asyncio.CancelledError):
        raise
    except Exception as exc:  # noqa: BLE001 - every error must reach the user as one actionable line
        raise user_error(exc, action, paths) from None


def checked_image(**kwargs: Any) -> gr.Image:
    """A gr.Image whose upload is checked before Gradio decodes it: corrupt files, random bytes, videos and
    decompression bombs get one readable message instead of a generic error. (The check wraps this instance's
    `preprocess`: subclassing a Gradio component makes Gradio write a .pyi stub beside this file.)"""
    image = gr.Image(**kwargs)
    decode = image.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None and getattr(payload, "path", None):
            name = getattr(payload, "orig_name", None) or os.path.basename(payload.path)
            with reported("reading the image", [payload.path]):
                try:
                    check_image_file(payload.path, "image")
                except AnyV2VError as exc:
                    raise AnyV2VError(str(exc).replace(os.path.basename(payload.path), name)) from None
                # Decoded here, not by Gradio (which re-saves a JPEG in RGBA as JPEG and fails): see server.image_uploads.
                path = normalize_upload(payload.path, image.GRADIO_CACHE, name, image.image_mode)
            return path if image.type == "filepath" else decode(FileData(path=path, orig_name=os.path.basename(path)))
        return decode(payload)

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def _progress_fn(progress: gr.Progress) -> Callable[[float, str], None]:
    return lambda fraction, text: progress(fraction, desc=text)


# ---------------------------------------------------------------------------------------------------------
# Editor inputs -> widgets, and the API's union of all editors' inputs
# ---------------------------------------------------------------------------------------------------------

def editor_widget(
    spec: EditorInput, elem_id: str | None = None, default: Any = ..., api: bool = False, **extra: Any
) -> gr.Component:
    """The widget for one editor input: sliders for short ranges, number boxes for long ones (and for the API,
    where a number box keeps integer types). Images keep their transparency (RGBA)."""
    value = spec.default if default is ... else default
    info = spec.help or None
    label = extra.pop("label", spec.label)
    if spec.kind == "text":
        return gr.Textbox(label=label, value=value or "", info=info, elem_id=elem_id, lines=1, **extra)
    if spec.kind == "image" or (spec.kind == "mask" and api):  # a mask file: white (or opaque) pixels mark it
        return checked_image(label=label, type="filepath", format="png", image_mode="RGBA",
                            sources=["upload", "clipboard"], height=240, elem_id=elem_id, **extra)
    if spec.kind == "mask":  # painted over the prepared first frame (set as background when a clip is prepared)
        return gr.ImageEditor(
            label=label, type="pil", image_mode="RGBA", sources=["upload", "clipboard"], height=320,
            brush=gr.Brush(colors=["#ff3366"], color_mode="fixed"), eraser=gr.Eraser(), elem_id=elem_id, **extra,
        )
    if spec.kind == "choice":
        return gr.Radio(list(spec.choices), value=value, label=label, info=info, elem_id=elem_id, **extra)
    if spec.kind == "seed":
        return gr.Number(label=label, value=value, precision=0, minimum=0, info=info, elem_id=elem_id, **extra)
    integer = spec.kind == "int"
    low, high, step = spec.minimum, spec.maximum, spec.step
    if not api and low is not None and high is not None and value is not None and (high - low) / (step or 1) <= 2000:
        return gr.Slider(minimum=low, maximum=high, value=value, step=step or (1 if integer else (high - low) / 100),
                         label=label, info=info, elem_id=elem_id, **extra)
    return gr.Number(label=label, value=value, minimum=low, maximum=high, precision=0 if integer else None,
                     info=info, elem_id=elem_id, **extra)


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
CANCELLED = "**Cancelled.** Nothing was written; the previous result was cleared."
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
            f"Video model: `{os.path.basename(settings.model.rstrip('/'))}` on {device}. "
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
            _build_api(jobs, settings, base, c.available, api_editor_params(c.available))

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
    settings, jobs = c.settings, c.jobs
    clip_inputs = p.clip_inputs = dict(frames=p.frames, fps=p.fps, start_time=p.start_time, end_time=p.end_time,
                                       width=p.width, height=p.height, resize_mode=p.resize_mode)
    p.result_outputs = [p.before_video, p.output_video, p.downloads, p.edit_status_md, p.settings_json]
    p.prepare_outputs = [p.prepared_video, p.first_frame, p.first_frame_download, p.clip_info, p.clip_state,
                         *p.mask_widgets, p.frame_status]
    mask_widgets = p.mask_widgets

    def no_clip(text: str) -> tuple:
        return (None, None, gr.DownloadButton(value=None, interactive=False), text, None,
                *[None for _ in mask_widgets], gr.skip())

    async def on_prepare(video: str | None, previous: dict | None, progress: gr.Progress = gr.Progress(), **clip: Any):
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
        if previous and previous.get("video") == video and previous.get("framing") != framing:
            status = ("**The first frame changed** (start time, size or fit): an edited first frame made before "
                      "was made from the previous one. Make it again if it no longer matches.")
        return (entry.preview_path, entry.first_frame_path,
                gr.DownloadButton(value=entry.first_frame_path, interactive=True), entry.summary, state,
                *[background for _ in mask_widgets], status)

    latest_prepare = c.latest_prepare

    async def on_prepare_latest(video: str | None, previous: dict | None, request: gr.Request,
                                progress: gr.Progress = gr.Progress(), **clip: Any):
        """on_prepare, the last settings winning: one at a time per session, superseded ones dropped."""
        session, skip_all = request.session_hash or "", tuple(gr.skip() for _ in p.prepare_outputs)
        ticket = latest_prepare.ticket(session)
        async with latest_prepare.turn(session, ticket) as current:
            if not current:
                return skip_all
            outputs = await on_prepare(video, previous, progress, **clip)
        return outputs if latest_prepare.is_latest(session, ticket) else skip_all

    def on_new_video():
        """Everything from the previous video goes: clip, edited frame, candidates and result."""
        return (*no_clip("Preparing the clip…")[:-1], None, None, {"editor": None, "paths": []}, "",
                None, None, None, "", None, "")

    p.prepare_inputs = [p.source_video, p.clip_state]
    p.reset_outputs = [*p.prepare_outputs[:-1], p.edited_frame, p.gallery, p.candidates_state, p.frame_status,
                       *p.result_outputs, p.estimate_md]
    p.prepare_options = dict(inputs_kwargs=clip_inputs, concurrency_limit=2, concurrency_id="prepare",
                             show_progress="minimal", show_progress_on=[p.clip_info], api_visibility="private")
    estimate_inputs = dict(video=p.source_video, steps=p.steps, inversion_steps=p.inversion_steps,
                           start_index=p.start_index, guidance=p.guidance, backbone=p.video_model, **clip_inputs)

    async def on_estimate(**kw: Any) -> str:
        video = kw.pop("video")
        try:
            config = build_config(settings, **kw)
            return await asyncio.to_thread(jobs.estimate, video, config)
        except Exception:  # noqa: BLE001 - invalid values are reported when the edit starts
            return ""

    p.on_prepare_latest, p.on_new_video, p.on_estimate = on_prepare_latest, on_new_video, on_estimate
    p.estimate_options = dict(inputs_kwargs=estimate_inputs, concurrency_limit=2, concurrency_id="estimate",
                              show_progress="hidden", api_visibility="private", trigger_mode="always_last")
    prepare = (on_prepare_latest, p.prepare_inputs, p.prepare_outputs)
    estimate = (on_estimate, None, p.estimate_md)
    for event in (p.source_video.upload, p.source_video.clear):
        event(on_new_video, None, p.reset_outputs, queue=False, api_visibility="private").then(
            *prepare, **p.prepare_options).then(*estimate, **p.estimate_options)
    for control in (p.frames, p.fps, p.width, p.height, p.resize_mode):
        control.change(*prepare, trigger_mode="always_last", **p.prepare_options).then(
            *estimate, **p.estimate_options)
    for control in (p.start_time, p.end_time):
        for event in (control.submit, control.blur):
            event(*prepare, trigger_mode="always_last", **p.prepare_options)
    for control in (p.steps, p.inversion_steps, p.start_index, p.guidance, p.video_model):
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
            p.gallery = gr.Gallery(label="Candidates: click one to pick it", columns=4, height=240,
                                   allow_preview=False, elem_id="candidates", format="png")
            p.frame_status = gr.Markdown("", elem_id="frame-status")
            p.use_btn = gr.Button("Use this frame", elem_id="use-frame-btn")
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
    jobs, available = c.jobs, c.available
    tau_outputs = p.tau_outputs = [*p.taus.values(), p.start_index, p.change_preset]
    taus = p.taus

    def suggested(editor: Editor) -> tuple[list[Any], str]:
        """The editor's suggested video settings as slider updates, and the sentence that says so."""
        values = dict(editor.video_settings or {})
        if not values:
            return [gr.skip()] * len(tau_outputs), ""
        updates = [values.get(name, gr.skip()) for name in (*taus, "start_index")]
        preset = change_preset_of(*[values.get(n, 0) for n in (*taus, "start_index")])
        listed = ", ".join(f"{k} {v:g}" for k, v in values.items())
        return updates + [preset], f" Suggested settings for {editor.title} edits applied in step 3 ({listed})."

    def make_editor_fn(editor: Editor) -> Callable[..., Any]:
        async def on_edit_frame(state: dict | None, candidates: Any, request: gr.Request,
                                progress: gr.Progress = gr.Progress(), **values: Any):
            if not state:
                raise gr.Error("Upload a video in step 1 first: the editors work on its first frame.")
            stop = jobs.new_job(request.session_hash or "", "frame")
            with reported(f"editing the first frame with {editor.title}",
                          [v for v in values.values() if isinstance(v, str)]):
                values["resize_mode"] = state.get("resize_mode", "crop")
                frame = as_image(state["first_frame"], "first frame").convert("RGB")
                try:
                    paths = await run_cancellable(lambda stop: jobs.edit_frame(
                        editor.name, frame, values, int(candidates or 1), _progress_fn(progress), stop), stop)
                except CancelledError:  # the Cancel button: shown as cancelled, not as an error
                    return (None, {"editor": None, "paths": []}, 0, gr.skip(), "**Cancelled.**",
                            *[gr.skip()] * len(tau_outputs))
            seed_value = values.get("seed")
            captions = [f"Candidate {i + 1}" + (f" (seed {int(seed_value) + i})" if seed_value is not None else "")
                        for i in range(len(paths))]
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

    for editor, widgets, count, button in p.editor_tabs:
        button.click(
            make_editor_fn(editor), [p.clip_state, count if count is not None else gr.State(1)],
            [p.gallery, p.candidates_state, p.selected_state, p.edited_frame, p.frame_status, *tau_outputs],
            inputs_kwargs=widgets, concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID,
            show_progress_on=[p.gallery], api_visibility="private",
        )
    wire_frame_clicks(c, p)

    def on_select(evt: gr.SelectData) -> int:
        return int(evt.index)

    p.gallery.select(on_select, None, p.selected_state, queue=False, api_visibility="private")

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

    p.use_btn.click(on_use, [p.candidates_state, p.selected_state], [p.edited_frame, p.frame_status, *tau_outputs],
                    api_visibility="private")

    def on_frame_upload(path: str | None) -> str:  # checked_image has refused unreadable files already
        return "Using the uploaded frame for the video edit (step 3)." if path else ""

    p.edited_frame.upload(on_frame_upload, p.edited_frame, p.frame_status, api_visibility="private")


def wire_frame_clicks(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """A click on the first frame sets the inputs an editor takes from a position (e.g. InstantID's face)."""
    jobs = c.jobs
    for editor, widgets, _, _ in p.editor_tabs:
        click_widgets = [widgets[name] for name in editor.click_inputs if name in widgets]
        if not click_widgets:
            continue

        def make_click_fn(editor: Editor, names: list[str]) -> Callable[..., Any]:
            async def on_frame_click(state: dict | None, shown: str | None, evt: gr.SelectData):
                if shown != editor.name:  # a click for another editor's tab
                    return [gr.skip() for _ in names]
                if not state:
                    raise gr.Error("Upload a video in step 1 first.")
                x, y = evt.index
                with reported(f"reading the click for {editor.title}"):
                    frame = as_image(state["first_frame"], "first frame").convert("RGB")
                    values = await asyncio.to_thread(jobs.frame_click_values, editor.name, frame, x, y)
                gr.Info(f"{editor.title}: " + ", ".join(f"{name} = {values[name]}" for name in names))
                return [values[name] for name in names]

            return on_frame_click

        p.first_frame.select(make_click_fn(editor, list(editor.click_inputs)), [p.clip_state, p.active_editor],
                             click_widgets, concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID,
                             api_visibility="private")

    available = c.available

    def on_editor_tab(evt: gr.SelectData) -> str | None:
        titles = {editor.title: editor.name for editor in available.values()}
        names = list(available)
        if str(evt.value) in titles:
            return titles[str(evt.value)]
        return names[evt.index] if isinstance(evt.index, int) and 0 <= evt.index < len(names) else gr.skip()

    p.editor_tabs_row.select(on_editor_tab, None, p.active_editor, queue=False, api_visibility="private")

    # Editors with a target box (AnyDoor): two clicks on the first frame set it, showing pixel coordinates.
    for editor, widgets, _, _ in p.editor_tabs:
        if "box" not in widgets:
            continue

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

        p.first_frame.select(make_box_fn(editor.name), [p.clip_state, p.active_editor, p.box_corner],
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
    taus, start_index, base = p.taus, p.start_index, c.base

    def on_change_preset(name: str):
        if name not in CHANGE_PRESETS:
            return [gr.skip()] * 4
        return [CHANGE_PRESETS[name][key] for key in (*taus, "start_index")]

    p.change_preset.input(on_change_preset, p.change_preset, [*taus.values(), start_index], queue=False,
                          api_visibility="private")
    for control in (*taus.values(), start_index):
        control.input(change_preset_of, [*taus.values(), start_index], p.change_preset, queue=False,
                      api_visibility="private")

    def target_inversion(preset: str, current: Any) -> int:
        return preset_config(preset).inversion_steps if preset in PRESETS else int(current or base.inversion_steps)

    settings = c.settings

    def on_steps(value: Any, preset: str, current: Any, start: Any, backbone: str):  # on the backbone's own grid
        count = max(int(value or 1), 1)
        valid = video_models.inversion_choices(settings, backbone, count)
        chosen = int(current) if current in valid else video_models.derive_inversion_steps(
            settings, backbone, count, target_inversion(preset, current))
        top = max(count - 1, 0)
        return gr.Dropdown(choices=valid, value=chosen), gr.Slider(maximum=max(top, 1), value=min(int(start or 0), top))

    p.steps.change(on_steps, [p.steps, p.quality, p.inversion_steps, start_index, p.video_model],
                   [p.inversion_steps, start_index], queue=False, api_visibility="private")

    def on_quality(name: str, current_steps: Any, backbone: str):
        if name not in PRESETS:
            return gr.skip(), gr.skip()
        values = preset_values(name)
        valid = video_models.inversion_choices(settings, backbone, values["steps"])
        return values["steps"], gr.Dropdown(choices=valid, value=video_models.derive_inversion_steps(
            settings, backbone, values["steps"], values["inversion_steps"]))

    p.quality.input(on_quality, [p.quality, p.steps, p.video_model], [p.steps, p.inversion_steps], queue=False,
                    api_visibility="private")
    for control in (p.steps, p.inversion_steps):
        control.input(quality_label, [p.steps, p.inversion_steps], p.quality, queue=False, api_visibility="private")
    wire_video_model(c, p)


def wire_video_model(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """Choosing a video model applies its defaults to the settings it has defaults for and says so (or says,
    in one sentence, that this server has not enabled it)."""
    settings, taus = c.settings, p.taus
    fields = {"frames": p.frames, "width": p.width, "height": p.height, "steps": p.steps,
              "start_index": p.start_index, "guidance": p.guidance, "negative_prompt": p.negative_prompt, **taus}
    outputs = [*fields.values(), p.inversion_steps, p.change_preset, p.quality, p.video_model_note]

    def on_video_model(name: str):
        note = video_models.defaults_note(settings, name)
        if note == video_models.unavailable_sentence(name):
            return [*[gr.skip()] * (len(outputs) - 1), note]
        values = video_models.page_defaults(settings, name)
        top = max(values["steps"] - 1, 1)
        shown = [gr.Slider(maximum=top, value=values[key]) if key == "start_index" else values[key] for key in fields]
        inversion = gr.Dropdown(choices=video_models.inversion_choices(settings, name, values["steps"]),
                                value=values["inversion_steps"])
        return [*shown, inversion, change_preset_of(values["tau_conv"], values["tau_sa"], values["tau_ta"],
                                                    values["start_index"]),
                quality_label(values["steps"], values["inversion_steps"]), note]

    p.video_model.input(on_video_model, p.video_model, outputs, queue=False, api_visibility="private")


def wire_video_edit_step(c: SimpleNamespace, p: SimpleNamespace) -> None:
    """The settings' consistency, then Edit the video (locked while it runs) and Cancel."""
    settings, jobs = c.settings, c.jobs
    wire_settings(c, p)

    async def on_edit_video(request: gr.Request, progress: gr.Progress = gr.Progress(), **kw: Any):
        video, frame, text = kw.pop("video"), kw.pop("edited_frame"), kw.pop("prompt")
        if not video:
            raise gr.Error("Upload a video in step 1 first.")
        if not frame:
            raise gr.Error("Choose an edited first frame in step 2 first (or click an example).")
        stop = jobs.job_stop(request.session_hash or "", "video")  # made at the click (lock)
        with reported("editing the video", [video, frame]):
            config = build_config(settings, **kw)
            entry = await asyncio.to_thread(jobs.prepare, video, config, True)
            try:
                result = await run_cancellable(
                    lambda stop: jobs.edit_video(video, frame, text, config, _progress_fn(progress), stop), stop)
            except CancelledError:  # the Cancel button: shown as cancelled, not as an error
                return None, None, None, CANCELLED, None
            record = json.loads(Path(result.json_path).read_text())
        return (entry.preview_path, str(result.video_path), [str(result.video_path), str(result.json_path)],
                edit_status(result), record)

    run_inputs = dict(
        video=p.source_video, edited_frame=p.edited_frame, prompt=p.prompt, start_index=p.start_index, steps=p.steps,
        inversion_steps=p.inversion_steps, guidance=p.guidance, negative_prompt=p.negative_prompt, seed=p.seed,
        keep_audio=p.keep_audio, browser=p.browser_state, backbone=p.video_model, **p.taus, **p.clip_inputs,
    )
    visitors = c.visitors

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

    lock_event = p.run_btn.click(lock, p.browser_state, [p.run_btn, *p.result_outputs], queue=False,
                                 api_visibility="private")
    run_event = lock_event.then(
        on_edit_video_of_browser, None, p.result_outputs, inputs_kwargs=run_inputs, concurrency_limit=1,
        concurrency_id=GPU_CONCURRENCY_ID, show_progress="full", show_progress_on=[p.output_video],
        api_visibility="private",
    )
    run_event.then(lambda: gr.Button(interactive=True), None, p.run_btn, queue=False, api_visibility="private").then(
        p.on_estimate, None, p.estimate_md, **p.estimate_options)  # now measured on this server, model loaded

    def on_cancel(request: gr.Request):
        # A stop flag, not Gradio's `cancels`: the job ends normally as "Cancelled" (no red Error badges),
        # within one step, and a job still waiting in the queue ends as soon as it starts.
        jobs.cancel(request.session_hash or "")
        return gr.Button(interactive=True), None, None, None, CANCELLED, None

    p.cancel_btn.click(on_cancel, None, [p.run_btn, *p.result_outputs], queue=False, api_visibility="private")


def wire_visitors(c: SimpleNamespace, p: SimpleNamespace, demo: gr.Blocks) -> None:
    """A visitor who leaves (closed or reloaded page, a gradio_client that went away) frees the GPU; a reloaded
    page says what became of this browser's edit."""
    jobs, visitors, latest_prepare = c.jobs, c.visitors, c.latest_prepare

    def on_unload(request: gr.Request) -> None:
        session = request.session_hash or ""
        latest_prepare.forget(session)
        if jobs.cancel(session):  # its jobs stop at their next step; waiting ones end as soon as they start
            visitors.left(session)
            logger.info("a visitor left: its jobs were asked to stop")

    demo.unload(on_unload)

    def on_load(browser: str | None, request: gr.Request):
        """This browser's id (made on its first visit), and what became of its edit before a reload."""
        browser = browser if isinstance(browser, str) and browser else uuid.uuid4().hex
        return browser, visitors.status(browser, request.session_hash or "")

    demo.load(on_load, p.browser_state, [p.browser_state, p.edit_status_md], queue=False, api_visibility="private")


# ---- Examples: load everything, reset the rest, small settings on a CPU -----------------------------------


def wire_examples(c: SimpleNamespace, p: SimpleNamespace) -> None:
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

    example_outputs = list(dict.fromkeys([
        *p.reset_outputs, p.source_video, p.edited_frame, p.prompt, *taus.values(), p.start_index, p.change_preset,
        p.frames, p.fps, p.width, p.height, p.resize_mode, p.start_time, p.end_time, p.steps, p.inversion_steps,
        p.quality]))
    p.example_gallery.select(on_example, p.video_model, example_outputs, queue=False, api_visibility="private").then(
        None, js=SCROLL_TO_STEP_1).then(p.on_prepare_latest, p.prepare_inputs, p.prepare_outputs, **p.prepare_options).then(
        p.on_estimate, None, p.estimate_md, **p.estimate_options)


def _with_signature(fn: Callable[..., Any], parameters: list[inspect.Parameter]) -> Callable[..., Any]:
    """Give a *args function a real signature: Gradio names API parameters (and marks optional ones) by it."""
    fn.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    # Gradio finds gr.Request parameters by their type hints.
    fn.__annotations__ = {p.name: p.annotation for p in parameters if p.annotation is not inspect.Parameter.empty}
    return fn


def _build_api(
    jobs: EditService, settings: AppSettings, base: EditConfig, available: Mapping[str, Editor],
    params: list[ApiEditorParam],
) -> None:
    """/edit_first_frame and /edit_video with parameter names, defaults and docs that gradio_client shows."""
    _api_edit_first_frame(jobs, settings, base, available, params)
    _api_edit_video(jobs, settings, base)


def _api_edit_first_frame(
    jobs: EditService, settings: AppSettings, base: EditConfig, available: Mapping[str, Editor],
    params: list[ApiEditorParam],
) -> None:
    """/edit_first_frame: the endpoint's own parameters, then the union of every editor's inputs."""
    P = inspect.Parameter
    editor_names = list(available)
    fixed = {
        "video": gr.Video(label="video", sources=["upload"], format=None),
        "editor": gr.Dropdown(editor_names, value=editor_names[0] if editor_names else None, label="editor"),
        "candidates": gr.Number(label="candidates", value=1, precision=0),
        "width": gr.Number(label="width", value=base.width, precision=0),
        "height": gr.Number(label="height", value=base.height, precision=0),
        "resize_mode": gr.Dropdown(list(RESIZE_MODES), value=base.resize_mode, label="resize_mode"),
        "fps": gr.Number(label="fps", value=base.fps, precision=0),
        "start_time": gr.Number(label="start_time", value=0.0),
    }
    ff_widgets = [editor_widget(param.spec, default=param.default, api=True, label=param.name) for param in params]
    names = list(fixed) + [param.name for param in params]

    async def edit_first_frame(*args: Any, progress: gr.Progress = gr.Progress(), request: gr.Request | None = None):
        given = dict(zip(names, args))
        video = given["video"]
        with reported("editing the first frame", [video] + [v for v in given.values() if isinstance(v, str)]):
            editor = editors.get_editor(given["editor"] or "manual")
            config = build_config(settings, frames=2, fps=given["fps"], start_time=given["start_time"],
                                  width=given["width"], height=given["height"], resize_mode=given["resize_mode"])
            entry = await asyncio.to_thread(jobs.prepare, jobs.check_upload(video), config)
            values = editor_values(editor, params, given)
            values["resize_mode"] = config.resize_mode
            candidates = whole_number(given["candidates"], 1, "candidates")
            with jobs.session_job(request.session_hash if request else None) as stop:  # stops if the client leaves
                paths = await run_cancellable(lambda stop: jobs.edit_frame(
                    editor.name, entry.prepared.first_frame, values, candidates, _progress_fn(progress), stop), stop)
        return paths

    signature = [P(name, P.POSITIONAL_OR_KEYWORD, default=None) for name in names]
    signature[0] = P("video", P.POSITIONAL_OR_KEYWORD)
    signature.append(P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    signature.append(P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request))
    uses = "; ".join(f"{e.name}: " + ", ".join(p.name for p in params if e.name in p.targets) for e in available.values())
    gr.Button("edit_first_frame").click(
        _with_signature(edit_first_frame, signature), [*fixed.values(), *ff_widgets],
        gr.File(label="candidates", file_count="multiple"), api_name="edit_first_frame",
        api_description=(
            "Edit the first frame of `video` (prepared at width x height like the video edit) with one editor. "
            f"Each editor reads its own inputs ({uses}). Returns the candidates as PNG files."
        ),
        concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID,
    )


def _api_edit_video(jobs: EditService, settings: AppSettings, base: EditConfig) -> None:
    """/edit_video: every setting a named parameter with the server's default (None: derived)."""
    inputs = [
        gr.Video(label="video", sources=["upload"], format=None),
        checked_image(label="edited_frame", type="filepath", format="png", image_mode="RGBA"),
        gr.Textbox(label="prompt"),
        gr.Number(label="tau_conv", value=base.tau_conv),
        gr.Number(label="tau_sa", value=base.tau_sa),
        gr.Number(label="tau_ta", value=base.tau_ta),
        gr.Number(label="start_index", value=base.start_index, precision=0),
        gr.Number(label="steps", value=base.steps, precision=0),
        gr.Number(label="inversion_steps", value=None, precision=0),
        gr.Number(label="guidance", value=base.guidance),
        gr.Textbox(label="negative_prompt", value=base.negative_prompt),
        gr.Number(label="seed", value=base.seed, precision=0),
        gr.Number(label="frames", value=base.frames, precision=0),
        gr.Number(label="fps", value=base.fps, precision=0),
        gr.Number(label="width", value=base.width, precision=0),
        gr.Number(label="height", value=base.height, precision=0),
        gr.Number(label="start_time", value=0.0),
        gr.Dropdown(list(RESIZE_MODES), value=base.resize_mode, label="resize_mode"),
        gr.Checkbox(label="keep_audio", value=False),
        gr.Number(label="end_time", value=None),
        gr.Dropdown(list(video_models.names()), value=base.backbone, label="backbone", allow_custom_value=True),
    ]

    async def edit_video(
        video: str, edited_frame: str, prompt: str, tau_conv: float = base.tau_conv, tau_sa: float = base.tau_sa,
        tau_ta: float = base.tau_ta, start_index: int = base.start_index, steps: int = base.steps,
        inversion_steps: int | None = None, guidance: float = base.guidance,
        negative_prompt: str = base.negative_prompt, seed: int = base.seed, frames: int = base.frames,
        fps: int = base.fps, width: int = base.width, height: int = base.height, start_time: float = 0.0,
        resize_mode: str = base.resize_mode, keep_audio: bool = False, end_time: float | None = None,
        backbone: str = base.backbone,
        progress: gr.Progress = gr.Progress(), request: gr.Request = None,  # type: ignore[assignment]
    ) -> tuple[str, str]:
        """Edit `video` so it follows `edited_frame` (transparent areas keep the source). Returns the edited mp4
        and its settings JSON. Leave inversion_steps out to use the valid count nearest the server's preset.
        backbone: the video model (i2vgen-xl, seine, consisti2v); with another than i2vgen-xl, a setting left at
        its default above takes that model's own default."""
        if not edited_frame:
            raise gr.Error("edited_frame is required: the edited first frame as an image file.")
        with reported("editing the video", [video, edited_frame]):
            name = video_models.check_backbone(backbone)
            video_models.require_available(settings, name)
            values = video_models.api_values(settings, name, dict(
                tau_conv=tau_conv, tau_sa=tau_sa, tau_ta=tau_ta, start_index=start_index, steps=steps,
                guidance=guidance, negative_prompt=negative_prompt, seed=seed, frames=frames, fps=fps, width=width,
                height=height, start_time=start_time, end_time=end_time, resize_mode=resize_mode,
                keep_audio=keep_audio))
            own = settings.base_config(name)
            steps_value = whole_number(values["steps"], own.steps, "steps")
            if inversion_steps is None and steps_value >= 1:
                inversion_steps = video_models.derive_inversion_steps(settings, name, steps_value, own.inversion_steps)
            config = build_config(settings, inversion_steps=inversion_steps, backbone=name, **values)
            with jobs.session_job(request.session_hash if request else None) as stop:  # stops if the client leaves
                result = await run_cancellable(lambda stop: jobs.edit_video(
                    jobs.check_upload(video), edited_frame, prompt, config, _progress_fn(progress), stop), stop)
        gr.Info(edit_status(result).replace("**", ""))  # reaches gradio_client as a status log
        return str(result.video_path), str(result.json_path)

    gr.Button("edit_video").click(
        edit_video, inputs, [gr.Video(label="edited_video", format=None), gr.File(label="settings_json")],
        api_name="edit_video", concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID,
    )


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
