"""The public API (gradio_client): /edit_first_frame and /edit_video on hidden components, with real signatures
so that Gradio names their parameters, marks the optional ones and shows their defaults and docs. A `request`
parameter (invisible to the API) lets a job stop when its client goes away."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

import editors
from anyv2v.config import RESIZE_MODES, EditConfig
from editors.base import Editor
from server.checks import build_config, whole_number
from server.editor_params import ApiEditorParam, editor_values
from server.jobs import run_cancellable
from server.messages import edit_status
from server import video_models
from server.service import EditService
from server.settings import AppSettings

from .widgets import GPU_CONCURRENCY_ID, checked_image, editor_widget, expected_error, progress_fn, reported


def _with_signature(fn: Callable[..., Any], parameters: list[inspect.Parameter]) -> Callable[..., Any]:
    """Give a *args function a real signature: Gradio names API parameters (and marks optional ones) by it."""
    fn.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    # Gradio finds gr.Request parameters by their type hints.
    fn.__annotations__ = {p.name: p.annotation for p in parameters if p.annotation is not inspect.Parameter.empty}
    return fn


def build_api(
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
                    editor.name, entry.prepared.first_frame, values, candidates, progress_fn(progress), stop), stop)
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
            raise expected_error("edited_frame is required: the edited first frame as an image file.")
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
                    jobs.check_upload(video), edited_frame, prompt, config, progress_fn(progress), stop), stop)
        gr.Info(edit_status(result).replace("**", ""))  # reaches gradio_client as a status log
        return str(result.video_path), str(result.json_path)

    gr.Button("edit_video").click(
        edit_video, inputs, [gr.Video(label="edited_video", format=None), gr.File(label="settings_json")],
        api_name="edit_video", concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID,
    )
