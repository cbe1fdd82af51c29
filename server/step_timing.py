"""Time estimates a visitor can plan by: calibrated from the step times measured on this server.

Every finished edit records, per device kind, video model and work size (frames x height x width), the pace of each UNet
stage in FLOP/s (inversion at batch 1, sampling at batch 2-3: FLOPs from `anyv2v.bench`, so the step counts and
the injection schedule are accounted for; kept as seconds per FLOP) and the seconds outside the UNet (reading, decoding, writing), each
smoothed over edits (exponential moving average). An estimate is

* "about X" when this very size was measured here,
* "X to Y" when only other sizes were (the nearest one's pace, with a range that widens with the distance), or
  only another video model (its pace per FLOP, one step wider: the models' FLOPs differ, their pace less),
* no number at all before anything was measured: a guess from nominal hardware speed was off by 4x to 15x.

"The first edit also loads the model" is said only when the model is not loaded.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

UNET_STAGES = ("inversion", "sampling")
OTHER_STAGES = ("prepare", "decode", "write")  # seconds outside the UNet, model load excluded
SMOOTHING = 0.5  # weight of the newest measurement


@dataclass(frozen=True)
class Estimate:
    seconds: float
    low: float
    high: float
    exact: bool  # measured at this very size with this video model
    same_model: bool = True  # measured with this video model (else with another one's pace per FLOP)


def _work(size: tuple[int, int, int]) -> float:
    frames, width, height = size
    return float(max(frames, 1) * max(width, 1) * max(height, 1))


class StepTimings:
    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.smoothing = smoothing
        # (device kind, stage, video model, size) -> seconds per FLOP
        self._pace: dict[tuple[str, str, str, tuple[int, int, int]], float] = {}
        self._other: dict[tuple[str, str, tuple[int, int, int]], float] = {}  # (kind, model, size) -> seconds
        self._lock = threading.Lock()

    def _smooth(self, table: dict, key: Any, value: float) -> None:
        old = table.get(key)
        table[key] = value if old is None else (1 - self.smoothing) * old + self.smoothing * value

    def record(self, device: str, size: tuple[int, int, int], stage_flops: dict[str, float],
               seconds: dict[str, float], model: str = "") -> None:
        """One finished edit with video model `model`: its UNet FLOPs per stage and its measured seconds per stage."""
        kind = device.split(":")[0]
        size = tuple(int(v) for v in size)  # type: ignore[assignment]
        with self._lock:
            for stage in UNET_STAGES:
                flops, taken = float(stage_flops.get(stage, 0.0)), float(seconds.get(stage, 0.0))
                if flops > 0 and taken > 0.01:
                    self._smooth(self._pace, (kind, stage, model, size), taken / flops)  # averages as seconds do
            self._smooth(self._other, (kind, model, size), sum(float(seconds.get(s, 0.0)) for s in OTHER_STAGES))

    def measured(self, device: str) -> bool:
        kind = device.split(":")[0]
        with self._lock:
            return any(key[0] == kind for key in self._pace)

    def _nearest(self, table: dict, match: tuple, size: tuple[int, int, int],
                 model: str = "") -> tuple[float, float, float, bool] | None:
        """(value, |log2 of the work ratio|, work ratio, same model) of the measured size nearest `size` among the
        keys starting with `match`, of video model `model`; of any model (one step further) when it has none."""
        own = self._nearest_of(table, match, size, model)
        if own is not None:
            return (*own, True)
        other = self._nearest_of(table, match, size, None)
        return None if other is None else (other[0], other[1] + 1.0, other[2], False)

    @staticmethod
    def _nearest_of(table: dict, match: tuple, size: tuple[int, int, int],
                    model: str | None) -> tuple[float, float, float] | None:
        best = None
        for key, value in table.items():
            if key[:-2] != match or (model is not None and key[-2] != model):
                continue
            ratio = _work(size) / _work(key[-1])
            distance = abs(math.log2(ratio))
            if best is None or distance < best[1]:
                best = (value, distance, ratio)
        return best

    def _stage_pace(self, kind: str, stage: str, size: tuple[int, int, int],
                    model: str) -> tuple[float, float, float, bool] | None:
        """The pace for `stage` of `model`, nearest first: this model's own (this stage, then its other stage one
        step further), then another model's (one step further still)."""
        other = "sampling" if stage == "inversion" else "inversion"
        for extra, wanted, of_model in ((0.0, stage, model), (1.0, other, model), (1.0, stage, None), (2.0, other, None)):
            found = self._nearest_of(self._pace, (kind, wanted), size, of_model)
            if found is not None:
                return found[0], found[1] + extra, found[2], of_model is not None  # None: this model has no pace
        return None

    def estimate(self, device: str, size: tuple[int, int, int], stage_flops: dict[str, float],
                 model: str = "") -> Estimate | None:
        """Seconds for an edit of `size` with video model `model` doing `stage_flops`; None before this device kind
        measured anything."""
        kind = device.split(":")[0]
        size = tuple(int(v) for v in size)  # type: ignore[assignment]
        total, distance, same_model = 0.0, 0.0, True
        with self._lock:
            for stage in UNET_STAGES:
                flops = float(stage_flops.get(stage, 0.0))
                if flops <= 0:
                    continue
                found = self._stage_pace(kind, stage, size, model)
                if found is None:
                    return None
                total += flops * found[0]
                distance = max(distance, found[1])
                same_model = same_model and found[3]
            other_seconds = self._nearest(self._other, (kind,), size, model)
        if other_seconds is not None:  # reading, decoding and writing: about linear in the work, from the nearest
            total += other_seconds[0] * other_seconds[2]
        exact = distance == 0.0
        spread = 1.2 if exact else 1.25 + 0.5 * distance  # wider the further the measured size is
        return Estimate(total, total / spread, total * spread, exact, same_model)


