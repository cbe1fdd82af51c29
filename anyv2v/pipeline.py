"""One AnyV2V edit end to end: prepare the clip, invert (or reuse the cached inversion), sample, write."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from safetensors import SafetensorError

from . import __version__
from .backbone import BackboneCache, looks_like_path
from .backbones import backbone_class
from .backbones.base import VideoBackbone
from .cache import Inversion, InversionCache, inversion_key
from .config import EditConfig
from .device import dtype_name, oom_guard, resolve_device
from .errors import OOM_ADVICE, AnyV2VError, OutputError, first_line
from .inversion import ProgressCallback, StopCheck, check_stop, invert
from .sampler import SamplingSettings, sample
from .memory import MemoryPlan, plan_memory
from .files import atomic_output, check_output_dir, derived_output_path
from .video import (
    MAX_FRAMES, Clip, frame_fitter, load_image, prepare_edited_frame, read_video, write_video,
)

logger = logging.getLogger(__name__)


# Loaded models stay in the process between edits (the app and repeated CLI calls in one process).
BACKBONES = BackboneCache(max_entries=1)


@dataclass
class PreparedClip:
    """Frames at the working size, as the inversion and the editors see them."""

    frames: list[Image.Image]
    clip: Clip

    @property
    def first_frame(self) -> Image.Image:
        return self.frames[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size


@dataclass
class EditResult:
    video_path: Path
    json_path: Path
    inversion_from_cache: bool
    unet_calls: dict[str, Any]
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)
    frames: int = 0
    size: tuple[int, int] = (0, 0)
    fps: int = 0
    memory: dict[str, Any] = field(default_factory=dict)
    latents: Any = None  # the edited latents [1, C, F, h, w] on the CPU (bench comparisons)


def prepare_clip(video: str | os.PathLike, config: EditConfig, max_frames: int = MAX_FRAMES) -> PreparedClip:
    """Read `config.frames` frames at `config.fps` from `config.start_time`, fitted to the working size as read.

    `clip.frames` are the fitted frames (no source-size copy is kept); more than `max_frames` is refused early.
    """
    clip = read_video(
        video, frames=config.frames, fps=config.fps, start_time=config.start_time, max_frames=max_frames,
        fit=frame_fitter(config.width, config.height, config.resize_mode),
    )
    if config.resize_mode == "keep_aspect":
        (src_w, src_h), (width, height) = clip.source_size, clip.frames[0].size
        clip.notes.append(
            f"keep_aspect: the {src_w}x{src_h} source (aspect {src_w / src_h:.3f}) is worked on at {width}x{height} "
            f"(aspect {width / height:.3f}; sides are multiples of 8)"
        )
    return PreparedClip(clip.frames, clip)


def prepare_edit_image(edited: str | os.PathLike | Image.Image, clip: PreparedClip, config: EditConfig) -> tuple[Image.Image, list[str]]:
    image = edited if isinstance(edited, Image.Image) else load_image(edited)
    return prepare_edited_frame(image, clip.first_frame, config.resize_mode)


def inversion_settings(config: EditConfig, clip: PreparedClip) -> dict[str, Any]:
    """Everything besides the frames and the model that the inversion depends on."""
    width, height = clip.size
    return {
        "backbone": config.backbone,
        "width": width,
        "height": height,
        "frames": len(clip.frames),
        "fps": config.fps,
        "inversion_steps": config.inversion_steps,
        "seed": config.seed,
    }


def get_inversion(
    backbone: VideoBackbone,
    clip: PreparedClip,
    config: EditConfig,
    cache: InversionCache,
    unet_calls: Counter,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    notes: list[str] | None = None,
    memory: MemoryPlan | None = None,
    keep_all: bool = False,
) -> tuple[Inversion, bool]:
    """The clip's inversion from the cache, or computed (and stored). Returns (inversion, from_cache).

    Only the latents at the sampling timesteps of `config.steps` are kept (every inverted latent when
    `keep_all`), plus those an existing entry of the clip already held, so the new entry serves both.
    When the cache cannot store the result (disk full while writing), a warning goes to `notes` and the
    inversion is still returned.
    """
    settings = inversion_settings(config, clip)
    key = inversion_key(clip.frames, backbone.fingerprint(), {**settings, "dtype": dtype_name(backbone.dtype)})
    width, height = clip.size
    scale = backbone.vae_scale_factor
    shape = (1, backbone.latent_channels, len(clip.frames), height // scale, width // scale)
    plan, save_steps = backbone.plan, config.inversion_save_steps
    covered = plan.covers(config.steps, config.inversion_steps, save_steps)
    keep = plan.needed(config.steps, config.inversion_steps, save_steps) if covered and not keep_all else None
    cached = cache.get(key, timesteps=keep, shape=shape, dtype=backbone.dtype)
    if cached is not None:
        if progress is not None:
            progress("inversion_cached", 1, 1)
        return cached, True
    if keep is not None:
        keep |= cache.stored_timesteps(key)
    latent_bytes = math.prod(shape) * backbone.dtype.itemsize
    cache.check_space(latent_bytes * (config.inversion_steps if keep is None else len(keep)))
    inversion = invert(
        backbone, clip.frames, config.inversion_steps, config.fps, config.seed, key, unet_calls, progress, should_stop,
        keep=keep, memory=memory,
    )
    try:
        cache.put(inversion, {"model": public_model_name(backbone.model_id), **settings})
    except (OSError, SafetensorError) as exc:  # e.g. the disk filled up while writing: the edit goes on
        reason = getattr(exc, "strerror", None) or first_line(exc, None)
        message = f"the inversion could not be saved to the cache ({reason}); the edit went on without caching it"
        logger.warning(message)
        if notes is not None:
            notes.append(message)
    return inversion, False


def public_model_name(model: str) -> str:
    """What a downloadable record says about the model: a hub id as is, a local folder by its name only."""
    if looks_like_path(model) or os.path.isdir(model):
        return os.path.basename(os.path.normpath(os.path.expanduser(model))) or "model"
    return model


def choose_memory(backbone: VideoBackbone, clip: PreparedClip, config: EditConfig) -> MemoryPlan:
    """The memory options for this edit (config.memory: auto, on, off), with the estimate behind the choice."""
    width, height = clip.size
    return plan_memory(
        config.memory, dict(backbone.unet.config), dict(backbone.vae.config), len(clip.frames), height, width,
        backbone.dtype, backbone.device, decode_frames=config.decode_chunk_size,
        plain_batch=3 if config.guidance > 1.0 else 2,
    )


def output_paths(
    out: str | os.PathLike | None,
    overwrite: bool,
    output_dir: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Where the mp4 goes: the user's path (never replacing a file unless told) or a new name derived from the
    source (`outputs/kitten-edit-1a2b3c4d.mp4`). The folder is created and checked writable here, before work."""
    if out is None:
        directory = check_output_dir(output_dir or "outputs")
        return derived_output_path(directory, source or "video", "edit", ".mp4")
    path = Path(out)
    if path.suffix.lower() != ".mp4":
        raise OutputError(f"output {path} must end in .mp4.")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file name ending in .mp4.")
    if not overwrite and (path.exists() or path.with_suffix(".json").exists()):
        raise OutputError(f"{path} (or its .json) already exists; choose another --out or pass --overwrite.")
    check_output_dir(path.parent)
    return path


