"""AnyV2V in the browser: upload a clip, edit its first frame, carry the edit through the video.

A thin Gradio Blocks UI over `anyv2v` (the engine) and `editors` (first-frame editors): this file turns widget
values into an `EditConfig`, calls `prepare_clip` / `run_edit` / `Editor.edit`, and turns their errors into
messages a non-programmer can act on. No model logic lives here.

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 7860 --share

Models come from environment variables (hub ids or local folders), so the app runs offline with tiny models:
ANYV2V_MODEL, ANYV2V_IP2P_MODEL, ANYV2V_VGG19; see `AppSettings.from_env` and README.md.
Public API (gradio_client): /edit_first_frame and /edit_video.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import html
import inspect
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
from typing import Any, TypeVar

import gradio as gr
import torch
from PIL import Image

import editors
from anyv2v.config import DEFAULT_MODEL, PRESETS, RESIZE_MODES, EditConfig, default_cache_dir, preset_config
from anyv2v.errors import AnyV2VError, CancelledError, ConfigError, OutOfMemoryError, VideoError
from anyv2v.pipeline import BACKBONES, EditResult, PreparedClip, prepare_clip, run_edit
from anyv2v.video import load_image, unique_path, write_video
from editors.base import MAX_CANDIDATES, Editor, EditorInput

try:  # ZeroGPU on Hugging Face Spaces: GPU functions must be decorated with spaces.GPU.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

logger = logging.getLogger("anyv2v.app")

APP_DIR = Path(__file__).resolve().parent
ASSETS_DIR = APP_DIR / "assets"
DEMO_DIR = ASSETS_DIR / "demo"
T = TypeVar("T")

# Event concurrency group of everything that runs a model: one GPU job at a time, UI and API alike.
GPU_CONCURRENCY_ID = "gpu"
# Relative cost of one sampling UNet call (batch 3: source + 2 guidance branches) vs one inversion call (batch 1),
# so the progress bar moves at a steady pace through both stages.
SAMPLING_COST = 3.0
RESIZE_CHOICES = [("Crop to the size (fill, center crop)", "crop"), ("Keep the aspect ratio (longest side = size)", "keep_aspect")]


# ---------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------


def _env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} must be a whole number.") from None


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} must be a number.") from None


@dataclass
class AppSettings:
    """Server-side settings of the app (not per request): models, device, limits and folders."""

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
            cache_max_gb=_env_float(env, "ANYV2V_CACHE_MAX_GB", base.cache_max_gb),
            output_dir=env.get("ANYV2V_OUTPUT_DIR", "").strip() or base.output_dir,
            preset=env.get("ANYV2V_PRESET", "").strip() or base.preset,
            max_frames=_env_int(env, "ANYV2V_MAX_FRAMES", base.max_frames),
            max_size=_env_int(env, "ANYV2V_MAX_SIZE", base.max_size),
            max_upload_mb=_env_int(env, "ANYV2V_MAX_UPLOAD_MB", base.max_upload_mb),
            queue_size=_env_int(env, "ANYV2V_QUEUE_SIZE", base.queue_size),
            gpu_duration=_env_int(env, "ANYV2V_GPU_DURATION", base.gpu_duration),
            preload=_env_bool(env.get("ANYV2V_PRELOAD")),
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
        # The engine's own checks for device/dtype names, so a typo fails at startup.
        self.base_config().validate()
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


# ---------------------------------------------------------------------------------------------------------
# Pure helpers: UI values -> engine settings, engine progress -> progress bar, results -> text
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


def _whole(value: Any, default: int, name: str) -> int:
    number = _number(value, default, name)
    if abs(number - round(number)) > 1e-6:
        raise ConfigError(f"{name} must be a whole number, got {value!r}.")
    return int(round(number))


def clip_frame_count(frames: int, fps: float, start_time: float, end_time: float | None, max_frames: int) -> int:
    """Frames to edit: the frame count, or the frames between start and end time when an end time is set.

    0 frames means "the whole clip" (the engine reads it; the app checks the limit once the count is known).
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
    """The validated EditConfig for one request: UI/API values over the server's base config.

    None (or a blank) keeps the base value, so API callers may leave any optional setting out. Raises
    ConfigError with one line naming the setting to change.
    """
    base = settings.base_config()
    fps_value = _whole(fps, base.fps, "fps")
    start = _number(start_time, base.start_time, "start time")
    end = _number(end_time, 0.0, "end time")
    width_value = _whole(width, base.width, "width")
    height_value = _whole(height, base.height, "height")
    for name, value in (("width", width_value), ("height", height_value)):
        if value > settings.max_size:
            raise ConfigError(f"{name} {value} is larger than this app allows ({settings.max_size}); lower the size.")
    config = base.replace(
        frames=clip_frame_count(
            _whole(frames, base.frames, "frames"), max(fps_value, 1), start, end or None, settings.max_frames
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
        start_index=_whole(start_index, base.start_index, "start index (T')"),
        steps=_whole(steps, base.steps, "steps"),
        inversion_steps=_whole(inversion_steps, base.inversion_steps, "inversion steps"),
        guidance=_number(guidance, base.guidance, "guidance"),
        negative_prompt=base.negative_prompt if negative_prompt is None else str(negative_prompt),
        seed=_whole(seed, base.seed, "seed"),
    )
    return config.validate()


def preset_values(name: str) -> dict[str, int]:
    """Steps and inversion steps of an engine preset (what the preset dropdown sets)."""
    config = preset_config(name)
    return {"steps": config.steps, "inversion_steps": config.inversion_steps}


class EngineProgress:
    """Maps the engine's `progress(stage, done, total)` to one 0..1 bar with plain-language text.

    Inversion calls are batch 1 and sampling calls batch 3, so sampling steps weigh more. The engine reports
    the stage "inversion_cached" when the inversion came from the cache.
    """

    def __init__(self, report: Callable[[float, str], None], inversion_steps: int, sampling_steps: int) -> None:
        self.report = report
        self.inversion_total = max(int(inversion_steps), 1)
        self.sampling_total = max(int(sampling_steps), 1)
        self.inversion_done = 0
        self.sampling_done = 0
        self.reused_inversion = False

    def _fraction(self) -> float:
        inversion_weight = 0.0 if self.reused_inversion else float(self.inversion_total)
        total = inversion_weight + SAMPLING_COST * self.sampling_total
        done = (0.0 if self.reused_inversion else self.inversion_done) + SAMPLING_COST * self.sampling_done
        return min(max(done / total, 0.0), 1.0) if total else 0.0

    def start(self) -> None:
        self.report(0.0, "Loading the model (only the first edit loads it; it then stays loaded)")

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "inversion_cached":
            self.reused_inversion = True
            text = "Reused the cached inversion of this clip: skipping straight to sampling"
        elif stage == "inversion":
            self.inversion_total, self.inversion_done = max(total, 1), done
            text = f"Step 1 of 2: inverting the source video (DDIM inversion), step {done} of {total}"
        elif stage == "sampling":
            self.sampling_total, self.sampling_done = max(total, 1), done
            text = f"Step 2 of 2: sampling the edited video, step {done} of {total}"
            if done >= total:
                text = "Decoding the frames and writing the video"
        else:
            text = f"{stage}: {done} of {total}"
        self.report(self._fraction(), text)


def edit_status(result: EditResult) -> str:
    """Markdown summary of a finished edit: what was made, how long it took, whether the inversion was reused."""
    seconds = result.seconds or {}
    total = sum(seconds.values())
    width, height = result.size
    lines = [f"**Done in {total:.1f} s**: {result.frames} frames, {width}×{height}, {result.fps} fps."]
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
    return (
        f"**Prepared clip:** {len(prepared.frames)} frames at {config.fps} fps "
        f"({len(prepared.frames) / config.fps:.1f} s from {clip.start_time:g} s), {width}×{height} "
        f"({how} from {src_w}×{src_h}). The source {audio}."
    )


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

    def row(self) -> list[Any]:
        return [self.video, self.edited_frame, self.prompt, self.tau_conv, self.tau_sa, self.tau_ta, self.start_index]


def list_examples(demo_dir: str | os.PathLike = DEMO_DIR) -> list[Example]:
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


# ---------------------------------------------------------------------------------------------------------
# Errors: one actionable line in the page, the traceback only in the server log
# ---------------------------------------------------------------------------------------------------------


def _strip_paths(message: str, paths: Sequence[str | None]) -> str:
    """Replace server paths (Gradio's upload folders) with file names: users know their file by its name."""
    for path in sorted((p for p in paths if p), key=len, reverse=True):
        message = message.replace(str(path), os.path.basename(str(path)))
    return message


def user_error(exc: BaseException, action: str, paths: Sequence[str | None] = ()) -> gr.Error:
    """The gr.Error to show for `exc` while doing `action` (e.g. 'editing the video')."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, (OutOfMemoryError, MemoryError)):
        message = (
            "Out of memory. Lower the number of frames or the size in step 1 (for example 16 frames at 512×512), "
            "or make fewer candidates, then try again."
        )
    elif isinstance(exc, CancelledError):
        message = "Cancelled. Nothing was written."
    elif isinstance(exc, AnyV2VError):
        text = " ".join(str(exc).split())
        message = text[:1].upper() + text[1:] if text else type(exc).__name__
    else:
        logger.error("unexpected error while %s", action, exc_info=(type(exc), exc, exc.__traceback__))
        message = (
            f"Something went wrong while {action} ({type(exc).__name__}). The details are in the server log. "
            "Try again; if it keeps failing, lower the frames or the size, or use another video."
        )
        return gr.Error(html.escape(message, quote=False), duration=None, title="Unexpected error", print_exception=False)
    # Escaped because the page renders error text as HTML (file names are user-controlled).
    return gr.Error(html.escape(_strip_paths(message, paths), quote=False), duration=None, print_exception=False)


@contextmanager
def reported(action: str, paths: Sequence[str | None] = ()) -> Iterator[None]:
    """Turn any exception inside into a gr.Error (never a traceback in the page)."""
    try:
        yield
    except (gr.Error, asyncio.CancelledError):
        raise
    except Exception as exc:  # noqa: BLE001 - every error must reach the user as one actionable line
        raise user_error(exc, action, paths) from None


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


def _zero_gpu(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate with spaces.GPU on ZeroGPU Spaces (the package is present there) and leave as is elsewhere."""
    if spaces is None:
        return fn
    duration = int(os.environ.get("ANYV2V_GPU_DURATION", "300") or 300)
    return spaces.GPU(duration=duration)(fn)


@_zero_gpu
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


@_zero_gpu
def gpu_edit_frame(
    editor_name: str,
    frame: Image.Image,
    values: dict[str, Any],
    candidates: int,
    progress: Callable[[float, str], None] | None,
    device: str | None,
    dtype: str | None,
) -> list[Image.Image]:
    return editors.get_editor(editor_name).edit(
        frame, values, candidates=candidates, progress=progress, device=device, dtype=dtype
    )


async def run_cancellable(job: Callable[[threading.Event], T]) -> T:
    """Run a blocking job in a worker thread; when Gradio cancels the event (Cancel button, client
    `job.cancel()`), set the job's stop flag so the engine stops at its next step."""
    stop = threading.Event()
    try:
        # asyncio.to_thread copies the context, so gr.Progress keeps working inside the thread.
        return await asyncio.to_thread(job, stop)
    except asyncio.CancelledError:
        logger.info("job cancelled; it stops at its next step")
        stop.set()
        raise


# ---------------------------------------------------------------------------------------------------------
# The app's work, shared by the UI and the API
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PreparedEntry:
    prepared: PreparedClip
    config: EditConfig
    preview_path: str
    first_frame_path: str
    summary: str


class App:
    """Everything the events call. Holds the server settings and the last few prepared clips."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.output_dir = Path(settings.output_dir).expanduser().resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._clips: OrderedDict[tuple, PreparedEntry] = OrderedDict()
        self._clips_lock = threading.Lock()
        # Frames stay in memory (128 frames at 1024x1024 are 400 MB), so only the latest few clips are kept.
        self.max_clips = 3

    # ---- step 1: the clip -------------------------------------------------------------------------------

    def check_upload(self, path: str | None, what: str = "video") -> str:
        if not path:
            raise VideoError(f"no {what} was given; upload one first.")
        if not os.path.isfile(path):
            raise VideoError(f"the uploaded {what} is missing on the server; upload it again.")
        size = os.path.getsize(path)
        if size > self.settings.max_upload_bytes:
            raise VideoError(
                f"{os.path.basename(path)} is {size / 2**20:.0f} MB; this app accepts up to "
                f"{self.settings.max_upload_mb} MB. Trim or compress the video first."
            )
        return path

    @staticmethod
    def _clip_key(video: str, config: EditConfig) -> tuple:
        stat = os.stat(video)
        return (
            os.path.realpath(video), stat.st_size, stat.st_mtime_ns, config.frames, config.fps, config.start_time,
            config.width, config.height, config.resize_mode,
        )

    def cached_clip(self, video: str, config: EditConfig) -> PreparedEntry | None:
        key = self._clip_key(video, config)
        with self._clips_lock:
            entry = self._clips.get(key)
            if entry is not None:
                self._clips.move_to_end(key)
            return entry

    def prepare(self, video: str, config: EditConfig) -> PreparedEntry:
        """The clip at the working size (cached), with a preview mp4 and the first frame as PNG."""
        self.check_upload(video)
        cached = self.cached_clip(video, config)
        if cached is not None:
            return cached
        prepared = prepare_clip(video, config)
        check_frame_limit(len(prepared.frames), config.fps, self.settings.max_frames)
        clips_dir = self.output_dir / "clips"
        preview = write_video(prepared.frames, unique_path(clips_dir, "clip", ".mp4"), config.fps)
        first_frame = unique_path(clips_dir, "first-frame", ".png")
        prepared.first_frame.save(first_frame, format="PNG")  # lossless: the exact pixels the engine uses
        entry = PreparedEntry(prepared, config, str(preview), str(first_frame), clip_summary(prepared, config))
        with self._clips_lock:
            self._clips[self._clip_key(video, config)] = entry
            while len(self._clips) > self.max_clips:
                self._clips.popitem(last=False)
        return entry

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
        editor = editors.get_editor(editor_name)
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
        return paths

    # ---- step 3: the video ------------------------------------------------------------------------------

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
        load_image(edited_frame)  # a bad image fails here with one line, before any model work
        entry = self.cached_clip(video, config)
        if entry is None and config.frames == 0:
            # The whole clip: its length is known only once read; refuse it before the model runs.
            entry = self.prepare(video, config)
        tracker = EngineProgress(
            progress or (lambda fraction, text: None), config.inversion_steps, config.steps - config.start_index
        )
        with gpu_slot(stop):
            tracker.start()
            logger.info("video edit started: %d frames %dx%d, %d steps, %d inversion steps",
                        config.frames, config.width, config.height, config.steps, config.inversion_steps)
            on_zero_gpu = spaces is not None  # callbacks cannot cross into the ZeroGPU worker process
            try:
                result = gpu_edit_video(
                    video, edited_frame, prompt, config, str(self.output_dir),
                    entry.prepared if entry is not None else None,
                    None if on_zero_gpu else tracker,
                    None if on_zero_gpu else stop.is_set,
                )
            except CancelledError:
                logger.info("video edit stopped after a cancel")
                raise
        logger.info("video edit done: %s (inversion %s)", result.video_path.name,
                    "reused" if result.inversion_from_cache else "computed")
        return result


# ---------------------------------------------------------------------------------------------------------
# Editor inputs -> widgets, and the API's union of all editors' inputs
# ---------------------------------------------------------------------------------------------------------

# /edit_first_frame's own parameters; an editor input with one of these names is renamed "<editor>_<name>".
FIRST_FRAME_API_PARAMS = ("video", "editor", "candidates", "width", "height", "resize_mode", "fps", "start_time")


def editor_widget(
    spec: EditorInput, elem_id: str | None = None, default: Any = ..., api: bool = False, **extra: Any
) -> gr.Component:
    """The widget for one editor input: sliders for short ranges, number boxes for long ones (and for the API,
    where a number box keeps integer types)."""
    value = spec.default if default is ... else default
    info = spec.help or None
    label = extra.pop("label", spec.label)
    if spec.kind == "text":
        return gr.Textbox(label=label, value=value or "", info=info, elem_id=elem_id, lines=1, **extra)
    if spec.kind == "image":
        return gr.Image(
            label=label, type="filepath", format="png", sources=["upload", "clipboard"], height=240,
            elem_id=elem_id, **extra,
        )
    if spec.kind == "mask":
        if api:  # a mask image file: white (or opaque) pixels mark the region
            return gr.Image(label=label, type="filepath", format="png", elem_id=elem_id, **extra)
        # Painted over the prepared first frame (the page sets the background when a clip is prepared).
        return gr.ImageEditor(
            label=label, type="pil", image_mode="RGBA", sources=["upload", "clipboard"], height=320,
            brush=gr.Brush(colors=["#ff3366"], color_mode="fixed"), eraser=gr.Eraser(), elem_id=elem_id, **extra,
        )
    if spec.kind == "seed":
        return gr.Number(label=label, value=value, precision=0, minimum=0, info=info, elem_id=elem_id, **extra)
    integer = spec.kind == "int"
    low, high, step = spec.minimum, spec.maximum, spec.step
    if not api and low is not None and high is not None and value is not None and (high - low) / (step or 1) <= 2000:
        return gr.Slider(
            minimum=low, maximum=high, value=value, step=step or (1 if integer else (high - low) / 100),
            label=label, info=info, elem_id=elem_id, **extra,
        )
    return gr.Number(
        label=label, value=value, minimum=low, maximum=high, precision=0 if integer else None,
        info=info, elem_id=elem_id, **extra,
    )


@dataclass
class ApiEditorParam:
    """One /edit_first_frame parameter standing for the same-named input of one or more editors."""

    name: str
    spec: EditorInput
    default: Any
    targets: dict[str, str]  # editor name -> that editor's input name


def api_editor_params(available: Mapping[str, Editor]) -> list[ApiEditorParam]:
    """The union of every editor's inputs by name (like the editors CLI's flags).

    Editors that share a name and kind share a parameter; its default is theirs when they agree, else None
    (each editor then uses its own). A clash of kinds or with the endpoint's own parameters gets the name
    `<editor>_<input>`.
    """
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


def editor_values(editor: Editor, params: Sequence[ApiEditorParam], given: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs of `editor` from API values keyed by parameter name."""
    values: dict[str, Any] = {}
    for param in params:
        if editor.name in param.targets:
            values[param.targets[editor.name]] = given.get(param.name)
    return values