def phrase(estimate: Estimate) -> str:
    """"about 40 s" for a measured size, "20 s to 1 min 20 s" otherwise."""
    from .messages import format_duration as format_seconds  # the app's one duration format
    if estimate.exact:
        return f"about {format_seconds(estimate.seconds)}"
    low, high = format_seconds(estimate.low), format_seconds(estimate.high)
    return f"about {low}" if low == high else f"{low} to {high}"


def estimate_text(device: str, first: Estimate | None, later: Estimate | None, model_loaded: bool) -> str:
    """The page's line before an edit starts."""
    loading = "" if model_loaded else " The first edit also loads the model."
    if first is None:
        return (f"No time estimate yet: nothing has been measured on this server ({device}); the first edit "
                f"measures its speed, and later ones are estimated from it.{loading}")
    where = "" if first.exact else " (measured here at other sizes)" if first.same_model else (
        " (measured here with another video model)")
    text = f"Estimated time on this server ({device}): **{phrase(first)}** for the first edit of this clip{where}"
    if later is not None:
        text += f", {phrase(later)} for later edits of it (they reuse the inversion)"
    return text + "." + loading


def edit_stage_flops(config: Any, frames: int, size: tuple[int, int], cached_inversion: bool = False) -> dict | None:
    """UNet FLOPs per stage of the edit `config` plans at `frames` x `size` (width, height); None when the
    model's config cannot be read."""
    from anyv2v.bench import edit_flops, model_flops_per_call, predicted_unet_calls

    try:
        per_call = model_flops_per_call(config.resolved_model(), int(frames), int(size[1]), int(size[0]),
                                        backbone=config.backbone)
    except Exception:  # noqa: BLE001 - an estimate is optional; the edit itself reports real errors
        return None
    return edit_flops(predicted_unet_calls(config, cached_inversion), per_call)


class EditTimings(StepTimings):
    """StepTimings fed with finished edits (`anyv2v.pipeline.EditResult`) and asked about planned ones."""

    def record_edit(self, config: Any, result: Any, device: str) -> None:
        from anyv2v.bench import edit_flops, model_flops_per_call

        try:
            per_call = model_flops_per_call(config.resolved_model(), result.frames, result.size[1], result.size[0],
                                            backbone=config.backbone)
        except Exception:  # noqa: BLE001
            return
        self.record(device, (result.frames, *result.size), edit_flops(result.unet_calls, per_call), result.seconds or {},
                    config.backbone)

    def estimate_edit(self, config: Any, frames: int, size: tuple[int, int], device: str,
                      cached_inversion: bool = False) -> Estimate | None:
        flops = edit_stage_flops(config, frames, size, cached_inversion)
        return None if flops is None else self.estimate(device, (int(frames), *size), flops, config.backbone)

    def text(self, config: Any, frames: int, size: tuple[int, int], device: str, model_loaded: bool) -> str:
        first = self.estimate_edit(config, frames, size, device)
        later = self.estimate_edit(config, frames, size, device, cached_inversion=True) if first else None
        return estimate_text(device, first, later, model_loaded)

    def sampling_cost(self, config: Any, frames: int, size: tuple[int, int], device: str) -> float | None:
        """Measured seconds of one sampling step per inversion step for this edit; None before both stages were
        measured on this device (the progress bar then assumes the batch ratio)."""
        flops = edit_stage_flops(config, frames, size)
        if not flops or not flops.get("inversion") or not flops.get("sampling"):
            return None
        kind, key = device.split(":")[0], (int(frames), *size)
        with self._lock:  # both paces of one model (this one's when it has both): their ratio is the point
            models = [config.backbone] + sorted({k[2] for k in self._pace if k[0] == kind} - {config.backbone})
            for model in models:
                inversion = self._nearest_of(self._pace, (kind, "inversion"), key, model)
                sampling = self._nearest_of(self._pace, (kind, "sampling"), key, model)
                if inversion is not None and sampling is not None:
                    break
            else:
                return None
        sampling_steps = max(int(config.steps) - int(config.start_index), 1)
        per_sampling_step = flops["sampling"] * sampling[0] / sampling_steps
        per_inversion_step = flops["inversion"] * inversion[0] / max(int(config.inversion_steps), 1)
        return per_sampling_step / per_inversion_step
