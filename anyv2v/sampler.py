"""AnyV2V sampling: denoise from the inverted latent, conditioned on the edited first frame, with injection."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from PIL import Image

from .backbone import Backbone
from .cache import Inversion
from .injection import FeatureInjector, InjectionSchedule, Probe, StepState
from .inversion import ProgressCallback, StopCheck, check_stop
from .schedule import make_scheduler


@dataclass(frozen=True)
class SamplingSettings:
    prompt: str
    negative_prompt: str
    steps: int
    start_index: int
    guidance: float
    tau_conv: float
    tau_sa: float
    tau_ta: float
    random_ratio: float
    fps: int
    seed: int

    @classmethod
    def from_config(cls, config, prompt: str) -> "SamplingSettings":
        """The sampling part of an EditConfig, plus the prompt."""
        names = [name for name in cls.__dataclass_fields__ if name != "prompt"]
        return cls(prompt=prompt, **{name: getattr(config, name) for name in names})


@torch.no_grad()
def sample(
    backbone: Backbone,
    inversion: Inversion,
    source_frame: Image.Image,
    edited_frame: Image.Image,
    settings: SamplingSettings,
    unet_calls: Counter | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    probe: Probe | None = None,
    keep_source_branch: bool = False,
) -> torch.Tensor:
    """Return the edited video's latents [1, C, F, h, w].

    Batch layout of each UNet call: [source, uncond, cond] (guidance > 1) or [source, cond] (guidance <= 1);
    once no injection is active the source branch is dropped (unless `keep_source_branch`), which gives the
    same result for less work.
    """
    scheduler = make_scheduler(backbone.scheduler_config, inverse=False)
    scheduler.set_timesteps(settings.steps)
    timesteps = scheduler.timesteps
    schedule = InjectionSchedule.from_taus(settings.steps, settings.tau_conv, settings.tau_sa, settings.tau_ta)
    num_frames = inversion.at(int(timesteps[settings.start_index])).shape[2]
    use_guidance = settings.guidance > 1.0

    # Conditioning of each branch. The source branch repeats the inversion's conditioning.
    source_text, uncond_text, cond_text = backbone.encode_prompt(["", settings.negative_prompt, settings.prompt]).chunk(3)
    source_image = backbone.encode_image(source_frame)
    edited_image = backbone.encode_image(edited_frame)
    source_latents = backbone.first_frame_latents(source_frame, num_frames, settings.seed)
    edited_latents = backbone.first_frame_latents(edited_frame, num_frames, settings.seed)
    edit_text = [uncond_text, cond_text] if use_guidance else [cond_text]
    edit_image = [torch.zeros_like(edited_image), edited_image] if use_guidance else [edited_image]
    edit_image_latents = [edited_latents] * len(edit_text)

    latents = inversion.at(int(timesteps[settings.start_index])).to(backbone.device, backbone.dtype)
    if settings.random_ratio > 0:
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
        latents = (1 - settings.random_ratio) * latents + settings.random_ratio * noise

    total = settings.steps - settings.start_index
    with backbone.on_device(backbone.unet), FeatureInjector(backbone.unet, probe=probe) as injector:
        for done, step_index in enumerate(range(settings.start_index, settings.steps)):
            check_stop(should_stop)
            t = timesteps[step_index]
            injection = schedule.at(step_index)
            with_source = injection.any or keep_source_branch
            inputs = [latents] * len(edit_text)
            text, image, image_latents = list(edit_text), list(edit_image), list(edit_image_latents)
            if with_source:
                inputs.insert(0, inversion.at(int(t)).to(backbone.device, backbone.dtype))
                text.insert(0, source_text)
                image.insert(0, source_image)
                image_latents.insert(0, source_latents)
            state = StepState(step_index, len(inputs), with_source, injection)
            with injector.step(state):
                output = backbone.unet_forward(
                    torch.cat(inputs), t, torch.cat(text), torch.cat(image), torch.cat(image_latents), settings.fps
                )
            if unet_calls is not None:
                unet_calls[len(inputs)] += 1
            edit_output = output[1:] if with_source else output
            if use_guidance:
                uncond, cond = edit_output.chunk(2)
                model_output = uncond + settings.guidance * (cond - uncond)
            else:
                model_output = edit_output
            latents = scheduler.step(model_output, t, latents).prev_sample
            if progress is not None:
                progress("sampling", done + 1, total)
    return latents
