"""DDIM inversion of a clip as the AnyV2V reference does it: first-frame conditioned, empty prompt, no guidance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from PIL import Image

from .backbone import Backbone
from .cache import Inversion
from .errors import CancelledError
from .memory import MemoryPlan, memory_plugins
from .schedule import make_scheduler

# (stage, steps done, steps total)
ProgressCallback = Callable[[str, int, int], None]
StopCheck = Callable[[], bool]


def check_stop(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise CancelledError("the edit was cancelled; nothing was written.")


@torch.no_grad()
def invert(
    backbone: Backbone,
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
    scheduler = make_scheduler(backbone.scheduler_config, inverse=True)
    scheduler.set_timesteps(inversion_steps)
    timesteps = scheduler.timesteps.tolist()
    generator = torch.Generator("cpu").manual_seed(seed)
    vae_frames = memory.vae_frames if memory is not None else None
    latents = backbone.encode_frames(frames, generator, compute_chunk=vae_frames, progress=progress).to(backbone.device)
    text = backbone.encode_prompt([""])
    image_embeddings = backbone.encode_image(frames[0])
    image_latents = backbone.first_frame_latents(frames[0], len(frames), seed)

    stored: dict[int, torch.Tensor] = {}
    with backbone.on_device(backbone.unet), memory_plugins(backbone.unet, memory):
        for done, t in enumerate(scheduler.timesteps):
            check_stop(should_stop)
            model_output = backbone.unet_forward(latents, t, text, image_embeddings, image_latents, fps)
            if unet_calls is not None:
                unet_calls[latents.shape[0]] += 1
            latents = scheduler.step(model_output, t, latents).prev_sample
            if keep is None or timesteps[done] in keep:
                stored[timesteps[done]] = latents.to("cpu", backbone.dtype)
            if progress is not None:
                progress("inversion", done + 1, len(timesteps))
    return Inversion(latents=stored, key=key)
