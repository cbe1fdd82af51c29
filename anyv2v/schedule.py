"""Timestep grids of sampling and inversion, and which inversion step counts can serve a sampling schedule."""

from __future__ import annotations

import inspect

from .errors import ConfigError


def make_scheduler(config: dict, inverse: bool):
    """DDIM (or DDIM inverse) scheduler from a model's scheduler config."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    cls = DDIMInverseScheduler if inverse else DDIMScheduler
    # Keep only keys the class knows; the hub config carries DDIMScheduler-only keys.
    known = set(inspect.signature(cls.__init__).parameters)
    return cls.from_config({k: v for k, v in config.items() if k in known})


def sampling_timesteps(config: dict, steps: int) -> list[int]:
    """Descending sampling timesteps (leading spacing: 981, 961, ..., 1 for 50 steps on I2VGen-XL)."""
    scheduler = make_scheduler(config, inverse=False)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps.tolist()]


def _covers(inverse_scheduler, inversion_steps: int, needed: set[int]) -> bool:
    """Whether inverting with `inversion_steps` yields a latent at every needed timestep (and stays in range)."""
    inverse_scheduler.set_timesteps(inversion_steps)
    grid = inverse_scheduler.timesteps
    if len(grid) == 0 or int(grid.max()) >= inverse_scheduler.config.num_train_timesteps:
        return False  # e.g. 1000 steps reach t=1000, past the end of alphas_cumprod
    return needed <= set(grid.tolist())


def compatible_inversion_steps(config: dict, steps: int) -> list[int]:
    """All inversion step counts whose timesteps contain every sampling timestep of a `steps`-step edit."""
    needed = set(sampling_timesteps(config, steps))
    inverse = make_scheduler(config, inverse=True)
    total = int(inverse.config.num_train_timesteps)
    return [n for n in range(1, total + 1) if _covers(inverse, n, needed)]


def _ranges(values: list[int]) -> str:
    parts: list[str] = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def check_inversion_steps(config: dict, steps: int, inversion_steps: int) -> None:
    """Raise ConfigError listing the values that work when the inversion would miss a sampling timestep."""
    total = int(config.get("num_train_timesteps", 1000))
    for name, value in (("steps", steps), ("inversion_steps", inversion_steps)):
        if not 1 <= value <= total:
            raise ConfigError(f"{name}={value} is outside [1, {total}]: the model was trained with {total} timesteps.")
    needed = sampling_timesteps(config, steps)
    if _covers(make_scheduler(config, inverse=True), inversion_steps, set(needed)):
        return
    valid = compatible_inversion_steps(config, steps)
    raise ConfigError(
        f"inversion_steps={inversion_steps} does not produce latents at the {steps} sampling timesteps "
        f"({needed[0]}..{needed[-1]}); with steps={steps} use inversion_steps in: {_ranges(valid)}."
    )


def inversion_timesteps_kept(config: dict, inversion_steps: int, steps: int) -> set[int] | None:
    """Inversion timesteps a `steps`-step edit reads: its sampling timesteps (every start index, every
    injection), or None (keep all) when the inversion does not cover them.

    A 500-step inversion has 500 latents but a 50-step edit reads 50 of them; the kept set also serves every
    step count whose timesteps it contains (50 steps: t = 20 i + 1, so 25, 10, 5, 2 and 1 steps too).
    """
    needed = set(sampling_timesteps(config, steps))
    if not _covers(make_scheduler(config, inverse=True), inversion_steps, needed):
        return None
    return needed