def run_edit(
    video: str | os.PathLike,
    edited_frame: str | os.PathLike | Image.Image,
    prompt: str,
    config: EditConfig,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    output_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    backbones: BackboneCache = BACKBONES,
    prepared: PreparedClip | None = None,
    probe=None,
    keep_source_branch: bool = False,
) -> EditResult:
    """Edit `video` so it follows `edited_frame`; write the mp4 and a JSON of settings and measurements beside it."""
    config.validate()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(seconds.get(stage, 0.0) + now - clock, 4)
        clock = now

    if not isinstance(prompt, str) or not prompt.strip():
        raise AnyV2VError("the prompt is empty; describe the edited video (a caption, e.g. 'a dog turning its head').")
    resolve_device(config.device, config.dtype)  # an unknown or absent device fails before any work
    config = config.replace(model=config.resolved_model())
    out_path = output_paths(out, overwrite, output_dir, source=video)
    backbone_class(config.backbone).timestep_plan(config.model).check(
        config.steps, config.inversion_steps, config.inversion_save_steps
    )

    clip = prepared or prepare_clip(video, config)
    edited, notes = prepare_edit_image(edited_frame, clip, config)
    notes = clip.clip.notes + notes
    lap("prepare")
    check_stop(should_stop)

    with oom_guard(OOM_ADVICE):
        backbone = backbones.get(config.model, config.device, config.dtype, config.cpu_offload, config.backbone)
        lap("load")
        memory = choose_memory(backbone, clip, config)
        cache = InversionCache(config.cache_dir, int(config.cache_max_gb * 2**30))
        inversion_calls: Counter = Counter()
        inversion, from_cache = get_inversion(
            backbone, clip, config, cache, inversion_calls, progress, should_stop, notes=notes, memory=memory
        )
        lap("inversion")
        sampling_calls: Counter = Counter()
        settings = SamplingSettings.from_config(config, prompt)
        latents = sample(
            backbone, inversion, clip.first_frame, edited, settings, sampling_calls, progress, should_stop,
            probe=probe, keep_source_branch=keep_source_branch, memory=memory,
        )
        lap("sampling")
        check_stop(should_stop)
        frames = backbone.decode(latents, chunk=memory.vae_frames or config.decode_chunk_size, progress=progress)
        lap("decode")

    audio = clip.clip.source_path if config.keep_audio and clip.clip.has_audio else None
    if config.keep_audio and not clip.clip.has_audio:
        notes.append("the source video has no audio track; the output is silent")
    check_stop(should_stop)
    taken = f"{out_path} (or its .json) was created by something else during the edit; choose another --out or pass --overwrite."
    try:
        write_video(
            frames, out_path, config.fps, audio_source=audio, audio_start=clip.clip.start_time, overwrite=overwrite
        )
    except FileExistsError:
        raise OutputError(taken) from None
    lap("write")
    unet_calls = {
        "inversion": sum(inversion_calls.values()),
        "sampling": {str(batch): calls for batch, calls in sorted(sampling_calls.items(), reverse=True)},
    }
    # The record is downloadable: no server paths (model and cache by name), the device and dtype actually used.
    settings_record = config.to_dict()
    settings_record.update(
        model=public_model_name(config.model),
        cache_dir=os.path.basename(os.path.normpath(config.cache_dir)),
        device=str(backbone.device),
        dtype=dtype_name(backbone.dtype),
    )
    record = {
        "output": out_path.name,
        "video": os.path.basename(str(video)),
        "prompt": prompt,
        "settings": settings_record,
        "seed": config.seed,
        "model": public_model_name(config.model),
        "device": str(backbone.device),
        "dtype": dtype_name(backbone.dtype),
        "frames": len(frames),
        "size": list(frames[0].size),
        "fps": config.fps,
        "inversion_from_cache": from_cache,
        "unet_calls": unet_calls,
        "memory": memory.to_dict(),
        "seconds": seconds,
        "notes": notes,
        "versions": versions(),
    }
    json_path = out_path.with_suffix(".json")
    try:
        write_json_atomic(json_path, record, overwrite=overwrite)
    except BaseException as exc:
        out_path.unlink(missing_ok=True)  # no video without its record (the video was published by us just now)
        if isinstance(exc, FileExistsError):
            raise OutputError(taken) from None
        raise
    return EditResult(
        video_path=out_path,
        json_path=json_path,
        inversion_from_cache=from_cache,
        unet_calls=unet_calls,
        seconds=seconds,
        notes=notes,
        frames=len(frames),
        size=frames[0].size,
        fps=config.fps,
        memory=memory.to_dict(),
        latents=latents.detach().cpu(),
    )


def versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {
        "anyv2v": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def write_json_atomic(path: Path, data: dict, overwrite: bool = True) -> None:
    """Strict JSON (NaN or Infinity raise ValueError rather than write what JSON readers reject)."""
    text = json.dumps(data, indent=2, allow_nan=False)
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w") as handle:
        handle.write(text)
