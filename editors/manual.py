"""Manual editing: the user edits the first frame in any program and uploads it.

Round trip: `export_source_frame` writes the first frame exactly as the engine prepares it (working size,
lossless PNG); the user paints on it and uploads it; `fit_uploaded_frame` brings the upload to the working
size with the engine's own `prepare_edited_frame` (RGBA composited onto the source frame, other sizes and
aspects fitted exactly as the video frames are) and says what it changed. An unchanged export comes back
bit-exact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from anyv2v.config import RESIZE_MODES
from anyv2v.video import prepare_edited_frame

from .base import Editor, EditorError, EditorInput, Progress, as_image, check_frame, quoted
from .frames import first_frame, save_png

ORDER = 30


def fit_uploaded_frame(
    image: Image.Image | str | os.PathLike, source_frame: Image.Image, resize_mode: str = "crop"
) -> tuple[Image.Image, list[str]]:
    """The uploaded edit at the source frame's size, RGB, and notes on what was changed to get there.

    `source_frame` is the prepared source first frame (working size); the fitting is the engine's own.
    """
    if resize_mode not in RESIZE_MODES:
        raise EditorError(f"resize mode {quoted(resize_mode)} is not one of {', '.join(RESIZE_MODES)}.")
    upload = as_image(image, "Edited frame")
    return prepare_edited_frame(upload, check_frame(source_frame), resize_mode)


def export_source_frame(
    video_path: str | os.PathLike,
    out_path: str | os.PathLike,
    frames: int = 16,
    fps: float = 8,
    width: int = 512,
    height: int = 512,
    resize_mode: str = "crop",
    start_time: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Write the video's first frame, exactly as the engine prepares it, as a PNG to edit elsewhere.

    `frames` is accepted for symmetry with the engine's settings; the first frame does not depend on it.
    The write is atomic and never replaces an existing file unless `overwrite`.
    """
    del frames  # the first frame is the same whatever the clip length
    out = Path(out_path)
    if out.suffix.lower() != ".png":
        raise EditorError(f"{out} must be a .png file (lossless, so the round trip is exact).")
    if out.exists() and not overwrite:
        raise EditorError(f"{out} already exists; choose another name.")
    frame = first_frame(video_path, fps=fps, width=width, height=height, resize_mode=resize_mode, start_time=start_time)
    return save_png(frame, out, overwrite=overwrite)


class ManualEditor(Editor):
    """Takes the user's uploaded edit as the edited frame.

    Besides the declared `image` input, `inputs` may carry `resize_mode` ("crop" or "keep_aspect", default
    "crop"): the video's own setting, not a widget, so an upload of another aspect is fitted like the video.
    There is no model, so `make_tiny_model` raises EditorError, and there is one result whatever
    `candidates` is (`supports_candidates` is False).
    """

    name = "manual"
    title = "Manual (upload your edit)"
    description = "Edit the first frame in any image program and upload it (PNG; transparency shows the source)."
    inputs = (
        EditorInput(
            "image",
            "image",
            "Edited frame",
            required=True,
            help="Upload the edited first frame (export the source frame first for an exact fit).",
        ),
    )
    model_ids: dict[str, str] = {}
    supports_candidates = False

    def __init__(self) -> None:
        super().__init__()
        self.last_notes: list[str] = []  # what the latest edit changed (size, transparency, mode)

    def validate_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        values = super().validate_inputs(inputs)
        resize_mode = (inputs or {}).get("resize_mode") or "crop"
        if resize_mode not in RESIZE_MODES:
            raise EditorError(f"resize mode {quoted(resize_mode)} is not one of {', '.join(RESIZE_MODES)}.")
        values["resize_mode"] = resize_mode
        return values

    def _edit(
        self,
        frame: Image.Image,
        values: dict[str, Any],
        candidates: int,
        progress: Progress,
        model: str | None,
        device: str | None,
        dtype: str | None,
    ) -> list[Image.Image]:
        image, notes = fit_uploaded_frame(values["image"], frame, values["resize_mode"])
        self.last_notes = notes
        progress(1.0, "; ".join(notes) if notes else "edited frame already fits the working size")
        return [image]


EDITOR = ManualEditor()
