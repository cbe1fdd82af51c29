"""Gradio-side helpers that are not page layout: errors as one readable line (`user_error`, `reported`), the
checked image upload (`checked_image`), the progress adapter (`progress_fn`) and editor inputs as widgets
(`editor_widget`)."""

from __future__ import annotations

import asyncio
import html
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import gradio as gr
from gradio.data_classes import FileData

from anyv2v.errors import AnyV2VError
from editors.base import EditorInput
from server.checks import check_image_file
from server.image_uploads import normalize_upload
from server.messages import user_message

GPU_CONCURRENCY_ID = "gpu"  # one model job at a time, page and API alike


# ---------------------------------------------------------------------------------------------------------
# Errors: one readable line in the page and the API, never a traceback or a bare "Error" badge
# ---------------------------------------------------------------------------------------------------------


def expected_error(message: str) -> gr.Error:
    """A user's mistake with what to do (e.g. no video yet): the message only, no traceback in the server log."""
    return gr.Error(message, print_exception=False)


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


def progress_fn(progress: gr.Progress) -> Callable[[float, str], None]:
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
