"""Request and upload checks: page/API values to a validated EditConfig, and uploaded images, each refused
with one line that names what to change."""

from __future__ import annotations

import math
import os
from typing import Any

from PIL import Image, UnidentifiedImageError

from anyv2v.config import EditConfig
from anyv2v.errors import ConfigError, VideoError, quoted
from anyv2v.video import MAX_SOURCE_PIXELS

from .settings import AppSettings

MAX_SEED = 2**32 - 1


def _number(value: Any, default: float, name: str) -> float:
    """A widget/API number (None or blank means the default); ConfigError for text that is not a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {quoted(value)}.") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {quoted(value)}.")
    return number


def whole_number(value: Any, default: int, name: str) -> int:
    number = _number(value, default, name)
    if abs(number - round(number)) > 1e-6:
        raise ConfigError(f"{name} must be a whole number, got {quoted(value)}.")
    return int(round(number))


def clip_frame_count(frames: int, fps: float, start_time: float, end_time: float | None, max_frames: int) -> int:
    """Frames to edit: the frame count, or the frames between start and end time when an end time is set.

    0 frames means "the whole clip": the engine reads it and refuses more than `max_frames` while decoding.
    """
    if end_time is not None and end_time > 0:
        if end_time <= start_time:
            raise ConfigError(f"the end time ({end_time:g} s) must be after the start time ({start_time:g} s).")
        frames = int(math.floor((end_time - start_time) * fps + 1e-6))
        if frames < 2:
            raise ConfigError(
                f"{start_time:g} s to {end_time:g} s gives fewer than 2 frames at {fps:g} fps; "
                "choose a longer time range or a higher fps."
            )
    if frames != 0 and frames < 2:  # the app's limit, not the engine's (which is higher)
        raise ConfigError(f"frames={frames} must be between 2 and {max_frames} (or 0 for the whole clip).")
    check_frame_limit(frames, fps, max_frames)
    return frames


def check_frame_limit(frames: int, fps: float, max_frames: int) -> None:
    if frames > max_frames:
        raise ConfigError(
            f"the clip would have {frames} frames ({frames / fps:.1f} s at {fps:g} fps); this app edits at most "
            f"{max_frames} frames. Lower the frame count or the fps, or choose a shorter time range."
        )


def build_config(
    settings: AppSettings,
    *,
    frames: Any = None,
    fps: Any = None,
    start_time: Any = None,
    end_time: Any = None,
    width: Any = None,
    height: Any = None,
    resize_mode: str | None = None,
    keep_audio: bool | None = None,
    tau_conv: Any = None,
    tau_sa: Any = None,
    tau_ta: Any = None,
    start_index: Any = None,
    steps: Any = None,
    inversion_steps: Any = None,
    guidance: Any = None,
    negative_prompt: str | None = None,
    seed: Any = None,
    backbone: Any = None,
) -> EditConfig:
    """The validated EditConfig for one request: page/API values over the server's base config for the video
    model `backbone` (None: I2VGen-XL).

    None (or a blank) keeps the base value, so API callers may leave any optional setting out. Raises
    ConfigError with one line naming the setting to change.
    """
    from .video_models import check_backbone

    base = settings.base_config(check_backbone(backbone))
    fps_value = whole_number(fps, base.fps, "fps")
    if not 1 <= fps_value <= 60:
        raise ConfigError(f"fps {fps_value} is outside 1..60.")
    start = _number(start_time, base.start_time, "start time")
    if start < 0:
        raise ConfigError(f"the start time must be 0 or more, got {start:g}.")
    end = _number(end_time, 0.0, "end time")
    width_value = whole_number(width, base.width, "width")
    height_value = whole_number(height, base.height, "height")
    for name, value in (("width", width_value), ("height", height_value)):
        if value > settings.max_size:
            raise ConfigError(f"{name} {value} is larger than this app allows ({settings.max_size}); lower the size.")
    seed_value = whole_number(seed, base.seed, "seed")
    if not 0 <= seed_value <= MAX_SEED:
        raise ConfigError(f"seed {seed_value} is outside 0..{MAX_SEED}.")
    config = base.replace(
        frames=clip_frame_count(
            whole_number(frames, base.frames, "frames"), fps_value, start, end or None, settings.max_frames
        ),
        fps=fps_value,
        start_time=start,
        width=width_value,
        height=height_value,
        resize_mode=resize_mode or base.resize_mode,
        keep_audio=bool(keep_audio) if keep_audio is not None else base.keep_audio,
        tau_conv=_number(tau_conv, base.tau_conv, "tau_conv"),
        tau_sa=_number(tau_sa, base.tau_sa, "tau_sa"),
        tau_ta=_number(tau_ta, base.tau_ta, "tau_ta"),
        start_index=whole_number(start_index, base.start_index, "start index (T')"),
        steps=whole_number(steps, base.steps, "steps"),
        inversion_steps=whole_number(inversion_steps, base.inversion_steps, "inversion steps"),
        guidance=_number(guidance, base.guidance, "guidance"),
        negative_prompt=base.negative_prompt if negative_prompt is None else str(negative_prompt),
        seed=seed_value,
    )
    return config.validate()


def check_image_file(path: str | os.PathLike | None, what: str = "image") -> str:
    """`path` if it is a readable image of a sane size, else VideoError with one line (the header only is read
    for the size, so a decompression bomb is refused before it is decoded)."""
    if not path:
        raise VideoError(f"no {what} was given; upload one first.")
    name = os.path.basename(str(path))
    if not os.path.isfile(path):
        raise VideoError(f"the uploaded {what} {name} is missing on the server; upload it again.")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_SOURCE_PIXELS:
                raise VideoError(
                    f"{name} is {width}x{height} pixels; the {what} may have at most 4096x4096 pixels. Resize it first."
                )
            image.load()
    except VideoError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise VideoError(
            f"{name} is not a readable image ({type(exc).__name__}); use a PNG, JPEG or WebP picture for the {what}."
        ) from None
    return str(path)
