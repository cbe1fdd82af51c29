"""Video backbones by name: one module (or package) per image-to-video model, all behind `base.VideoBackbone`."""

from __future__ import annotations

import importlib

from ..config import DEFAULT_BACKBONE
from ..errors import ConfigError
# name -> (module, class)
BACKBONES = {
    "i2vgen-xl": ("anyv2v.backbones.i2vgen_xl", "Backbone"),
    "seine": ("anyv2v.backbones.seine", "SeineBackbone"),
    "consisti2v": ("anyv2v.backbones.consisti2v", "ConsistI2VBackbone"),
}
NAMES = tuple(BACKBONES)


def backbone_class(name: str):
    """The backbone class registered as `name`; ConfigError naming the choices otherwise."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone={name!r} is not one of {', '.join(NAMES)}; choose one with --backbone.")
    module, cls = BACKBONES[name]
    return getattr(importlib.import_module(module), cls)
