"""The app's job layer, without Gradio: server settings, request checks, the prepared-clip cache, the GPU slot,
first-frame and video jobs with progress and cancel, output retention, the start-up checks and time estimates.

`app.py` lays out the page and wires events to an `EditService`; tests call this module directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image, UnidentifiedImageError

from .config import DEFAULT_MODEL, PRESETS, EditConfig, default_cache_dir, preset_config
from .errors import AnyV2VError, CancelledError, ConfigError, OutOfMemoryError, VideoError
from .files import PART_SUFFIX, unique_path
from .pipeline import BACKBONES, EditResult, PreparedClip, prepare_clip, run_edit
from .video import MAX_SOURCE_PIXELS, write_video

if TYPE_CHECKING:
    from editors.base import Editor, EditorInput

try:  # ZeroGPU on Hugging Face Spaces: GPU functions must be decorated with spaces.GPU.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

logger = logging.getLogger("anyv2v.app")
T = TypeVar("T")

# Relative cost of one sampling UNet call (batch 3: source + 2 guidance branches) vs one inversion call (batch 1).
SAMPLING_COST = 3.0
MAX_SEED = 2**32 - 1


# ---------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------


def _env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _env_number(env: Mapping[str, str], name: str, default: float, kind: type = int) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} must be a {'whole number' if kind is int else 'number'}.") from None
    if not math.isfinite(value):
        raise SystemExit(f"error: {name}={raw!r} must be a finite number.")
    return value


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """ANYV2V_AUTH as (user, password) for Gradio's login page; None when unset. The password may hold ':'."""
    value = (value or "").strip()
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise SystemExit("error: ANYV2V_AUTH must look like user:password (both parts non-empty).")
    return user.strip(), password