def _with_signature(fn: Callable[..., Any], parameters: list[inspect.Parameter]) -> Callable[..., Any]:
    """Give a *args function a real signature: Gradio names API parameters (and marks optional ones) by it."""
    fn.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return fn


# ---------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------

INTRO = """
# AnyV2V: edit a whole video by editing its first frame
**1.** Upload a short video (or click an example at the bottom). **2.** Change its first frame with one of the
editors, or upload your own edited picture. **3.** Describe the edited video and press **Edit the video**: AnyV2V
carries your first-frame change through every frame while keeping the original motion.
"""

CSS = """
.step-heading h2 { margin-bottom: 0.2em; }
.step-help { opacity: 0.85; }
"""


def _progress_fn(progress: gr.Progress) -> Callable[[float, str], None]:
    return lambda fraction, text: progress(fraction, desc=text)


def build_app(settings: AppSettings | None = None) -> gr.Blocks:
    """The Gradio Blocks app (queue configured); launch it with `launch_kwargs(settings)`."""
    settings = (settings or AppSettings.from_env()).check()
    app = App(settings)
    base = settings.base_config()
    available = editors.available_editors()
    api_params = api_editor_params(available)
    examples = list_examples()
    preset_choices = [(f"{name} ({preset_config(name).inversion_steps} inversion steps)", name) for name in PRESETS]

    with gr.Blocks(title="AnyV2V video editing", delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(INTRO)
        clip_state = gr.State(None)  # {"video", "first_frame", "resize_mode"} of the prepared clip
        candidates_state = gr.State([])  # PNG paths of the latest candidates
        selected_state = gr.State(0)

        # ---- 1. Video ---------------------------------------------------------------------------------
        gr.Markdown("## 1. Video", elem_classes=["step-heading"])
        with gr.Row():
            with gr.Column(scale=1):
                source_video = gr.Video(
                    label="Source video", sources=["upload"], format=None, include_audio=True, elem_id="source-video",
                    height=320,
                )
                with gr.Row():
                    start_time = gr.Number(label="Start time (s)", value=0, minimum=0, elem_id="start-time")
                    end_time = gr.Number(
                        label="End time (s, optional)", value=None, minimum=0, elem_id="end-time",
                        info="Empty or 0: use the frame count. Otherwise the frames from start to end are used.",
                    )
                with gr.Row():
                    frames = gr.Slider(
                        2, settings.max_frames, value=min(base.frames, settings.max_frames), step=1, label="Frames",
                        info="Number of frames to edit (16 is what the model was trained on).", elem_id="frames",
                    )
                    fps = gr.Slider(1, 30, value=base.fps, step=1, label="Frames per second", elem_id="fps",
                                    info="The clip is sampled at this rate; the output plays at it.")
                with gr.Row():
                    width = gr.Slider(64, settings.max_size, value=min(base.width, settings.max_size), step=64,
                                      label="Width", elem_id="width")
                    height = gr.Slider(64, settings.max_size, value=min(base.height, settings.max_size), step=64,
                                       label="Height", elem_id="height",
                                       info="512×512 is the model's training size.")
                resize_mode = gr.Radio(RESIZE_CHOICES, value=base.resize_mode, label="Fit to the size",
                                       elem_id="resize-mode")
                keep_audio = gr.Checkbox(label="Keep the source audio", value=False, elem_id="keep-audio")
                prepare_btn = gr.Button("Update the prepared clip", elem_id="prepare-btn")
            with gr.Column(scale=1):
                clip_info = gr.Markdown("Upload a video to see the prepared clip here.", elem_id="clip-info")
                prepared_video = gr.Video(label="Prepared clip (what will be edited)", interactive=False, format=None,
                                          loop=True, elem_id="prepared-video", height=260)
                first_frame = gr.Image(label="Its first frame", interactive=False, format="png", type="filepath",
                                       elem_id="first-frame", height=260)
                first_frame_download = gr.DownloadButton(
                    "Download the first frame (PNG) to edit it in another program", value=None, interactive=False,
                    elem_id="first-frame-download",
                )

        # ---- 2. First frame ---------------------------------------------------------------------------
        gr.Markdown("## 2. First frame", elem_classes=["step-heading"])
        gr.Markdown(
            "Change the first frame with an editor below. Editors often need a few tries: make several candidates, "
            "click the best one and press **Use this frame**. Or edit the downloaded first frame in any program "
            + (f"and upload it in the **{available['manual'].title}** tab." if "manual" in available
               else "and drop it on the edited first frame."),
            elem_classes=["step-help"],
        )
        with gr.Row():
            with gr.Column(scale=3):
                editor_tabs: list[tuple[Editor, dict[str, gr.Component], gr.Component | None, gr.Button]] = []
                with gr.Tabs(elem_id="editor-tabs"):
                    for editor in available.values():
                        with gr.Tab(editor.title, id=editor.name, elem_id=f"editor-tab-{editor.name}"):
                            gr.Markdown(editor.description)
                            widgets = {spec.name: editor_widget(spec, f"{editor.name}-{spec.name}") for spec in editor.inputs}
                            count = None
                            if editor.supports_candidates:
                                count = gr.Slider(1, MAX_CANDIDATES, value=1, step=1, label="Candidates",
                                                  info="Each candidate uses the next seed.",
                                                  elem_id=f"{editor.name}-candidates")
                            label = "Make candidates" if editor.supports_candidates else "Use the uploaded frame"
                            button = gr.Button(label, variant="primary", elem_id=f"{editor.name}-run")
                            editor_tabs.append((editor, widgets, count, button))
                gallery = gr.Gallery(label="Candidates: click one to pick it", columns=4, height=260,
                                     allow_preview=False, elem_id="candidates", format="png")
                frame_status = gr.Markdown("", elem_id="frame-status")
                use_btn = gr.Button("Use this frame", elem_id="use-frame-btn")
            with gr.Column(scale=2):
                edited_frame = gr.Image(
                    label="Edited first frame (used for the video edit)", type="filepath", format="png",
                    sources=["upload", "clipboard"], elem_id="edited-frame", height=320,
                )

        # ---- 3. Video edit ----------------------------------------------------------------------------
        gr.Markdown("## 3. Video edit", elem_classes=["step-heading"])
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(
                    label="Target prompt: a caption of the edited video",
                    info="Describe what the edited video shows, not the change to make "
                         "(e.g. 'a robot doing exercises', not 'turn him into a robot').",
                    placeholder="a man with a party hat doing exercises", elem_id="prompt", lines=2,
                )
                with gr.Row():
                    tau_conv = gr.Slider(0, 1, value=base.tau_conv, step=0.05, label="tau_conv: keep structure",
                                         info="Share of steps that inject the source's convolution features.",
                                         elem_id="tau-conv")
                    tau_sa = gr.Slider(0, 1, value=base.tau_sa, step=0.05, label="tau_sa: keep layout",
                                       info="Share of steps that inject the source's spatial attention.",
                                       elem_id="tau-sa")
                with gr.Row():
                    tau_ta = gr.Slider(0, 1, value=base.tau_ta, step=0.05, label="tau_ta: keep motion",
                                       info="Share of steps that inject the source's temporal attention.",
                                       elem_id="tau-ta")
                    start_index = gr.Slider(0, base.steps - 1, value=base.start_index, step=1,
                                            label="T' (start index)",
                                            info="Skip this many sampling steps (higher keeps more of the source).",
                                            elem_id="start-index")
                with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                    preset = gr.Dropdown(preset_choices, value=settings.preset, label="Preset",
                                         info="Sets the steps and the inversion steps.", elem_id="preset")
                    with gr.Row():
                        steps = gr.Slider(1, 200, value=base.steps, step=1, label="Sampling steps", elem_id="steps")
                        inversion_steps = gr.Number(
                            label="Inversion steps", value=base.inversion_steps, precision=0, minimum=1,
                            maximum=1000, elem_id="inversion-steps",
                            info="More is more faithful but slower (the paper: 500).",
                        )
                    with gr.Row():
                        guidance = gr.Slider(0, 20, value=base.guidance, step=0.5, label="Guidance",
                                             info="How strongly to follow the prompt and the edited frame.",
                                             elem_id="guidance")
                        seed = gr.Number(label="Seed", value=base.seed, precision=0, minimum=0, elem_id="seed")
                    negative_prompt = gr.Textbox(label="Negative prompt", value=base.negative_prompt, lines=2,
                                                 elem_id="negative-prompt")
                with gr.Row():
                    run_btn = gr.Button("Edit the video", variant="primary", elem_id="run-btn")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
                gr.Markdown(
                    "The first edit of a clip inverts it, which takes most of the time; later edits of the same "
                    "clip (same clip settings, seed and inversion steps) reuse that inversion.",
                    elem_classes=["step-help"],
                )
            with gr.Column(scale=1):
                output_video = gr.Video(label="Edited video", interactive=False, format=None, loop=True,
                                        elem_id="output-video", height=360)
                edit_status_md = gr.Markdown("", elem_id="edit-status")
                downloads = gr.File(label="Downloads: the video and its settings (JSON)", file_count="multiple",
                                    interactive=False, elem_id="downloads")
                with gr.Accordion("Settings and measurements (JSON)", open=False):
                    settings_json = gr.JSON(label="Settings", elem_id="settings-json")

        if examples:
            gr.Markdown("## Examples", elem_classes=["step-heading"])
            gr.Examples(
                [example.row() for example in examples],
                inputs=[source_video, edited_frame, prompt, tau_conv, tau_sa, tau_ta, start_index],
                example_labels=[example.label for example in examples],
                label="Click an example to fill in the video, the edited first frame, the prompt and its settings",
                cache_examples=False,
                examples_per_page=10,
            )

        # ---- Events: step 1 -----------------------------------------------------------------------------
        clip_inputs = dict(frames=frames, fps=fps, start_time=start_time, end_time=end_time, width=width,
                           height=height, resize_mode=resize_mode)

        async def on_prepare(video: str | None, progress: gr.Progress = gr.Progress(), **clip: Any):
            if not video:  # cleared: reset the preview
                return (None, None, gr.DownloadButton(value=None, interactive=False),
                        "Upload a video to see the prepared clip here.", None)
            with reported("preparing the video", [video]):
                config = build_config(settings, **clip)
                progress(0.1, desc="Reading and resizing the frames")
                entry = await asyncio.to_thread(app.prepare, video, config)
            state = {"video": video, "first_frame": entry.first_frame_path, "resize_mode": config.resize_mode}
            return (entry.preview_path, entry.first_frame_path,
                    gr.DownloadButton(value=entry.first_frame_path, interactive=True), entry.summary, state)

        prepare_outputs = [prepared_video, first_frame, first_frame_download, clip_info, clip_state]
        prepare_options = dict(inputs_kwargs=clip_inputs, concurrency_limit=2, concurrency_id="prepare",
                               show_progress="minimal", api_visibility="private")

        def on_new_video():
            # Forget the previous clip first, so a video that fails to load leaves nothing stale behind.
            return (None, None, gr.DownloadButton(value=None, interactive=False),
                    "Preparing the clip…", None)

        source_video.change(on_new_video, None, prepare_outputs, queue=False, api_visibility="private").then(
            on_prepare, [source_video], prepare_outputs, **prepare_options)
        prepare_btn.click(on_prepare, [source_video], prepare_outputs, **prepare_options)

        # ---- Events: step 2 -----------------------------------------------------------------------------
        def make_editor_fn(editor: Editor, names: list[str]) -> Callable[..., Any]:
            async def on_edit_frame(state: dict | None, candidates: Any, progress: gr.Progress = gr.Progress(),
                                    **values: Any):
                if not state:
                    raise gr.Error("Upload a video in step 1 first: the editors work on its first frame.")
                with reported(f"editing the first frame with {editor.title}", [v for v in values.values() if isinstance(v, str)]):
                    values["resize_mode"] = state.get("resize_mode", "crop")
                    frame = load_image(state["first_frame"]).convert("RGB")
                    paths = await run_cancellable(lambda stop: app.edit_frame(
                        editor.name, frame, values, int(candidates or 1), _progress_fn(progress), stop))
                seed_value = values.get("seed")
                captions = [
                    f"Candidate {i + 1}" + (f" (seed {int(seed_value) + i})" if seed_value is not None else "")
                    for i in range(len(paths))
                ]
                if len(paths) == 1:  # nothing to choose: use it right away
                    return (gr.Gallery(value=list(zip(paths, captions)), selected_index=0), paths, 0, paths[0],
                            "Using this frame for the video edit (step 3).")
                return (gr.Gallery(value=list(zip(paths, captions)), selected_index=0), paths, 0, gr.skip(),
                        f"{len(paths)} candidates: click the best one, then press **Use this frame**.")

            return on_edit_frame

        editor_events = []
        for editor, widgets, count, button in editor_tabs:
            count_input = count if count is not None else gr.State(1)
            editor_events.append(button.click(
                make_editor_fn(editor, list(widgets)), [clip_state, count_input],
                [gallery, candidates_state, selected_state, edited_frame, frame_status], inputs_kwargs=widgets,
                concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID, api_visibility="private",
            ))

        def on_select(evt: gr.SelectData) -> int:
            return int(evt.index)

        gallery.select(on_select, None, selected_state, queue=False, api_visibility="private")

        def on_use(paths: list[str], index: int):
            if not paths:
                raise gr.Error("Make candidates with an editor first (or upload a frame in the manual tab).")
            index = min(max(int(index or 0), 0), len(paths) - 1)
            return paths[index], f"Using candidate {index + 1} for the video edit (step 3)."

        use_btn.click(on_use, [candidates_state, selected_state], [edited_frame, frame_status], queue=False,
                      api_visibility="private")

        # ---- Events: step 3 -----------------------------------------------------------------------------
        def on_preset(name: str):
            values = preset_values(name)
            return gr.Slider(value=values["steps"]), values["inversion_steps"]

        preset.change(on_preset, preset, [steps, inversion_steps], queue=False, api_visibility="private")

        def on_steps(value: Any, current: Any):
            top = max(int(value or 1) - 1, 0)
            return gr.Slider(maximum=max(top, 1), value=min(int(current or 0), top))

        steps.change(on_steps, [steps, start_index], start_index, queue=False, api_visibility="private")

        async def on_edit_video(progress: gr.Progress = gr.Progress(), **kw: Any):
            video, frame, text = kw.pop("video"), kw.pop("edited_frame"), kw.pop("prompt")
            if not video:
                raise gr.Error("Upload a video in step 1 first.")
            if not frame:
                raise gr.Error("Choose an edited first frame in step 2 first (or click an example).")
            with reported("editing the video", [video, frame]):
                config = build_config(settings, **kw)
                result = await run_cancellable(
                    lambda stop: app.edit_video(video, frame, text, config, _progress_fn(progress), stop))
                record = json.loads(Path(result.json_path).read_text())
            return str(result.video_path), [str(result.video_path), str(result.json_path)], edit_status(result), record

        run_inputs = dict(
            video=source_video, edited_frame=edited_frame, prompt=prompt, tau_conv=tau_conv, tau_sa=tau_sa,
            tau_ta=tau_ta, start_index=start_index, steps=steps, inversion_steps=inversion_steps, guidance=guidance,
            negative_prompt=negative_prompt, seed=seed, keep_audio=keep_audio, **clip_inputs,
        )
        run_event = run_btn.click(
            on_edit_video, None, [output_video, downloads, edit_status_md, settings_json], inputs_kwargs=run_inputs,
            concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID, api_visibility="private",
        )

        def on_cancel() -> str:
            return "Cancelled. A running step finishes first; nothing is written."

        cancel_btn.click(on_cancel, None, edit_status_md, cancels=[run_event, *editor_events], queue=False,
                         api_visibility="private")

        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        gr.Markdown(
            f"Video model: `{settings.model}` on {device}. "
            + ("" if device.startswith("cuda") else "Without a GPU a real-size edit takes a very long time. ")
            + "Outputs are written with unique names and never overwritten. API: see *Use via API* below.",
            elem_classes=["step-help"],
        )

        # ---- Public API (gradio_client): hidden components, so the endpoints have clean signatures ---------
        with gr.Column(visible=False):
            _build_api(app, settings, base, available, api_params)

    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return demo


def _build_api(
    app: App, settings: AppSettings, base: EditConfig, available: Mapping[str, Editor], params: list[ApiEditorParam]
) -> None:
    """/edit_first_frame and /edit_video with parameter names, defaults and docs that gradio_client shows."""
    P = inspect.Parameter
    editor_names = list(available)

    # -- /edit_first_frame --
    ff_video = gr.Video(label="video", sources=["upload"], format=None)
    ff_editor = gr.Dropdown(editor_names, value=editor_names[0] if editor_names else None, label="editor")
    ff_candidates = gr.Number(label="candidates", value=1, precision=0)
    ff_width = gr.Number(label="width", value=base.width, precision=0)
    ff_height = gr.Number(label="height", value=base.height, precision=0)
    ff_resize = gr.Dropdown(list(RESIZE_MODES), value=base.resize_mode, label="resize_mode")
    ff_fps = gr.Number(label="fps", value=base.fps, precision=0)
    ff_start = gr.Number(label="start_time", value=0.0)
    ff_widgets = [editor_widget(param.spec, default=param.default, api=True, label=param.name) for param in params]
    ff_out = gr.File(label="candidates", file_count="multiple")
    ff_button = gr.Button("edit_first_frame")
    fixed = ["video", "editor", "candidates", "width", "height", "resize_mode", "fps", "start_time"]
    names = fixed + [param.name for param in params]

    async def edit_first_frame(*args: Any, progress: gr.Progress = gr.Progress()):
        given = dict(zip(names, args))
        video = given["video"]
        with reported("editing the first frame", [video] + [v for v in given.values() if isinstance(v, str)]):
            editor = editors.get_editor(given["editor"] or "manual")
            config = build_config(settings, frames=2, fps=given["fps"], start_time=given["start_time"],
                                  width=given["width"], height=given["height"], resize_mode=given["resize_mode"])
            entry = await asyncio.to_thread(app.prepare, app.check_upload(video), config)
            values = editor_values(editor, params, given)
            values["resize_mode"] = config.resize_mode
            frame = entry.prepared.first_frame
            candidates = _whole(given["candidates"], 1, "candidates")
            paths = await run_cancellable(lambda stop: app.edit_frame(
                editor.name, frame, values, candidates, _progress_fn(progress), stop))
        return paths

    signature = [P(name, P.POSITIONAL_OR_KEYWORD, default=None) for name in names]
    signature[0] = P("video", P.POSITIONAL_OR_KEYWORD)
    signature.append(P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    uses = "; ".join(
        f"{editor.name}: " + ", ".join(p.name for p in params if editor.name in p.targets) for editor in available.values()
    )
    ff_button.click(
        _with_signature(edit_first_frame, signature),
        [ff_video, ff_editor, ff_candidates, ff_width, ff_height, ff_resize, ff_fps, ff_start, *ff_widgets],
        ff_out, api_name="edit_first_frame",
        api_description=(
            "Edit the first frame of `video` (prepared at width x height like the video edit) with one editor. "
            f"Each editor reads its own inputs ({uses}). Returns the candidates as PNG files."
        ),
        concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID,
    )

    # -- /edit_video --
    ev_video = gr.Video(label="video", sources=["upload"], format=None)
    ev_frame = gr.Image(label="edited_frame", type="filepath", format="png")
    ev_prompt = gr.Textbox(label="prompt")
    ev_numbers = {
        "tau_conv": gr.Number(label="tau_conv", value=base.tau_conv),
        "tau_sa": gr.Number(label="tau_sa", value=base.tau_sa),
        "tau_ta": gr.Number(label="tau_ta", value=base.tau_ta),
        "start_index": gr.Number(label="start_index", value=base.start_index, precision=0),
        "steps": gr.Number(label="steps", value=base.steps, precision=0),
        "inversion_steps": gr.Number(label="inversion_steps", value=base.inversion_steps, precision=0),
        "guidance": gr.Number(label="guidance", value=base.guidance),
        "negative_prompt": gr.Textbox(label="negative_prompt", value=base.negative_prompt),
        "seed": gr.Number(label="seed", value=base.seed, precision=0),
        "frames": gr.Number(label="frames", value=base.frames, precision=0),
        "fps": gr.Number(label="fps", value=base.fps, precision=0),
        "width": gr.Number(label="width", value=base.width, precision=0),
        "height": gr.Number(label="height", value=base.height, precision=0),
        "start_time": gr.Number(label="start_time", value=0.0),
        "resize_mode": gr.Dropdown(list(RESIZE_MODES), value=base.resize_mode, label="resize_mode"),
    }
    ev_out = gr.Video(label="edited_video", format=None)
    ev_button = gr.Button("edit_video")

    async def edit_video(
        video: str, edited_frame: str, prompt: str, tau_conv: float = base.tau_conv, tau_sa: float = base.tau_sa,
        tau_ta: float = base.tau_ta, start_index: int = base.start_index, steps: int = base.steps,
        inversion_steps: int = base.inversion_steps, guidance: float = base.guidance,
        negative_prompt: str = base.negative_prompt, seed: int = base.seed, frames: int = base.frames,
        fps: int = base.fps, width: int = base.width, height: int = base.height, start_time: float = 0.0,
        resize_mode: str = base.resize_mode, progress: gr.Progress = gr.Progress(),
    ) -> str:
        """Edit `video` so it follows `edited_frame`; returns the edited mp4 (its settings JSON is written beside
        it in the server's output folder). Progress and 'reused the cached inversion' arrive as status logs."""
        if not edited_frame:
            raise gr.Error("edited_frame is required: the edited first frame as an image file.")
        with reported("editing the video", [video, edited_frame]):
            config = build_config(
                settings, tau_conv=tau_conv, tau_sa=tau_sa, tau_ta=tau_ta, start_index=start_index, steps=steps,
                inversion_steps=inversion_steps, guidance=guidance, negative_prompt=negative_prompt, seed=seed,
                frames=frames, fps=fps, width=width, height=height, start_time=start_time, resize_mode=resize_mode,
            )
            result = await run_cancellable(
                lambda stop: app.edit_video(app.check_upload(video), edited_frame, prompt, config,
                                            _progress_fn(progress), stop))
        gr.Info(edit_status(result).replace("**", ""))  # reaches gradio_client as a status log
        return str(result.video_path)

    ev_button.click(
        edit_video, [ev_video, ev_frame, ev_prompt, *ev_numbers.values()], ev_out, api_name="edit_video",
        concurrency_limit=1, concurrency_id=GPU_CONCURRENCY_ID,
    )


# ---------------------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------------------


def launch_kwargs(settings: AppSettings) -> dict[str, Any]:
    """Keyword arguments of `Blocks.launch` that every way of serving the app needs."""
    return {
        "max_file_size": settings.max_upload_bytes,
        # Outputs and examples live outside Gradio's temp folder; these folders (only) may be served.
        "allowed_paths": [str(Path(settings.output_dir).expanduser().resolve()), str(ASSETS_DIR)],
        "theme": gr.themes.Soft(),
        "css": CSS,
        "show_error": False,  # unexpected errors are turned into gr.Error by `reported`; never show raw ones
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = AppSettings.from_env()
    parser = argparse.ArgumentParser(description="AnyV2V web app (Gradio).")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT") or 7860),
                        help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--output-dir", default=env.output_dir,
                        help=f"folder for edited videos and frames (default {env.output_dir}; ANYV2V_OUTPUT_DIR)")
    parser.add_argument("--max-upload-mb", type=int, default=env.max_upload_mb,
                        help=f"largest upload in MB (default {env.max_upload_mb}; ANYV2V_MAX_UPLOAD_MB)")
    parser.add_argument("--queue-size", type=int, default=env.queue_size,
                        help=f"most jobs waiting in the queue (default {env.queue_size}; ANYV2V_QUEUE_SIZE)")
    parser.add_argument("--max-frames", type=int, default=env.max_frames,
                        help=f"most frames per edit (default {env.max_frames}; ANYV2V_MAX_FRAMES)")
    parser.add_argument("--preload", action="store_true", default=env.preload,
                        help="load the video model before serving (ANYV2V_PRELOAD=1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    args = parse_args(argv)
    settings = AppSettings.from_env().replace(
        output_dir=args.output_dir, max_upload_mb=args.max_upload_mb, queue_size=args.queue_size,
        max_frames=args.max_frames, preload=args.preload,
    ).check()
    if settings.preload:
        started = time.perf_counter()
        BACKBONES.get(settings.model, settings.device, settings.dtype, settings.cpu_offload)
        logger.info("loaded %s in %.1f s", settings.model, time.perf_counter() - started)
    demo = build_app(settings)
    logger.info("model %s, outputs in %s, cache in %s", settings.model, settings.output_dir, settings.cache_dir)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(settings))


if __name__ == "__main__":
    main()
