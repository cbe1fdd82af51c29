"""The video model (backbone) an edit runs on, as the page and the API offer it: names with the paper's labels,
each one's model source on this server and whether it is enabled here, the defaults the page applies when one is
chosen, and the inversion step counts on each one's own timestep grid (SEINE: latents kept on half of them)."""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

from anyv2v.config import DEFAULT_BACKBONE
from anyv2v.errors import AnyV2VError, ConfigError, quoted

from .settings import AppSettings, check_model_source

logger = logging.getLogger("anyv2v.app")

# Page settings a backbone has its own defaults for (the engine's `defaults` keys that the page shows).
PAGE_FIELDS = ("frames", "width", "height", "steps", "inversion_steps", "start_index", "guidance", "negative_prompt",
               "tau_conv", "tau_sa", "tau_ta")


def names() -> tuple[str, ...]:
    from anyv2v.backbones import NAMES

    return NAMES


def label(name: str) -> str:
    """The paper's name of backbone `name` (its own `label`); the name itself for an unknown one."""
    from anyv2v.backbones import NAMES, backbone_class

    return (backbone_class(name).label or name) if name in NAMES else name


def choices() -> list[tuple[str, str]]:
    """(label, name) for the page's "Video model" dropdown."""
    return [(label(n) + (" (default)" if n == DEFAULT_BACKBONE else ""), n) for n in names()]


def check_backbone(value: Any) -> str:
    """The backbone name a request asked for (None or blank: the default); ConfigError in one line otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_BACKBONE
    name = value.strip().lower() if isinstance(value, str) else value
    if name not in names():
        raise ConfigError(
            f"backbone {quoted(value)} is not a video model of this app; use one of {', '.join(names())} "
            f"(default {DEFAULT_BACKBONE})."
        )
    return name


def configuration_problem(settings: AppSettings, name: str) -> str | None:
    """Why `name` is not enabled on this server, for the operator (no model given, a missing or wrong local
    folder); None when it is configured. Cheap: no network (a hub id counts as configured)."""
    from anyv2v.backbone import looks_like_path

    model = settings.model_for(name)
    if model.strip() and not looks_like_path(model):
        return None
    return check_model_source(model, backbone=name)


def unavailable_sentence(name: str) -> str:
    """The one sentence a visitor sees for a video model this server has not enabled."""
    return f"{label(name)} is not enabled on this server; the operator can enable it (the server log says how)."


def require_available(settings: AppSettings, name: str) -> None:
    """ConfigError with the visitor's sentence when `name` is not enabled here (the details go to the log).
    I2VGen-XL's own problems keep their place: the page's banner and the engine's error."""
    if name == DEFAULT_BACKBONE:
        return
    problem = configuration_problem(settings, name)
    if problem:
        logger.warning("%s was asked for but is not enabled: %s", label(name), problem)
        raise ConfigError(unavailable_sentence(name))


def log_sources(settings: AppSettings) -> dict[str, str | None]:
    """At start-up: each other video model's source checked (as I2VGen-XL's is), problems logged; name -> problem."""
    problems: dict[str, str | None] = {}
    for name in names():
        if name == DEFAULT_BACKBONE:
            continue
        model = settings.model_for(name)
        problem = check_model_source(model, backbone=name)
        problems[name] = problem
        if problem is None:
            logger.info("video model %s: %s", label(name), model)
        elif not model.strip():
            logger.info("video model %s is off: %s", label(name), problem)
        else:
            logger.warning("video model %s cannot be loaded: %s", label(name), problem)
    return problems


# ---- timestep grids -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _read_plan(name: str, model: str):
    from anyv2v.backbones import backbone_class

    return backbone_class(name).timestep_plan(model)


_RETRY_READ_S = 300.0  # a model that could not be read is tried again after this (it may have been downloaded)
_unreadable_since: dict[tuple[str, str], float] = {}  # (backbone, model) -> when reading it last failed


