"""Measurements of an edit: UNet calls, FLOPs (counted on the meta device), seconds per stage, peak memory."""

from __future__ import annotations

import functools
import resource
import sys
from typing import Any

import torch

from .config import DEFAULT_BACKBONE


def unet_flops_per_call(
    unet_config: dict, frames: int, height: int, width: int, vae_scale: int = 8, backbone: str = DEFAULT_BACKBONE
) -> int:
    """FLOPs of one batch-1 UNet forward at this clip size, counted on the meta device (no memory, no weights).

    Counting traces every op of the forward in Python (seconds even for a tiny UNet), and a server asks for the
    same few sizes at every request and progress update: the count is remembered per (config, size, backbone)."""
    import json

    config = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
    size = (int(frames), int(height) // vae_scale, int(width) // vae_scale, backbone)
    try:
        key = json.dumps(config, sort_keys=True)
    except TypeError:  # not a config read from a file: count it, unremembered
        return _count_unet_flops(config, *size)
    return _remembered_unet_flops(key, *size)


@functools.lru_cache(maxsize=256)
def _remembered_unet_flops(config_json: str, frames: int, h: int, w: int, backbone: str) -> int:
    import json

    return _count_unet_flops(json.loads(config_json), frames, h, w, backbone)


def _count_unet_flops(config: dict, frames: int, h: int, w: int, backbone: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from .backbones import backbone_class

    with torch.device("meta"):
        call = backbone_class(backbone).meta_unet_call(config, frames, h, w)
        with FlopCounterMode(display=False) as counter:
            call()
    return int(counter.get_total_flops())


def model_flops_per_call(
    model: str, frames: int, height: int, width: int, unet_config: dict | None = None, backbone: str = DEFAULT_BACKBONE
) -> int:
    """`unet_flops_per_call` for the model at `model` (hub id or folder; its UNet config file only is read)."""
    from .backbones import backbone_class

    if unet_config is None:
        unet_config = backbone_class(backbone).read_unet_config(model)
    return unet_flops_per_call(unet_config, frames, height, width, backbone=backbone)


def edit_flops(unet_calls: dict[str, Any], flops_per_call: int) -> dict[str, int]:
    """FLOPs per stage: a batch-B call costs B batch-1 calls (every layer is batch-linear)."""
    inversion = unet_calls["inversion"] * flops_per_call
    sampling = sum(int(batch) * calls for batch, calls in unet_calls["sampling"].items()) * flops_per_call
    return {"inversion": inversion, "sampling": sampling, "total": inversion + sampling}


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process_max_rss", "bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


def reference_unet_calls(
    inversion_steps: int, steps: int, backbone: str = DEFAULT_BACKBONE, start_index: int = 0
) -> dict[str, Any]:
    """The official implementation's calls for the same settings (the backbone's `reference_unet_calls`; I2VGen-XL:
    every inversion step at batch 1, every sampling step at batch 3). A backbone whose count depends on the start
    index takes it as `start_index`."""
    import inspect

    from .backbones import backbone_class

    method = backbone_class(backbone).reference_unet_calls
    if "start_index" in inspect.signature(method).parameters:
        return method(inversion_steps, steps, start_index=start_index)
    return method(inversion_steps, steps)


def predicted_unet_calls(config, cached_inversion: bool = False, sequential: bool = False) -> dict[str, Any]:
    """The UNet calls our engine makes for `config` (what `run_edit` then reports), without running it."""
    from collections import Counter

    from .injection import InjectionSchedule

    schedule = InjectionSchedule.from_taus(config.steps, config.tau_conv, config.tau_sa, config.tau_ta)
    edit_branches = 2 if config.guidance > 1.0 else 1
    sampling: Counter = Counter()
    for step_index in range(config.start_index, config.steps):
        branches = edit_branches + (1 if schedule.at(step_index).any else 0)
        if sequential:
            sampling[1] += branches
        else:
            sampling[branches] += 1
    return {
        "inversion": 0 if cached_inversion else config.inversion_steps,
        "sampling": {str(batch): calls for batch, calls in sorted(sampling.items(), reverse=True)},
    }


# Share of the device's measured matmul throughput a UNet forward reaches (convolutions, norms and attention
# run below matmul speed). Calibrated on this project's CPU runs (README "Measured"); GPUs are similar or better.
UNET_EFFICIENCY = {"cpu": 0.5, "cuda": 0.5}


def device_flops_per_second(device: torch.device | str, dtype: torch.dtype = torch.float32, seconds: float = 0.2) -> float:
    """Measured matmul throughput of `device` in `dtype` (FLOP/s), from square matmuls for about `seconds`."""
    import time

    device = torch.device(device)
    size = 2048 if device.type == "cuda" else 512
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # CPUs run half precision through fp32 paths
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm up
    sync()
    runs, start = 0, time.perf_counter()
    while True:
        a @ b
        runs += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * runs / elapsed


def estimate_seconds(
    config,
    device: torch.device | str | None = None,
    frames: int | None = None,
    cached_inversion: bool = False,
    unet_config: dict | None = None,
    throughput: float | None = None,
) -> dict[str, Any]:
    """Time estimate of an edit before it starts: FLOPs of the UNet calls / (measured throughput x efficiency).

    `frames` is the clip's frame count (needed when `config.frames` is 0, the whole clip). The UNet config is
    read from the model (config file only) unless given. Returns seconds (total, inversion, sampling), the
    FLOPs, the throughput used and the calls counted.
    """
    from .device import resolve_device

    torch_device, dtype = resolve_device(str(device) if device is not None else config.device, config.dtype)
    frames = int(frames or config.frames)
    if frames < 1:
        raise ValueError("estimate_seconds needs the frame count of a whole-clip edit (frames=...)")
    backbone = config.backbone
    per_call = model_flops_per_call(config.resolved_model(), frames, config.height, config.width, unet_config, backbone)
    calls = predicted_unet_calls(config, cached_inversion)
    flops = edit_flops(calls, per_call)
    if throughput is None:
        throughput = device_flops_per_second(torch_device, dtype)
    effective = throughput * UNET_EFFICIENCY.get(torch_device.type, 0.5)
    return {
        "seconds": round(flops["total"] / effective, 1),
        "inversion_seconds": round(flops["inversion"] / effective, 1),
        "sampling_seconds": round(flops["sampling"] / effective, 1),
        "flops": flops,
        "device": str(torch_device),
        "device_flops_per_second": throughput,
        "unet_efficiency": UNET_EFFICIENCY.get(torch_device.type, 0.5),
        "unet_calls": calls,
    }
