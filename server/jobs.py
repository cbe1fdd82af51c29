"""GPU jobs: one at a time (the process-wide GPU slot), cancellable between UNet steps, ZeroGPU-aware, with the
engine's progress mapped to one bar with plain-language text and time left."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from PIL import Image

from anyv2v.config import EditConfig
from anyv2v.errors import CancelledError
from anyv2v.pipeline import EditResult, PreparedClip, run_edit

from .messages import format_duration

try:  # ZeroGPU on Hugging Face Spaces: GPU functions must be decorated with spaces.GPU.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

logger = logging.getLogger("anyv2v.app")
T = TypeVar("T")

# Relative cost of one sampling UNet call (batch 3: source + 2 guidance branches) vs one inversion call (batch 1).
SAMPLING_COST = 3.0


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
        sampling_cost: float | None = None,
    ) -> None:
        self.report = report
        # Seconds of a sampling step per inversion step: measured on this server when known (server.step_timing).
        self.sampling_cost = float(sampling_cost) if sampling_cost and sampling_cost > 0 else SAMPLING_COST
        self._stage_start: dict[str, tuple[float, int]] = {}  # stage -> (clock, steps done) at its first report
        self.inversion_total = max(int(inversion_steps), 1)
        self.sampling_total = max(int(sampling_steps), 1)
        self.inversion_done = 0
        self.sampling_done = 0
        self.reused_inversion = False
        self.clock = clock

    def _fraction(self) -> float:
        inversion_weight = 0.0 if self.reused_inversion else float(self.inversion_total)
        total = inversion_weight + self.sampling_cost * self.sampling_total
        done = (0.0 if self.reused_inversion else self.inversion_done) + self.sampling_cost * self.sampling_done
        return min(max(done / total, 0.0), 1.0) if total else 0.0

    def _pace(self, stage: str, done: int) -> float | None:
        """Seconds per step of `stage` averaged since its first report; None before two reports."""
        if stage not in self._stage_start:
            return None
        since, first = self._stage_start[stage]
        return (self.clock() - since) / (done - first) if done > first else None

    def time_left(self) -> float | None:
        """Seconds left: the steps left of each stage at that stage's measured pace (sampling, before it starts,
        at the inversion's pace times `sampling_cost`); None until there is a pace. Per stage, so the estimate
        does not jump when sampling starts."""
        sampling_left = self.sampling_total - self.sampling_done
        sampling_pace = self._pace("sampling", self.sampling_done)
        if sampling_pace is not None:
            return sampling_left * sampling_pace
        inversion_pace = self._pace("inversion", self.inversion_done)
        if inversion_pace is None or self.reused_inversion:
            return None
        return (self.inversion_total - self.inversion_done) * inversion_pace + sampling_left * inversion_pace * self.sampling_cost

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
        if stage in ("inversion", "sampling") and stage not in self._stage_start:
            self._stage_start[stage] = (self.clock(), done)
        left = self.time_left()
        if left is not None and self._fraction() < 1.0:
            text += f" (about {format_duration(left)} left)"
        self.report(self._fraction(), text)


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