def _plan(name: str, model: str):
    """The backbone's timestep plan from its scheduler config; its released model's grid when the model cannot be
    read yet (not configured, not downloaded). Only a plan read from the model is remembered; an unreadable model
    is tried again after a few minutes, not at every request (a hub lookup without network takes ~20 s)."""
    from anyv2v.backbones import backbone_class

    failed = _unreadable_since.get((name, model))
    if failed is None or time.monotonic() - failed > _RETRY_READ_S:
        try:
            plan = _read_plan(name, model)
            _unreadable_since.pop((name, model), None)
            return plan
        except (AnyV2VError, OSError, ValueError) as exc:
            logger.info("timestep grid of %s from the default scheduler (%s)", label(name), exc)
            if len(_unreadable_since) > 64:
                _unreadable_since.clear()
            _unreadable_since[(name, model)] = time.monotonic()
    return backbone_class(name).default_timestep_plan()


def _inversion_choices(name: str, model: str, steps: int) -> tuple[int, ...]:
    return tuple(_plan(name, model).compatible_inversion_steps(steps))


def inversion_choices(settings: AppSettings, name: str, steps: Any) -> list[int]:
    """Every inversion step count that serves a `steps`-step edit on `name`'s grid (SEINE: with latents kept on
    half of the inversion steps, the engine's default)."""
    return list(_inversion_choices(name, settings.model_for(name), max(int(steps or 1), 1)))


def derive_inversion_steps(settings: AppSettings, name: str, steps: Any, wanted: Any) -> int:
    """The valid inversion step count nearest `wanted` (the preset's), the larger on a tie."""
    valid = inversion_choices(settings, name, steps)
    if not valid:
        raise ConfigError(
            f"no inversion step count serves {steps} sampling steps on {label(name)}; choose another number of steps."
        )
    target = int(wanted)
    return min(valid, key=lambda n: (abs(n - target), -n))


# ---- the page's defaults and the API's ------------------------------------------------------------------------


def page_defaults(settings: AppSettings, name: str) -> dict[str, Any]:
    """The page settings `name` runs with on this server (its defaults under the server's preset), within the
    app's limits, the inversion steps on its own grid."""
    base = settings.base_config(name)
    values = {field: getattr(base, field) for field in PAGE_FIELDS}
    values["frames"] = min(values["frames"], settings.max_frames)
    values["width"] = min(values["width"], settings.max_size)
    values["height"] = min(values["height"], settings.max_size)
    values["inversion_steps"] = derive_inversion_steps(settings, name, base.steps, base.inversion_steps)
    return values


def guidance_maximum() -> float:
    """The page's guidance slider maximum: 20, or room above the highest backbone default (ConsistI2V: 35 -> 50).
    Fixed when the page is built (Gradio checks values against the maximum it was built with)."""
    from anyv2v.backbones import backbone_class
    from anyv2v.config import EditConfig

    highest = max(float(backbone_class(n).defaults.get("guidance", EditConfig.guidance)) for n in names())
    return max(20.0, 10.0 * math.ceil((highest + 10.0) / 10.0))


def _number(value: float) -> str:
    return f"{value:g}"


def defaults_note(settings: AppSettings, name: str) -> str:
    """What choosing `name` did, in one line: its defaults applied, or that it is not enabled here."""
    if name != DEFAULT_BACKBONE and configuration_problem(settings, name):
        return unavailable_sentence(name)
    values = page_defaults(settings, name)
    negative = "no negative prompt" if not values["negative_prompt"] else "its negative prompt"
    return (
        f"Applied {label(name)}'s defaults: {values['width']}×{values['height']}, {values['frames']} frames, "
        f"{values['steps']} steps ({values['inversion_steps']} inversion steps), guidance "
        f"{_number(values['guidance'])}, start index {values['start_index']}, {negative}."
    )


def api_values(settings: AppSettings, name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The API's settings for `name`: its defaults are I2VGen-XL's (the endpoint's signature), so a setting left
    at I2VGen-XL's default means `name`'s own default (None: build_config takes the backbone's base), as the
    engine reads the I2VGen-XL model default for another backbone."""
    if name == DEFAULT_BACKBONE:
        return dict(given)
    default, own = settings.base_config(), settings.base_config(name)
    values = dict(given)
    for field, value in given.items():
        if field not in PAGE_FIELDS or field == "inversion_steps":
            continue
        if getattr(default, field) != getattr(own, field) and _same(value, getattr(default, field)):
            values[field] = None
    return values


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, str):
        return value == default
    try:
        return abs(float(value) - float(default)) < 1e-9
    except (TypeError, ValueError):
        return False
