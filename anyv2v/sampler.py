"""AnyV2V sampling: denoise from the inverted latent, conditioned on the edited first frame, with injection."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from PIL import Image

from .backbones.base import VideoBackbone, cat_conditions
from .cache import Inversion
from .injection import FeatureInjector, InjectionSchedule, Probe, SourceFeatures, StepState
from .inversion import ProgressCallback, StopCheck, check_stop
from .memory import MemoryPlan, memory_plugins


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
    inversion_steps: int = 0  # which inverted latents exist (a backbone may start from the noisiest one)
    inversion_save_steps: int | None = None
    source_branch_frame: str = "source"  # the source branch's first frame: "source", or "edited" (ConsistI2V's reference)
    frame_init: bool = False  # ConsistI2V's FrameInit on the start latent
    frame_init_noise_level: int = 850

    @classmethod
    def from_config(cls, config, prompt: str) -> "SamplingSettings":
        """The sampling part of an EditConfig, plus the prompt."""
        names = [name for name in cls.__dataclass_fields__ if name != "prompt"]
        return cls(prompt=prompt, **{name: getattr(config, name) for name in names})


@torch.no_grad()
def sample(
    backbone: VideoBackbone,
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
    noise: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Return the edited video's latents [1, C, F, h, w].

    Batch layout of each UNet call: the backbone's `batch_order` (I2VGen-XL: [source, uncond, cond]), without
    uncond when guidance <= 1; the source branch reads the inverted latent at `plan.source_timestep(t)`.
    Once no injection is active the source branch is dropped (unless `keep_source_branch`), which gives the
    same result for less work. With `memory.sequential_branches` each branch is its own batch-1 call instead
    (source first, its injected features kept for that step only): the same result in a third of the memory.
    A stochastic sampler (SEINE's DDPM) draws its per-step noise from a generator seeded by `settings.seed`,
    or takes `noise` ({t: tensor}) when given.
    """
    sequential = memory is not None and memory.sequential_branches
    scheduler = backbone.sampling_scheduler(settings.steps, settings.seed, noise)
    timesteps = scheduler.timesteps
    plan = backbone.plan
    schedule = InjectionSchedule.from_taus(settings.steps, settings.tau_conv, settings.tau_sa, settings.tau_ta)
    start = plan.start_timestep(
        [int(t) for t in timesteps], settings.start_index, settings.inversion_steps, settings.inversion_save_steps
    )
    num_frames = inversion.at(start).shape[2]
    use_guidance = settings.guidance > 1.0

    # Conditioning of each branch. The source branch repeats the inversion's conditioning.
    branch_frame = source_frame if settings.source_branch_frame == "source" else edited_frame
    conditions = backbone.sampling_conditions(
        branch_frame, edited_frame, settings.prompt, settings.negative_prompt, num_frames, settings.seed, settings.fps
    )
    edit_names = tuple(name for name in backbone.batch_order if name != "source" and (use_guidance or name == "cond"))
    source_condition = conditions["source"]

    latents = inversion.at(start).to(backbone.device, backbone.dtype)
    if settings.random_ratio > 0:
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        fresh = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
        latents = (1 - settings.random_ratio) * latents + settings.random_ratio * fresh
    if settings.frame_init:
        latents = backbone.frame_init(latents, conditions, settings.frame_init_noise_level)
    latents = backbone.sampling_start(latents, conditions)

    total = settings.steps - settings.start_index
    with (
        backbone.on_device(backbone.unet),
        memory_plugins(backbone.unet, memory),
        FeatureInjector(
            backbone.unet, probe=probe, max_tokens=memory.attention_tokens if memory else None,
            sites=backbone.injection_sites(),
        ) as injector,
    ):
        for done, step_index in enumerate(range(settings.start_index, settings.steps)):
            check_stop(should_stop)
            t = timesteps[step_index]
            injection = schedule.at(step_index)
            with_source = injection.any or keep_source_branch

            def source_latents():
                return inversion.at(plan.source_timestep(int(t))).to(backbone.device, backbone.dtype)

            if sequential:
                features = SourceFeatures(step_index)
                if with_source:
                    state = StepState(step_index, 1, True, injection, "capture", features, ("source",))
                    with injector.step(state):
                        backbone.forward(source_latents(), t, source_condition)  # output unused
                    if unet_calls is not None:
                        unet_calls[1] += 1
                outputs = {}
                for name in edit_names:
                    role = "inject" if injection.any else "batched"
                    state = StepState(step_index, 1, False, injection, role, features, (name,))
                    with injector.step(state):
                        outputs[name] = backbone.forward(latents, t, conditions[name])
                    if unet_calls is not None:
                        unet_calls[1] += 1
                del features  # the source features live for this step only
            else:
                inputs = [latents] * len(edit_names)
                branch_conditions = [conditions[name] for name in edit_names]
                names = edit_names
                if with_source:
                    inputs.insert(0, source_latents())
                    branch_conditions.insert(0, source_condition)
                    names = ("source", *names)
                state = StepState(step_index, len(inputs), with_source, injection, names=names)
                with injector.step(state):
                    output = backbone.forward(torch.cat(inputs), t, cat_conditions(branch_conditions))
                if unet_calls is not None:
                    unet_calls[len(inputs)] += 1
                edit_output = output[1:] if with_source else output
                outputs = dict(zip(edit_names, edit_output.chunk(len(edit_names))))
            if use_guidance:
                uncond, cond = outputs["uncond"], outputs["cond"]
                model_output = uncond + settings.guidance * (cond - uncond)
            else:
                model_output = outputs["cond"]
            latents = scheduler.step(model_output, t, latents)
            if progress is not None:
                progress("sampling", done + 1, total)
    return latents
