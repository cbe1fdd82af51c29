"""Measurements of an edit: UNet calls, FLOPs (counted on the meta device), seconds per stage, peak memory."""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch


def unet_flops_per_call(unet_config: dict, frames: int, height: int, width: int, vae_scale: int = 8) -> int:
    """FLOPs of one batch-1 UNet forward at this clip size, counted on the meta device (no memory, no weights)."""
    from diffusers import I2VGenXLUNet
    from torch.utils.flop_counter import FlopCounterMode

    config = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
    h, w = height // vae_scale, width // vae_scale
    with torch.device("meta"):
        unet = I2VGenXLUNet.from_config(config)
        channels = unet.config.in_channels
        cross = unet.config.cross_attention_dim
        with FlopCounterMode(display=False) as counter:
            unet(
                torch.empty(1, channels, frames, h, w),
                torch.tensor(981),
                fps=torch.tensor([8]),
                image_latents=torch.empty(1, channels, frames, h, w),
                image_embeddings=torch.empty(1, 1, cross),
                encoder_hidden_states=torch.empty(1, 77, cross),
            )
    return int(counter.get_total_flops())


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
