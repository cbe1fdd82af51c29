"""Loading video backbones by name, and keeping the loaded ones (the model code lives in `anyv2v.backbones`).

`Backbone` is the I2VGen-XL backbone (the default), kept importable here as before.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import torch

from .backbones import DEFAULT_BACKBONE, backbone_class
from .backbones.base import Condition, VideoBackbone, cat_conditions, check_model_reference, looks_like_path, pil_to_tensor
from .backbones.i2vgen_xl import Backbone, center_crop_wide, load_scheduler_config
from .device import resolve_device

__all__ = [
    "Backbone", "BackboneCache", "Condition", "VideoBackbone", "cat_conditions", "center_crop_wide",
    "check_model_reference", "load_backbone", "load_scheduler_config", "looks_like_path", "pil_to_tensor",
]


def load_backbone(
    model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False,
    backbone: str = DEFAULT_BACKBONE,
) -> VideoBackbone:
    """Load the `backbone` model from a hub id or a local folder (safetensors only)."""
    return backbone_class(backbone).load(model, device, dtype, cpu_offload)


class BackboneCache:
    """Keeps the most recently used backbones loaded so repeated edits skip the load (bounded)."""

    def __init__(self, max_entries: int = 1) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, VideoBackbone] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False,
        backbone: str = DEFAULT_BACKBONE,
    ) -> VideoBackbone:
        cls = backbone_class(backbone)
        torch_device, torch_dtype = resolve_device(device, dtype)
        path = os.path.abspath(model) if os.path.isdir(model) else model
        key = (path, str(torch_device), str(torch_dtype), cpu_offload, backbone)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            while len(self._entries) >= self.max_entries:
                self._entries.popitem(last=False)  # free the old weights before loading new ones
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            loaded = cls.load(model, device, dtype, cpu_offload)
            self._entries[key] = loaded
            return loaded

    def holds(
        self, model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False,
        backbone: str = DEFAULT_BACKBONE,
    ) -> bool:
        """Whether this model is loaded (a `get` would not load it)."""
        torch_device, torch_dtype = resolve_device(device, dtype)
        path = os.path.abspath(model) if os.path.isdir(model) else model
        key = (path, str(torch_device), str(torch_dtype), cpu_offload, backbone)
        with self._lock:
            return key in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
