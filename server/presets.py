"""Presets by intent (how much may change) and step counts that cannot be wrong (inversion steps that serve
the sampling steps on the model's own timestep grid)."""

from __future__ import annotations

import functools
import json
from typing import Any

from anyv2v.config import PRESETS, preset_config
from anyv2v.errors import AnyV2VError, ConfigError


def preset_values(name: str) -> dict[str, int]:
    """Steps and inversion steps of an engine preset."""
    config = preset_config(name)
    return {"steps": config.steps, "inversion_steps": config.inversion_steps}


def quality_label(steps_value: Any, inversion_value: Any) -> str:
    """The engine preset with these steps and inversion steps, or "custom" (the quality dropdown follows them)."""
    for name in PRESETS:
        if preset_values(name) == {"steps": int(steps_value or 0), "inversion_steps": int(inversion_value or 0)}:
            return name
    return "custom"


# The four injection settings by what the user wants, from the paper's defaults and the reference's tuned
# examples (shared/data/demo/manifest.json): new objects or shapes ("party hat", "Darth Vader": 0.1/0.1/1.0),
# the paper's defaults (0.2/0.2/0.5), and looks that keep every shape ("robot", "Van Gogh": 1.0/1.0/1.0).
CHANGE_PRESETS: dict[str, dict[str, float]] = {
    "subtle": {"tau_conv": 1.0, "tau_sa": 1.0, "tau_ta": 1.0, "start_index": 0},
    "default": {"tau_conv": 0.2, "tau_sa": 0.2, "tau_ta": 0.5, "start_index": 0},
    "strong": {"tau_conv": 0.1, "tau_sa": 0.1, "tau_ta": 1.0, "start_index": 0},
}
CHANGE_PRESET_LABELS = {
    "subtle": "Subtle: keep every shape (colours, style, texture)",
    "default": "Default (the paper's settings)",
    "strong": "Strong: new or reshaped objects, same motion",
    "custom": "Custom",
}


def change_preset_of(tau_conv: Any, tau_sa: Any, tau_ta: Any, start_index: Any) -> str:
    """The intent preset these four values match, or "custom" (so the preset label follows the sliders)."""
    try:
        given = {"tau_conv": float(tau_conv), "tau_sa": float(tau_sa), "tau_ta": float(tau_ta),
                 "start_index": int(start_index)}
    except (TypeError, ValueError):
        return "custom"
    for name, values in CHANGE_PRESETS.items():
        if all(abs(given[key] - value) < 1e-6 for key, value in values.items()):
            return name
    return "custom"


SUGGESTED_NAMES = ("tau_conv", "tau_sa", "tau_ta", "start_index")  # the settings an editor may suggest


def suggested_settings(editor_title: str, video_settings: dict[str, Any] | None) -> tuple[dict[str, Any], str | None, str]:
    """An editor's suggested video settings: the values it sets (of SUGGESTED_NAMES), the preset by intent they
    make (None without suggestions) and the sentence that says so ("" without suggestions)."""
    values = dict(video_settings or {})
    if not values:
        return {}, None, ""
    preset = change_preset_of(*[values.get(name, 0) for name in SUGGESTED_NAMES])
    listed = ", ".join(f"{k} {v:g}" for k, v in values.items())
    return ({k: v for k, v in values.items() if k in SUGGESTED_NAMES}, preset,
            f" Suggested settings for {editor_title} edits applied in step 3 ({listed}).")


@functools.lru_cache(maxsize=1)
def scheduler_config(model: str) -> dict:
    """The model's scheduler config; I2VGen-XL's own when the model cannot be reached (same timestep grid)."""
    from anyv2v.backbone import load_scheduler_config
    from anyv2v.tiny import I2VGEN_XL_SCHEDULER

    try:
        return load_scheduler_config(model)
    except AnyV2VError:
        return dict(I2VGEN_XL_SCHEDULER)


@functools.lru_cache(maxsize=64)
def _valid_inversion_steps(config_json: str, steps: int) -> tuple[int, ...]:
    from anyv2v.schedule import compatible_inversion_steps

    return tuple(compatible_inversion_steps(json.loads(config_json), steps))


def valid_inversion_steps(config: dict, steps: int) -> list[int]:
    """Every inversion step count that serves a `steps`-step edit (its timesteps contain each sampling one)."""
    return list(_valid_inversion_steps(json.dumps(config, sort_keys=True, default=str), int(steps)))


def derive_inversion_steps(config: dict, steps: int, wanted: int) -> int:
    """The valid inversion step count closest to `wanted` (the preset's), preferring the larger on a tie."""
    valid = valid_inversion_steps(config, steps)
    if not valid:
        raise ConfigError(f"no inversion step count serves {steps} sampling steps; choose another number of steps.")
    return min(valid, key=lambda n: (abs(n - wanted), -n))
