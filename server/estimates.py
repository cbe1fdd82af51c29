"""How long an edit will take on this server, before it starts."""

from __future__ import annotations

import logging
import threading

from anyv2v.config import EditConfig
from anyv2v.pipeline import EditResult

logger = logging.getLogger("anyv2v.app")

# Sustained UNet throughput (FLOP/s) before anything was measured in this process: fp16 on a data-centre GPU,
# fp32 on a few CPU cores. The first finished edit replaces it with the measured pace.
DEFAULT_THROUGHPUT = {"cuda": 60e12, "mps": 5e12, "cpu": 1e11}


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
        from anyv2v.bench import edit_flops, model_flops_per_call, predicted_unet_calls

        try:
            per_call = model_flops_per_call(config.resolved_model(), int(frames), int(size[1]), int(size[0]),
                                            backbone=config.backbone)
        except Exception as exc:  # noqa: BLE001 - an estimate is optional; the edit itself reports real errors
            logger.info("no time estimate: %s", exc)
            return None
        # The engine's own call plan (the source branch leaves the batch after the last injected step).
        flops = edit_flops(predicted_unet_calls(config, cached_inversion), per_call)["total"]
        return flops / self.throughput(device)

    def record(self, config: EditConfig, result: EditResult, device: str) -> None:
        """Refine the throughput with a finished edit (its UNet stages only)."""
        from anyv2v.bench import edit_flops, model_flops_per_call

        seconds = (result.seconds or {}).get("inversion", 0.0) + (result.seconds or {}).get("sampling", 0.0)
        try:
            per_call = model_flops_per_call(config.resolved_model(), result.frames, result.size[1], result.size[0],
                                            backbone=config.backbone)
        except Exception:  # noqa: BLE001
            return
        flops = edit_flops(result.unet_calls, per_call)["total"]
        if seconds > 0.05 and flops > 0:
            with self._lock:
                self.measured[device.split(":")[0]] = flops / seconds
