"""Frames in and out of the editors: the engine's first frame, fitted images, atomic PNG writes.

Every frame an editor sees comes through the engine's own code (`anyv2v.video.read_video`, `frame_fitter`,
`fit_frame`), so an edited frame made here drops into the engine without any further resizing.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from anyv2v.config import EditConfig
from anyv2v.files import atomic_output
from anyv2v.video import fit_frame, frame_fitter, read_video, working_size

from .base import EditorError


def check_video_settings(width: int, height: int, resize_mode: str, fps: float, start_time: float) -> None:
    """The engine's own limits for these settings (ConfigError with one line when one is off)."""
    EditConfig(width=width, height=height, resize_mode=resize_mode, fps=fps, start_time=start_time).validate()


def first_frame(
    video: str | os.PathLike,
    fps: float = 8,
    width: int = 512,
    height: int = 512,
    resize_mode: str = "crop",
    start_time: float = 0.0,
) -> Image.Image:
    """The video's first frame exactly as the engine prepares it (working size, RGB).

    Two frames are read because the engine refuses one-frame clips; the first frame does not depend on how
    many are read.
    """
    check_video_settings(width, height, resize_mode, fps, start_time)
    clip = read_video(video, frames=2, fps=fps, start_time=start_time, fit=frame_fitter(width, height, resize_mode))
    return clip.frames[0]


def fit_image(image: Image.Image, width: int = 512, height: int = 512, resize_mode: str = "crop") -> Image.Image:
    """A still image fitted to the working size the way a video frame would be."""
    check_video_settings(width, height, resize_mode, 8, 0.0)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return fit_frame(rgb, working_size(rgb.size, width, height, resize_mode), resize_mode)


def candidate_paths(out: str | os.PathLike, count: int) -> list[Path]:
    """`F.png` for candidate 0, then `F-1.png`, `F-2.png`, ...: the suffix is the seed offset."""
    out = Path(out)
    return [out] + [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, count)]


def check_writable(paths: list[Path], overwrite: bool = False) -> None:
    """Refuse before any work if an output exists (without `overwrite`) or its folder cannot be made."""
    for path in paths:
        if path.suffix.lower() != ".png":
            raise EditorError(f"output {path} must be a .png file (lossless, so the engine gets the exact pixels).")
        if path.is_dir():
            raise EditorError(f"output {path} is a folder; give a file name ending in .png.")
        if path.exists() and not overwrite:
            raise EditorError(f"output {path} already exists; choose another name or pass --overwrite.")
        parent = path.parent
        if parent.exists() and not parent.is_dir():
            raise EditorError(f"cannot write {path}: {parent} is not a folder.")


def save_png(image: Image.Image, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `image` as PNG atomically: a temp file in the same folder, then a rename.

    Without `overwrite` the final step is a hard link, which fails if the name was taken meanwhile, so an
    existing file is never replaced.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EditorError(f"cannot create folder {path.parent}: {exc.strerror or exc}.") from None
    if path.exists() and not overwrite:
        raise EditorError(f"{path} already exists; choose another name or pass --overwrite.")
    try:
        with atomic_output(path, overwrite=overwrite) as tmp_name:
            image.save(tmp_name, format="PNG")
    except FileExistsError:
        raise EditorError(f"{path} already exists; choose another name or pass --overwrite.") from None
    except OSError as exc:
        raise EditorError(f"cannot write {path}: {exc.strerror or exc}.") from None
    return path


def save_candidates(images: list[Image.Image], out: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Write candidates as `F.png`, `F-1.png`, ...; all or nothing (written ones are removed on failure)."""
    paths = candidate_paths(out, len(images))
    check_writable(paths, overwrite)
    written: list[Path] = []
    try:
        for image, path in zip(images, paths, strict=True):
            written.append(save_png(image, path, overwrite))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
