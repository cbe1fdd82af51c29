"""AnyV2V sampling: denoise from the inverted latent, conditioned on the edited first frame, with injection."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from PIL import Image

from .backbone import Backbone
from .cache import Inversion
from .injection import FeatureInjector, InjectionSchedule, Probe, SourceFeatures, StepState
from .inversion import ProgressCallback, StopCheck, check_stop
from .memory import MemoryPlan, memory_plugins
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
    memory: MemoryPlan | None = None,
) -> torch.Tensor:
    """Return the edited video's latents [1, C, F, h, w].

    Batch layout of each UNet call: [source, uncond, cond] (guidance > 1) or [source, cond] (guidance <= 1);
    once no injection is active the source branch is dropped (unless `keep_source_branch`), which gives the
    same result for less work. With `memory.sequential_branches` each branch is its own batch-1 call instead
    (source first, its injected features kept for that step only): the same result in a third of the memory.
    """
    sequential = memory is not None and memory.sequential_branches
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
    edit_names = ("uncond", "cond") if use_guidance else ("cond",)

    latents = inversion.at(int(timesteps[settings.start_index])).to(backbone.device, backbone.dtype)
    if settings.random_ratio > 0:
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
        latents = (1 - settings.random_ratio) * latents + settings.random_ratio * noise

    total = settings.steps - settings.start_index
    with (
        backbone.on_device(backbone.unet),
        memory_plugins(backbone.unet, memory),
        FeatureInjector(backbone.unet, probe=probe, max_tokens=memory.attention_tokens if memory else None) as injector,
    ):
        for done, step_index in enumerate(range(settings.start_index, settings.steps)):
            check_stop(should_stop)
            t = timesteps[step_index]
            injection = schedule.at(step_index)
            with_source = injection.any or keep_source_branch

            def source_branch():
                return inversion.at(int(t)).to(backbone.device, backbone.dtype), source_text, source_image, source_latents

            if sequential:
                features = SourceFeatures(step_index)
                if with_source:
                    state = StepState(step_index, 1, True, injection, "capture", features, ("source",))
                    with injector.step(state):
                        sample_, text_, image_, image_latents_ = source_branch()
                        backbone.unet_forward(sample_, t, text_, image_, image_latents_, settings.fps)  # output unused
                    if unet_calls is not None:
                        unet_calls[1] += 1
                outputs = []
                for name, text, image, image_latents in zip(edit_names, edit_text, edit_image, edit_image_latents):
                    role = "inject" if injection.any else "batched"
                    state = StepState(step_index, 1, False, injection, role, features, (name,))
                    with injector.step(state):
                        outputs.append(backbone.unet_forward(latents, t, text, image, image_latents, settings.fps))
                    if unet_calls is not None:
                        unet_calls[1] += 1
                del features  # the source features live for this step only
                edit_output = torch.cat(outputs)
            else:
                inputs = [latents] * len(edit_text)
                text, image, image_latents = list(edit_text), list(edit_image), list(edit_image_latents)
                names = edit_names
                if with_source:
                    source = source_branch()
                    inputs.insert(0, source[0])
                    text.insert(0, source[1])
                    image.insert(0, source[2])
                    image_latents.insert(0, source[3])
                    names = ("source", *names)
                state = StepState(step_index, len(inputs), with_source, injection, names=names)
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