@dataclass
class AppSettings:
    """Server-side settings of the app (not per request): models, device, limits, folders and retention."""

    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str | None = None
    cpu_offload: bool = False
    cache_dir: str = field(default_factory=default_cache_dir)
    cache_max_gb: float = 20.0
    output_dir: str = "outputs"
    preset: str = "fast"  # the reference's hosted demo: 100 inversion steps; "paper" uses 500
    max_frames: int = 128
    max_size: int = 1024
    max_upload_mb: int = 200
    queue_size: int = 16
    gpu_duration: int = 300  # seconds a ZeroGPU call may take
    preload: bool = False
    # Memory for prepared clips (working-size frames only), shared by every visitor.
    clip_cache_mb: int = 512
    # Outputs, previews and candidates older than this, or beyond this total (oldest first), are deleted.
    keep_hours: float = 24.0
    output_max_gb: float = 5.0
    auth: tuple[str, str] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "AppSettings":
        """Settings from ANYV2V_* environment variables (see README.md); unset ones keep their defaults."""
        env = os.environ if env is None else env
        base = cls()
        return cls(
            model=env.get("ANYV2V_MODEL", "").strip() or DEFAULT_MODEL,
            device=env.get("ANYV2V_DEVICE", "").strip() or None,
            dtype=env.get("ANYV2V_DTYPE", "").strip() or None,
            cpu_offload=_env_bool(env.get("ANYV2V_CPU_OFFLOAD")),
            cache_dir=env.get("ANYV2V_CACHE_DIR", "").strip() or base.cache_dir,
            cache_max_gb=_env_number(env, "ANYV2V_CACHE_MAX_GB", base.cache_max_gb, float),
            output_dir=env.get("ANYV2V_OUTPUT_DIR", "").strip() or base.output_dir,
            preset=env.get("ANYV2V_PRESET", "").strip() or base.preset,
            max_frames=_env_number(env, "ANYV2V_MAX_FRAMES", base.max_frames),
            max_size=_env_number(env, "ANYV2V_MAX_SIZE", base.max_size),
            max_upload_mb=_env_number(env, "ANYV2V_MAX_UPLOAD_MB", base.max_upload_mb),
            queue_size=_env_number(env, "ANYV2V_QUEUE_SIZE", base.queue_size),
            gpu_duration=_env_number(env, "ANYV2V_GPU_DURATION", base.gpu_duration),
            preload=_env_bool(env.get("ANYV2V_PRELOAD")),
            clip_cache_mb=_env_number(env, "ANYV2V_CLIP_CACHE_MB", base.clip_cache_mb),
            keep_hours=_env_number(env, "ANYV2V_KEEP_HOURS", base.keep_hours, float),
            output_max_gb=_env_number(env, "ANYV2V_OUTPUT_MAX_GB", base.output_max_gb, float),
            auth=parse_auth(env.get("ANYV2V_AUTH")),
        )

    def replace(self, **changes: Any) -> "AppSettings":
        return dataclasses.replace(self, **changes)

    def check(self) -> "AppSettings":
        """Refuse nonsensical server settings at startup rather than on the first click."""
        if self.preset not in PRESETS:
            raise SystemExit(f"error: ANYV2V_PRESET={self.preset!r} is not one of {', '.join(PRESETS)}.")
        if not 2 <= self.max_frames <= 512:
            raise SystemExit(f"error: ANYV2V_MAX_FRAMES={self.max_frames} must be between 2 and 512.")
        if self.max_size < 64:
            raise SystemExit(f"error: ANYV2V_MAX_SIZE={self.max_size} must be at least 64.")
        if self.max_upload_mb < 1 or self.queue_size < 1:
            raise SystemExit("error: the upload limit and the queue size must be at least 1.")
        if self.clip_cache_mb < 0 or self.keep_hours <= 0 or self.output_max_gb <= 0:
            raise SystemExit(
                "error: ANYV2V_CLIP_CACHE_MB must be 0 or more; ANYV2V_KEEP_HOURS and ANYV2V_OUTPUT_MAX_GB above 0."
            )
        if self.device:
            import torch

            try:
                kind = torch.device(self.device).type
            except RuntimeError:
                raise SystemExit(f"error: ANYV2V_DEVICE={self.device!r} is not a device; use cpu or cuda.") from None
            if kind == "cuda" and not torch.cuda.is_available():
                raise SystemExit(f"error: ANYV2V_DEVICE={self.device!r} but this machine has no CUDA GPU; use cpu.")
        try:  # the engine's own checks for device/dtype names, so a typo fails at startup
            self.base_config().validate()
        except AnyV2VError as exc:
            raise SystemExit(f"error: {exc}") from None
        return self

    def base_config(self) -> EditConfig:
        """The preset's EditConfig with this server's model, device and cache; requests change the rest."""
        return preset_config(self.preset).replace(
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            cpu_offload=self.cpu_offload,
            cache_dir=self.cache_dir,
            cache_max_gb=self.cache_max_gb,
        )

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def device_name(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------------------
# Request values -> engine settings
# ---------------------------------------------------------------------------------------------------------


def _number(value: Any, default: float, name: str) -> float:
    """A widget/API number (None or blank means the default); ConfigError for text that is not a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")
    return number


def whole_number(value: Any, default: int, name: str) -> int:
    number = _number(value, default, name)
    if abs(number - round(number)) > 1e-6:
        raise ConfigError(f"{name} must be a whole number, got {value!r}.")
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
) -> EditConfig:
    """The validated EditConfig for one request: page/API values over the server's base config.

    None (or a blank) keeps the base value, so API callers may leave any optional setting out. Raises
    ConfigError with one line naming the setting to change.
    """
    base = settings.base_config()
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


def preset_values(name: str) -> dict[str, int]:
    """Steps and inversion steps of an engine preset."""
    config = preset_config(name)
    return {"steps": config.steps, "inversion_steps": config.inversion_steps}


# ---------------------------------------------------------------------------------------------------------
# Presets by intent and steps that cannot be wrong
# ---------------------------------------------------------------------------------------------------------

# The four injection settings by what the user wants, from the paper's defaults and the reference's tuned
# examples (shared/data/demo/manifest.json): new objects or shapes ("party hat", "Darth Vader": 0.1/0.1/1.0),
# the paper's defaults (0.2/0.2/0.5), and looks that keep every shape ("robot", "Van Gogh": 1.0/1.0/1.0).
CHANGE_PRESETS: dict[str, dict[str, float]] = {
    "subtle": {"tau_conv": 1.0, "tau_sa": 1.0, "tau_ta": 1.0, "start_index": 0},
    "default": {"tau_conv": 0.2, "tau_sa": 0.2, "tau_ta": 0.5, "start_index": 0},
    "strong": {"tau_conv": 0.1, "tau_sa": 0.1, "tau_ta": 1.0, "start_index": 0},
}
CHANGE_PRESET_LABELS = {
    "subtle": "Subtle: keep every shape (colours, style, texture)",
    "default": "Default (the paper's settings)",
    "strong": "Strong: new or reshaped objects, same motion",
    "custom": "Custom",
}


def change_preset_of(tau_conv: Any, tau_sa: Any, tau_ta: Any, start_index: Any) -> str:
    """The intent preset these four values match, or "custom" (so the preset label follows the sliders)."""
    try:
        given = {"tau_conv": float(tau_conv), "tau_sa": float(tau_sa), "tau_ta": float(tau_ta),
                 "start_index": int(start_index)}
    except (TypeError, ValueError):
        return "custom"
    for name, values in CHANGE_PRESETS.items():
        if all(abs(given[key] - value) < 1e-6 for key, value in values.items()):
            return name
    return "custom"


@functools.lru_cache(maxsize=1)
def scheduler_config(model: str) -> dict:
    """The model's scheduler config; I2VGen-XL's own when the model cannot be reached (same timestep grid)."""
    from .backbone import load_scheduler_config
    from .tiny import I2VGEN_XL_SCHEDULER

    try:
        return load_scheduler_config(model)
    except AnyV2VError:
        return dict(I2VGEN_XL_SCHEDULER)


@functools.lru_cache(maxsize=64)
def _valid_inversion_steps(config_json: str, steps: int) -> tuple[int, ...]:
    from .schedule import compatible_inversion_steps

    return tuple(compatible_inversion_steps(json.loads(config_json), steps))


def valid_inversion_steps(config: dict, steps: int) -> list[int]:
    """Every inversion step count that serves a `steps`-step edit (its timesteps contain each sampling one)."""
    return list(_valid_inversion_steps(json.dumps(config, sort_keys=True, default=str), int(steps)))


def derive_inversion_steps(config: dict, steps: int, wanted: int) -> int:
    """The valid inversion step count closest to `wanted` (the preset's), preferring the larger on a tie."""
    valid = valid_inversion_steps(config, steps)
    if not valid:
        raise ConfigError(f"no inversion step count serves {steps} sampling steps; choose another number of steps.")
    return min(valid, key=lambda n: (abs(n - wanted), -n))


# ---------------------------------------------------------------------------------------------------------
# Progress, estimates and summaries
# ---------------------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{max(round(seconds), 1):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds / 3600:.1f} h"


class EngineProgress:
    """Maps the engine's `progress(stage, done, total)` to one 0..1 bar with plain-language text and time left.

    Inversion calls are batch 1 and sampling calls batch 3, so sampling steps weigh more. The engine reports
    the stage "inversion_cached" when the inversion came from the cache.
    """

    def __init__(
        self,
        report: Callable[[float, str], None],
        inversion_steps: int,
        sampling_steps: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.report = report
        self.inversion_total = max(int(inversion_steps), 1)
        self.sampling_total = max(int(sampling_steps), 1)
        self.inversion_done = 0
        self.sampling_done = 0
        self.reused_inversion = False
        self.clock = clock
        self._started: float | None = None  # when the first UNet step was reported (after loading)
        self._fraction_at_start = 0.0

    def _fraction(self) -> float:
        inversion_weight = 0.0 if self.reused_inversion else float(self.inversion_total)
        total = inversion_weight + SAMPLING_COST * self.sampling_total
        done = (0.0 if self.reused_inversion else self.inversion_done) + SAMPLING_COST * self.sampling_done
        return min(max(done / total, 0.0), 1.0) if total else 0.0

    def time_left(self) -> float | None:
        """Seconds left at the pace measured since the first step; None until there is a pace."""
        fraction = self._fraction()
        if self._started is None or fraction <= self._fraction_at_start:
            return None
        elapsed = self.clock() - self._started
        return elapsed * (1.0 - fraction) / (fraction - self._fraction_at_start)

    def start(self, loading: bool) -> None:
        """Report the start; "loading the model" only when it is not loaded yet."""
        if loading:
            self.report(0.0, "Loading the model (only the first edit loads it; it then stays loaded)")
        else:
            self.report(0.0, "Starting the edit")

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "inversion_cached":
            self.reused_inversion = True
            text = "Reused the cached inversion of this clip: skipping straight to sampling"
        elif stage == "inversion":
            self.inversion_total, self.inversion_done = max(total, 1), done
            text = f"Step 1 of 2: inverting the source video, step {done} of {total}"
        elif stage == "sampling":
            self.sampling_total, self.sampling_done = max(total, 1), done
            text = f"Step 2 of 2: making the edited video, step {done} of {total}"
            if done >= total:
                text = "Decoding the frames and writing the video"
        else:
            text = f"{stage}: {done} of {total}"
        if self._started is None and stage in ("inversion", "sampling"):
            self._started = self.clock()
            self._fraction_at_start = self._fraction()
        left = self.time_left()
        if left is not None and self._fraction() < 1.0:
            text += f" (about {format_duration(left)} left)"
        self.report(self._fraction(), text)


# Sustained UNet throughput (FLOP/s) before anything was measured in this process: fp16 on a data-centre GPU,
# fp32 on a few CPU cores. The first finished edit replaces it with the measured pace.
DEFAULT_THROUGHPUT = {"cuda": 60e12, "mps": 5e12, "cpu": 1e11}


@functools.lru_cache(maxsize=32)
class EditEstimator:
    """How long an edit will take: its UNet FLOPs (`anyv2v.bench`) over a per-device throughput, refined by the
    last measured edit in this process."""

    def __init__(self) -> None:
        self.measured: dict[str, float] = {}  # device kind -> FLOP/s of the last edit
        self._lock = threading.Lock()

    def throughput(self, device: str) -> float:
        kind = device.split(":")[0]
        with self._lock:
            return self.measured.get(kind, DEFAULT_THROUGHPUT.get(kind, DEFAULT_THROUGHPUT["cpu"]))

    def estimate(self, config: EditConfig, frames: int, size: tuple[int, int], device: str,
                 cached_inversion: bool = False) -> float | None:
        """Seconds of UNet work for this edit on `device`; None when the model's config cannot be read."""
        from .bench import edit_flops, model_flops_per_call, predicted_unet_calls

        try:
            per_call = model_flops_per_call(config.model, int(frames), int(size[1]), int(size[0]))
        except Exception as exc:  # noqa: BLE001 - an estimate is optional; the edit itself reports real errors
            logger.info("no time estimate: %s", exc)
            return None
        # The engine's own call plan (the source branch leaves the batch after the last injected step).
        flops = edit_flops(predicted_unet_calls(config, cached_inversion), per_call)["total"]
        return flops / self.throughput(device)

    def record(self, config: EditConfig, result: EditResult, device: str) -> None:
        """Refine the throughput with a finished edit (its UNet stages only)."""
        from .bench import edit_flops, model_flops_per_call

        seconds = (result.seconds or {}).get("inversion", 0.0) + (result.seconds or {}).get("sampling", 0.0)
        try:
            per_call = model_flops_per_call(config.model, result.frames, result.size[1], result.size[0])
        except Exception:  # noqa: BLE001
            return
        flops = edit_flops(result.unet_calls, per_call)["total"]
        if seconds > 0.05 and flops > 0:
            with self._lock:
                self.measured[device.split(":")[0]] = flops / seconds


def edit_status(result: EditResult) -> str:
    """Markdown summary of a finished edit: what was made, how long it took, whether the inversion was reused."""
    seconds = result.seconds or {}
    total = sum(seconds.values())
    width, height = result.size
    lines = [f"**Done in {format_duration(total)}**: {result.frames} frames, {width}×{height}, {result.fps} fps."]
    if result.inversion_from_cache:
        lines.append(
            "Reused the cached inversion of this clip (same video, clip settings, seed and inversion steps), "
            "so only sampling ran."
        )
    else:
        lines.append(
            f"Inverted the source video in {seconds.get('inversion', 0.0):.1f} s; the next edit of this clip with "
            "the same clip settings, seed and inversion steps will reuse it."
        )
    if seconds.get("load", 0.0) >= 1.0:
        lines.append(f"Loaded the model in {seconds['load']:.1f} s; it stays loaded for the next edit.")
    for note in result.notes:
        lines.append(f"Note: {note}.")
    return "\n\n".join(lines)


def clip_summary(prepared: PreparedClip, config: EditConfig) -> str:
    clip = prepared.clip
    width, height = prepared.size
    src_w, src_h = clip.source_size
    how = "center-cropped" if config.resize_mode == "crop" else "resized keeping the aspect ratio"
    audio = "has audio (tick 'Keep the source audio' to keep it)" if clip.has_audio else "has no audio"
    text = (
        f"**Prepared clip:** {len(prepared.frames)} frames at {config.fps} fps "
        f"({len(prepared.frames) / config.fps:.1f} s from {clip.start_time:g} s), {width}×{height} "
        f"({how} from {src_w}×{src_h}). The source {audio}."
    )
    for note in clip.notes:
        text += f"\n\nNote: {note}."
    return text


# ---------------------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    video: str
    edited_frame: str
    prompt: str
    tau_conv: float
    tau_sa: float
    tau_ta: float
    start_index: int
    label: str


def list_examples(demo_dir: str | os.PathLike) -> list[Example]:
    """Examples from the demo manifest (clip, edited first frame, prompt, tau and T'); [] when it is missing."""
    demo_dir = Path(demo_dir)
    manifest_path = demo_dir / "manifest.json"
    if not manifest_path.is_file():
        return []
    manifest = json.loads(manifest_path.read_text())
    videos = manifest.get("videos", {})
    examples: list[Example] = []
    for edit in manifest.get("edits", []):
        video = videos.get(edit.get("video"), {})
        video_path = demo_dir / video.get("file", "")
        frame_path = demo_dir / edit.get("edited_frame", "")
        if not (video_path.is_file() and frame_path.is_file()):
            continue  # a partial copy of the assets: skip what is not there
        examples.append(
            Example(
                video=str(video_path),
                edited_frame=str(frame_path),
                prompt=edit["prompt"],
                tau_conv=float(edit.get("tau_conv", 0.2)),
                tau_sa=float(edit.get("tau_sa", 0.2)),
                tau_ta=float(edit.get("tau_ta", 0.5)),
                start_index=int(edit.get("start_index", 0)),
                label=f"{edit['video'].replace('_', ' ')}: {edit.get('instruction', edit['prompt'])}",
            )
        )
    return examples


def example_clip_settings(settings: AppSettings) -> dict[str, int]:
    """Clip and step settings an example sets: the model's own on a GPU, small ones that finish on a CPU."""
    base = settings.base_config()
    if settings.device_name.startswith("cuda"):
        values = {"frames": 16, "fps": 8, "width": 512, "height": 512, "steps": base.steps}
    else:
        values = {"frames": 8, "fps": 8, "width": 256, "height": 256, "steps": 10}
    values["frames"] = min(values["frames"], settings.max_frames)
    values["width"] = min(values["width"], settings.max_size)
    values["height"] = min(values["height"], settings.max_size)
    return values


# ---------------------------------------------------------------------------------------------------------
# Errors: one actionable line for the page, the traceback only in the server log
# ---------------------------------------------------------------------------------------------------------


def strip_paths(message: str, paths: Sequence[str | None]) -> str:
    """Replace server paths (upload folders) with file names: users know their file by its name."""
    for path in sorted((str(p) for p in paths if p), key=len, reverse=True):
        message = message.replace(path, os.path.basename(path))
    return message


def user_message(exc: BaseException, action: str, paths: Sequence[str | None] = ()) -> tuple[str, bool]:
    """(one-line message, expected) for `exc` raised while doing `action` (e.g. 'editing the video').

    Unexpected errors are logged with their traceback and get a generic message (expected=False).
    """
    if isinstance(exc, (OutOfMemoryError, MemoryError)):
        return (
            "Out of memory. Lower the number of frames or the size in step 1 (for example 16 frames at 512×512), "
            "or make fewer candidates, then try again.", True,
        )
    if isinstance(exc, CancelledError):
        return "Cancelled. Nothing was written.", True
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        logger.error("out of disk space while %s: %s", action, exc)
        return "The server is out of disk space, so nothing could be written. Try again later.", True
    if isinstance(exc, AnyV2VError):
        if getattr(exc, "operator", ""):  # an editor's details for the operator (paths, installs): the log only
            logger.warning("while %s: %s", action, exc.operator)
        text = " ".join(str(exc).split())
        first_word = text.split(" ", 1)[0]
        if "." not in first_word and "/" not in first_word:  # a sentence; a file name keeps its case
            text = text[:1].upper() + text[1:] if text else type(exc).__name__
        return strip_paths(text, paths), True
    logger.error("unexpected error while %s", action, exc_info=(type(exc), exc, exc.__traceback__))
    return (
        f"Something went wrong while {action} ({type(exc).__name__}). The details are in the server log. "
        "Try again; if it keeps failing, lower the frames or the size, or use another video.", False,
    )


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


# ---------------------------------------------------------------------------------------------------------
# GPU jobs: one at a time, cancellable between UNet steps, ZeroGPU-aware
# ---------------------------------------------------------------------------------------------------------

_GPU_LOCK = threading.Lock()


@contextmanager
def gpu_slot(stop: threading.Event) -> Iterator[None]:
    """Hold the process-wide GPU lock. Gradio frees a cancelled job's queue slot at once, while its thread
    finishes the current UNet step; the lock keeps the next job from overlapping it on the GPU."""
    while not _GPU_LOCK.acquire(timeout=0.2):
        if stop.is_set():
            raise CancelledError("cancelled before it started.")
    try:
        yield
    finally:
        _GPU_LOCK.release()


def zero_gpu(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate with spaces.GPU on ZeroGPU Spaces (the package is present there) and leave as is elsewhere."""
    if spaces is None:
        return fn
    duration = int(os.environ.get("ANYV2V_GPU_DURATION", "300") or 300)
    return spaces.GPU(duration=duration)(fn)


@zero_gpu
def gpu_edit_video(
    video: str,
    edited_frame: str,
    prompt: str,
    config: EditConfig,
    output_dir: str,
    prepared: PreparedClip | None,
    progress: Callable[[str, int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> EditResult:
    return run_edit(
        video, edited_frame, prompt, config, output_dir=output_dir, progress=progress, should_stop=should_stop,
        prepared=prepared,
    )


@zero_gpu
def gpu_edit_frame(
    editor_name: str,
    frame: Image.Image,
    values: dict[str, Any],
    candidates: int,
    progress: Callable[[float, str], None] | None,
    device: str | None,
    dtype: str | None,
) -> list[Image.Image]:
    import editors

    return editors.get_editor(editor_name).edit(
        frame, values, candidates=candidates, progress=progress, device=device, dtype=dtype
    )


async def run_cancellable(job: Callable[[threading.Event], T], stop: threading.Event | None = None) -> T:
    """Run a blocking job in a worker thread; when the event is cancelled (client `job.cancel()`), or `stop` is
    set (the page's Cancel button), the job's stop flag makes the engine stop at its next step."""
    stop = stop if stop is not None else threading.Event()
    if stop.is_set():
        raise CancelledError("cancelled before it started.")
    try:
        # asyncio.to_thread copies the context, so a progress tracker keeps working inside the thread.
        return await asyncio.to_thread(job, stop)
    except asyncio.CancelledError:
        logger.info("job cancelled; it stops at its next step")
        stop.set()
        raise


# ---------------------------------------------------------------------------------------------------------
# Prepared clips (bounded in bytes) and files on disk (retention)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PreparedEntry:
    prepared: PreparedClip
    config: EditConfig
    summary: str
    preview_path: str | None = None  # the page's preview mp4 and first-frame PNG (the API writes none)
    first_frame_path: str | None = None

    @property
    def nbytes(self) -> int:
        """Pixel bytes of the working-size frames (what the cache holds)."""
        return sum(len(frame.getbands()) * frame.width * frame.height for frame in self.prepared.frames)


class ClipCache:
    """The most recently used prepared clips, bounded by the bytes of their frames (least recent out first).

    A clip larger than the whole budget is used for its request and not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, PreparedEntry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> PreparedEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: PreparedEntry) -> None:
        with self._lock:
            self._entries.pop(key, None)
            if entry.nbytes > self.max_bytes:
                return
            self._entries[key] = entry
            while sum(e.nbytes for e in self._entries.values()) > self.max_bytes:
                self._entries.popitem(last=False)


def _files(directory: Path) -> list[tuple[Path, os.stat_result]]:
    found = []
    if not directory.is_dir():
        return found
    for path in directory.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                found.append((path, path.stat()))
        except OSError:
            continue
    return found


def sweep_stale(directory: str | os.PathLike, min_age_s: float = 0.0, now: float | None = None) -> list[Path]:
    """Delete `.part` files and empty files that a failed or killed write left behind (older than `min_age_s`)."""
    now = time.time() if now is None else now
    removed = []
    for path, stat in _files(Path(directory)):
        if (path.name.endswith(PART_SUFFIX) or stat.st_size == 0) and now - stat.st_mtime >= min_age_s:
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def prune_outputs(
    directory: str | os.PathLike, max_age_s: float, max_bytes: int, keep: Sequence[str | os.PathLike] = (),
    now: float | None = None,
) -> list[Path]:
    """Delete files older than `max_age_s`, then the oldest until the folder holds at most `max_bytes`.

    `keep` (the result just made) is never deleted. Returns the deleted paths.
    """
    now = time.time() if now is None else now
    keep_set = {os.path.realpath(p) for p in keep}
    files = sorted(_files(Path(directory)), key=lambda item: item[1].st_mtime)
    removed: list[Path] = []
    total = sum(stat.st_size for _, stat in files)
    for path, stat in files:
        if os.path.realpath(path) in keep_set or path.name.endswith(PART_SUFFIX):
            continue
        if now - stat.st_mtime > max_age_s or total > max_bytes:
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
            total -= stat.st_size
    return removed


# ---------------------------------------------------------------------------------------------------------
# The model source, checked at start
# ---------------------------------------------------------------------------------------------------------


def check_model_source(model: str, timeout: float = 5.0) -> str | None:
    """None when the video model can be loaded from here; else what is wrong and what to do (one paragraph)."""
    from .backbone import looks_like_path

    demo = ("For a quick offline try with tiny random models (noise output), see 'Offline demo' in the README: "
            "`python -m anyv2v make-tiny-model /tmp/tiny` and `ANYV2V_MODEL=/tmp/tiny`.")
    if looks_like_path(model):
        folder = Path(os.path.expanduser(model))
        if not folder.is_dir():
            return f"The model folder {folder.name} does not exist on this server. Set ANYV2V_MODEL to a diffusers-format I2VGen-XL folder or a hub id. {demo}"
        if not (folder / "model_index.json").is_file() and not (folder / "unet").is_dir():
            return f"The model folder {folder.name} is not a diffusers-format I2VGen-XL (no model_index.json or unet/). {demo}"
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "model_index.json"), str):
            return None  # downloaded before: loads offline too
    except Exception:  # noqa: BLE001 - an unusual cache layout: fall through to the network check
        pass
    if _env_bool(os.environ.get("HF_HUB_OFFLINE")):
        return (f"The video model {model} is not downloaded and HF_HUB_OFFLINE is set, so the first edit would fail. "
                f"Unset HF_HUB_OFFLINE (with network access it downloads once), or set ANYV2V_MODEL to "
                f"a local folder. {demo}")
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(model, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure here means the first edit cannot download the model
        return (f"The video model {model} is not downloaded and the Hugging Face Hub cannot be reached "
                f"({type(exc).__name__}). Check the network (or a proxy), or set ANYV2V_MODEL to a local folder. {demo}")
    return None


# ---------------------------------------------------------------------------------------------------------
# The API's first-frame parameters: the union of every editor's inputs
# ---------------------------------------------------------------------------------------------------------

# /edit_first_frame's own parameters; an editor input with one of these names is renamed "<editor>_<name>".
FIRST_FRAME_API_PARAMS = ("video", "editor", "candidates", "width", "height", "resize_mode", "fps", "start_time")


@dataclass
class ApiEditorParam:
    """One /edit_first_frame parameter standing for the same-named input of one or more editors."""

    name: str
    spec: EditorInput
    default: Any
    targets: dict[str, str]  # editor name -> that editor's input name


def api_editor_params(available: Mapping[str, "Editor"]) -> list[ApiEditorParam]:
    """The union of every editor's inputs by name; a clash of kinds or with the endpoint's own parameters gets
    the name `<editor>_<input>`, and a shared default is None when the editors disagree."""
    params: dict[str, ApiEditorParam] = {}
    for editor in available.values():
        for spec in editor.inputs:
            name = spec.name
            existing = params.get(name)
            if name in FIRST_FRAME_API_PARAMS or (existing is not None and existing.spec.kind != spec.kind):
                name = f"{editor.name}_{spec.name}"
                existing = params.get(name)
            if existing is None:
                params[name] = ApiEditorParam(name, spec, spec.default, {editor.name: spec.name})
            else:
                existing.targets[editor.name] = spec.name
                if existing.default != spec.default:
                    existing.default = None
    return list(params.values())


def editor_values(editor: "Editor", params: Sequence[ApiEditorParam], given: Mapping[str, Any]) -> dict[str, Any]:
    return {p.targets[editor.name]: given.get(p.name) for p in params if editor.name in p.targets}


# ---------------------------------------------------------------------------------------------------------
# The service: everything the page and the API call
# ---------------------------------------------------------------------------------------------------------


class EditService:
    """Holds the server settings, the prepared clips and the output folder; runs the jobs."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.output_dir = Path(settings.output_dir).expanduser().resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.clips = ClipCache(settings.clip_cache_mb * 2**20)
        self.estimator = EditEstimator()
        self._loaded: set[tuple] = set()  # models this process has loaded (BACKBONES keeps the latest)
        self._stops: dict[tuple[str, str], threading.Event] = {}  # (session, kind) -> stop flag of its latest job
        self._stops_lock = threading.Lock()
        removed = sweep_stale(self.output_dir)
        if removed:
            logger.info("removed %d stale partial or empty files from %s", len(removed), self.output_dir)
        self.prune()

    # ---- cancel from the page ----------------------------------------------------------------------------

    def new_job(self, session: str, kind: str) -> threading.Event:
        """A fresh stop flag for the session's next job of this kind (set at the click, so a job cancelled
        while it waits in the queue ends as soon as it starts)."""
        with self._stops_lock:
            if len(self._stops) > 1000:  # forget finished sessions' flags
                self._stops = {k: v for k, v in self._stops.items() if not v.is_set()}
            stop = self._stops[(session, kind)] = threading.Event()
            return stop

    def job_stop(self, session: str, kind: str) -> threading.Event:
        with self._stops_lock:
            return self._stops.setdefault((session, kind), threading.Event())

    def cancel(self, session: str) -> bool:
        """Ask every job of the session to stop at its next step; whether there was one to ask."""
        with self._stops_lock:
            flags = [flag for (owner, _), flag in self._stops.items() if owner == session and not flag.is_set()]
        for flag in flags:
            flag.set()
        return bool(flags)

    # ---- files ------------------------------------------------------------------------------------------

    def prune(self, keep: Sequence[str | os.PathLike] = ()) -> list[Path]:
        return prune_outputs(
            self.output_dir, self.settings.keep_hours * 3600, int(self.settings.output_max_gb * 2**30), keep
        )

    def check_upload(self, path: str | None, what: str = "video") -> str:
        if not path:
            raise VideoError(f"no {what} was given; upload one first.")
        if not os.path.isfile(path):
            raise VideoError(f"the uploaded {what} is missing on the server; upload it again.")
        size = os.path.getsize(path)
        if size > self.settings.max_upload_bytes:
            raise VideoError(
                f"{os.path.basename(path)} is {size / 2**20:.0f} MB; this app accepts up to "
                f"{self.settings.max_upload_mb} MB. Trim or compress it first."
            )
        return path

    # ---- step 1: the clip -------------------------------------------------------------------------------

    @staticmethod
    def clip_key(video: str, config: EditConfig) -> tuple:
        stat = os.stat(video)
        return (
            os.path.realpath(video), stat.st_size, stat.st_mtime_ns, config.frames, config.fps, config.start_time,
            config.width, config.height, config.resize_mode,
        )

    def prepare(self, video: str, config: EditConfig, previews: bool = False) -> PreparedEntry:
        """The clip at the working size (cached); with `previews`, also a preview mp4 and the first frame as PNG
        (the page shows them; API calls write none)."""
        self.check_upload(video)
        key = self.clip_key(video, config)
        entry = self.clips.get(key)
        if entry is None:
            prepared = prepare_clip(video, config, max_frames=self.settings.max_frames)
            entry = PreparedEntry(prepared, config, clip_summary(prepared, config))
        if previews and (entry.preview_path is None or not os.path.isfile(entry.preview_path)):
            clips_dir = self.output_dir / "clips"
            preview = write_video(entry.prepared.frames, unique_path(clips_dir, "clip", ".mp4"), config.fps)
            first_frame = unique_path(clips_dir, "first-frame", ".png")
            entry.prepared.first_frame.save(first_frame, format="PNG")  # lossless: the pixels the engine uses
            entry.preview_path, entry.first_frame_path = str(preview), str(first_frame)
        self.clips.put(key, entry)
        return entry

    def estimate(self, video: str | None, config: EditConfig) -> str:
        """Plain-language estimate of the edit's duration on this server (before it starts)."""
        size = (config.width, config.height)
        frames = config.frames or 16
        entry = self.clips.get(self.clip_key(video, config)) if video and os.path.isfile(video) else None
        if entry is not None:
            size, frames = entry.prepared.size, len(entry.prepared.frames)
        device = self.settings.device_name
        full = self.estimator.estimate(config, frames, size, device)
        if full is None:
            return ""
        cached = self.estimator.estimate(config, frames, size, device, cached_inversion=True) or 0.0
        text = (f"Estimated time on this server ({device}): about **{format_duration(full)}** for the first edit of "
                f"this clip, about {format_duration(cached)} for later edits of it (they reuse the inversion).")
        if not self.model_loaded():
            text += " The first edit also loads the model."
        return text

    # ---- step 2: the first frame ------------------------------------------------------------------------

    def edit_frame(
        self,
        editor_name: str,
        frame: Image.Image,
        values: dict[str, Any],
        candidates: int,
        progress: Callable[[float, str], None] | None,
        stop: threading.Event,
    ) -> list[str]:
        """Run an editor on the prepared first frame; the candidates as PNG paths in the output folder."""
        import editors

        editor = editors.get_editor(editor_name)
        reason = editor.unavailable_reason()
        if reason:
            raise AnyV2VError(reason)
        count = int(candidates) if editor.supports_candidates else 1

        def report(fraction: float, message: str) -> None:
            if stop.is_set():  # editors stop when their progress callback raises
                raise CancelledError("the first-frame edit was cancelled.")
            if progress is not None:
                progress(fraction, message)

        with gpu_slot(stop):
            images = gpu_edit_frame(
                editor.name, frame, values, count, report if spaces is None else None,
                self.settings.device, self.settings.dtype,
            )
        frames_dir = self.output_dir / "frames"
        paths = []
        for image in images:
            path = unique_path(frames_dir, f"first-frame-{editor.name}", ".png")
            image.save(path, format="PNG")
            paths.append(str(path))
        self.prune(keep=paths)
        return paths

    def frame_click_values(self, editor_name: str, frame: Image.Image, x: float, y: float) -> dict[str, Any]:
        """An editor's input values for a click at (x, y) on the first frame (e.g. InstantID's face number)."""
        import editors

        editor = editors.get_editor(editor_name)
        reason = editor.unavailable_reason()
        if reason:
            raise AnyV2VError(reason)
        return editor.values_at(frame, x, y)

    # ---- step 3: the video ------------------------------------------------------------------------------

    def _model_key(self) -> tuple:
        s = self.settings
        return (s.model, s.device, s.dtype, s.cpu_offload)

    def model_loaded(self) -> bool:
        return self._model_key() in self._loaded

    def preload(self) -> None:
        BACKBONES.get(self.settings.model, self.settings.device, self.settings.dtype, self.settings.cpu_offload)
        self._loaded = {self._model_key()}

    def edit_video(
        self,
        video: str,
        edited_frame: str,
        prompt: str,
        config: EditConfig,
        progress: Callable[[float, str], None] | None,
        stop: threading.Event,
    ) -> EditResult:
        self.check_upload(video)
        self.check_upload(edited_frame, "edited first frame")
        check_image_file(edited_frame, "edited first frame")  # a bad image fails here, before any model work
        entry = self.prepare(video, config)  # the app's frame limit applies while decoding
        tracker = EngineProgress(
            progress or (lambda fraction, text: None), config.inversion_steps, config.steps - config.start_index
        )
        with gpu_slot(stop):
            tracker.start(loading=not self.model_loaded())
            logger.info("video edit started: %d frames %dx%d, %d steps, %d inversion steps",
                        len(entry.prepared.frames), *entry.prepared.size, config.steps, config.inversion_steps)
            on_zero_gpu = spaces is not None  # callbacks cannot cross into the ZeroGPU worker process
            try:
                result = gpu_edit_video(
                    video, edited_frame, prompt, config, str(self.output_dir), entry.prepared,
                    None if on_zero_gpu else tracker,
                    None if on_zero_gpu else stop.is_set,
                )
            except CancelledError:
                logger.info("video edit stopped after a cancel")
                raise
        self._loaded = {self._model_key()}
        self.estimator.record(config, result, self.settings.device_name)
        logger.info("video edit done: %s (inversion %s)", result.video_path.name,
                    "reused" if result.inversion_from_cache else "computed")
        self.prune(keep=[result.video_path, result.json_path])
        return result
