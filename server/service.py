"""The app's job layer behind one object: `EditService` holds the server settings, the prepared clips and the
output folder, and runs the page's and the API's jobs. `app.py` lays out the page and wires events to it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from anyv2v.config import DEFAULT_BACKBONE, EditConfig
from anyv2v.errors import AnyV2VError, CancelledError, VideoError
from anyv2v.files import unique_path
from anyv2v.pipeline import BACKBONES, EditResult, prepare_clip
from anyv2v.video import write_video

from . import app_outputs, jobs, step_timing, video_models
from .checks import check_image_file
from .clips import ClipCache, PreparedEntry
from .jobs import EngineProgress, gpu_edit_frame, gpu_edit_video, gpu_slot
from .messages import clip_summary
from .retention import prune_outputs, sweep_stale
from .settings import AppSettings, check_model_source

logger = logging.getLogger("anyv2v.app")


class EditService:
    """Holds the server settings, the prepared clips and the output folder; runs the jobs."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.output_dir = app_outputs.app_output_dir(settings.output_dir)  # the app's own subfolder
        self.clips = ClipCache(settings.clip_cache_mb * 2**20)
        self.timings = step_timing.EditTimings()  # the page's estimates: measured step times (issue 14 item 11)
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

    @contextmanager
    def session_job(self, session: str | None) -> Iterator[threading.Event]:
        """A stop flag for one API job of `session`, set by `cancel(session)` (the client went away) while the
        job runs; forgotten when it ends. Without a session, a flag nobody else sets."""
        if not session:
            yield threading.Event()
            return
        kind = f"api-{os.urandom(8).hex()}"
        stop = self.new_job(session, kind)
        try:
            yield stop
        finally:
            with self._stops_lock:
                self._stops.pop((session, kind), None)

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
            app_outputs.publish_png(entry.prepared.first_frame, first_frame)  # lossless: the pixels the engine uses
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
        if step_timing.edit_stage_flops(config, frames, size) is None:
            return ""
        return self.timings.text(config, frames, size, device, self.model_loaded(config.backbone))

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
                editor.name, frame, values, count, report if jobs.spaces is None else None,
                self.settings.device, self.settings.dtype,
            )
        # Published whole, all or none (a full disk leaves no cut-off candidate).
        paths = app_outputs.publish_pngs(images, self.output_dir / "frames", f"first-frame-{editor.name}")
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

    def _model_key(self, backbone: str = DEFAULT_BACKBONE) -> tuple:
        s = self.settings
        return (s.model_for(backbone), s.device, s.dtype, s.cpu_offload, backbone)

    def model_loaded(self, backbone: str = DEFAULT_BACKBONE) -> bool:
        """Whether the video model `backbone` is in memory (loaded by an edit of this service, or preloaded by
        another)."""
        return self._model_key(backbone) in self._loaded or BACKBONES.holds(*self._model_key(backbone))

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
        video_models.require_available(self.settings, config.backbone)  # one line; the details go to the log
        self.check_upload(video)
        self.check_upload(edited_frame, "edited first frame")
        check_image_file(edited_frame, "edited first frame")  # a bad image fails here, before any model work
        entry = self.prepare(video, config)  # the app's frame limit applies while decoding
        tracker = EngineProgress(
            progress or (lambda fraction, text: None), config.inversion_steps, config.steps - config.start_index,
            sampling_cost=self.timings.sampling_cost(config, len(entry.prepared.frames), entry.prepared.size,
                                                     self.settings.device_name),
        )
        with gpu_slot(stop):
            tracker.start(loading=not self.model_loaded(config.backbone))
            logger.info("video edit started (%s): %d frames %dx%d, %d steps, %d inversion steps", config.backbone,
                        len(entry.prepared.frames), *entry.prepared.size, config.steps, config.inversion_steps)
            on_zero_gpu = jobs.spaces is not None  # callbacks cannot cross into the ZeroGPU worker process
            try:
                result = gpu_edit_video(
                    video, edited_frame, prompt, config, str(self.output_dir), entry.prepared,
                    None if on_zero_gpu else tracker,
                    None if on_zero_gpu else stop.is_set,
                )
            except CancelledError:
                logger.info("video edit stopped after a cancel")
                raise
        self._loaded = {self._model_key(config.backbone)}  # the engine keeps one model loaded
        self.timings.record_edit(config, result, self.settings.device_name)
        logger.info("video edit done: %s (inversion %s)", result.video_path.name,
                    "reused" if result.inversion_from_cache else "computed")
        self.prune(keep=[result.video_path, result.json_path])
        return result


def startup_problem(settings: AppSettings) -> str | None:
    """What keeps the video model from loading (logged), else None; with `settings.preload`, loads it now and
    reports a failure as the problem (the server serves anyway; the page and the first edit say what is wrong)."""
    problem = check_model_source(settings.model)
    video_models.log_sources(settings)  # the other video models: each one's source checked, problems logged
    if problem:
        logger.warning("%s", problem)
    elif settings.preload:
        started = time.perf_counter()
        try:
            EditService(settings).preload()
            logger.info("loaded %s in %.1f s", settings.model, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - serve anyway; the page and the first edit say what is wrong
            text = " ".join(str(exc).split())[:300]
            message = text if isinstance(exc, AnyV2VError) else f"{type(exc).__name__}: {text}"
            print(f"error: could not preload the model: {message}", file=sys.stderr)
            problem = f"Preloading the model failed: {message}"
    return problem
