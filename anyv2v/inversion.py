"""DDIM inversion of a clip as the AnyV2V reference does it: first-frame conditioned, empty prompt, no guidance.

The backbone gives the conditioning, the UNet call and the inversion scheduler (`anyv2v.backbones.base`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from PIL import Image

from .backbones.base import VideoBackbone
from .cache import Inversion
from .errors import CancelledError
from .memory import MemoryPlan, memory_plugins

# (stage, steps done, steps total)
ProgressCallback = Callable[[str, int, int], None]
StopCheck = Callable[[], bool]


def check_stop(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise CancelledError("the edit was cancelled; nothing was written.")


@torch.no_grad()
def invert(
    backbone: VideoBackbone,
    frames: list[Image.Image],
    inversion_steps: int,
    fps: int,
    seed: int,
    key: str,
    unet_calls: Counter | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    keep: set[int] | None = None,
    memory: MemoryPlan | None = None,
) -> Inversion:
    """Invert `frames`; keep the latent at every inversion timestep in `keep` (all when None), on the CPU in
    the model dtype. Keeping only the timesteps a sampling schedule reads bounds the memory of long clips."""
    scheduler = backbone.inversion_scheduler(inversion_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    generator = torch.Generator("cpu").manual_seed(seed)
    vae_frames = memory.vae_frames if memory is not None else None
    latents = backbone.encode_frames(frames, generator, compute_chunk=vae_frames, progress=progress).to(backbone.device)
    condition = backbone.inversion_condition(frames, seed, fps)

    stored: dict[int, torch.Tensor] = {}
    with backbone.on_device(backbone.unet), memory_plugins(backbone.unet, memory):
        for done, t in enumerate(scheduler.timesteps):
            check_stop(should_stop)
            model_output = backbone.forward(latents, t, condition)
            if unet_calls is not None:
                unet_calls[latents.shape[0]] += 1
            latents = scheduler.step(model_output, t, latents)
            if keep is None or timesteps[done] in keep:
                stored[timesteps[done]] = latents.to("cpu", backbone.dtype)
            if progress is not None:
                progress("inversion", done + 1, len(timesteps))
    return Inversion(latents=stored, key=key)
