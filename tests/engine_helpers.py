"""The small edit the engine tests share: the tiny model on a 64x64, 8-frame clip."""

from __future__ import annotations

from anyv2v.config import EditConfig

SIZE = 64
FRAMES = 8


def small_config(tiny_model, cache_dir, steps: int, **changes) -> EditConfig:
    base = EditConfig(
        model=str(tiny_model), width=SIZE, height=SIZE, frames=FRAMES, steps=steps, inversion_steps=steps,
        cache_dir=str(cache_dir),
    )
    return base.replace(**changes).validate()
