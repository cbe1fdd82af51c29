"""Every setting of an edit in one plain dataclass; defaults are the paper's (arXiv 2403.14468)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, quoted

DEFAULT_MODEL = "ali-vilab/i2vgen-xl"
DEFAULT_BACKBONE = "i2vgen-xl"  # the video model (anyv2v.backbones) unless one is chosen
DEFAULT_NEGATIVE_PROMPT = (
    "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static, disfigured, "
    "disconnected limbs, Ugly faces, incomplete arms"
)
RESIZE_MODES = ("crop", "keep_aspect")
MAX_STEPS = 1000  # the model's training timesteps (I2VGen-XL: 1000); a model's own limit is checked on load too
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 100.0
MAX_START_SECONDS = 24 * 3600.0
MAX_CACHE_GB = 1e6
DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:\d+)?")
SOURCE_BRANCH_FRAMES = ("source", "edited")
MEMORY_MODES = ("auto", "on", "off")  # anyv2v.memory: bounded-memory options (same output)


def default_cache_dir() -> str:
    base = os.environ.get("ANYV2V_CACHE_DIR")
    if base:
        return base
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(xdg, "anyv2v", "inversions")

_TYPE_WORDS = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false"}


def check_types(config: Any) -> None:
    """Each field holds its declared type (YAML gives strings, lists, bools...): ConfigError otherwise.

    Numbers must be finite; whole numbers may come as 8.0 (a float that is whole).
    """
    for spec in fields(config):
        declared = str(spec.type).replace(" ", "")
        optional = declared.endswith("|None")
        kind = declared.removesuffix("|None")
        if kind not in _TYPE_WORDS:
            continue
        value = getattr(config, spec.name)
        if value is None and optional:
            continue
        words = _TYPE_WORDS[kind] + (" (or empty)" if optional else "")
        if kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{spec.name} must be {words}, got {quoted(value)} ({type(value).__name__}).")
            if not math.isfinite(value):
                raise ConfigError(f"{spec.name}={quoted(value)} is not a finite number; give {words}.")
            if kind == "int" and not float(value).is_integer():
                raise ConfigError(f"{spec.name}={quoted(value)} must be a whole number.")
        elif not isinstance(value, str if kind == "str" else bool):
            raise ConfigError(f"{spec.name} must be {words}, got {quoted(value)} ({type(value).__name__}).")


def _number_text(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _in_range(name: str, value: float, low: float, high: float, unit: str = "") -> None:
    if not low <= value <= high:
        low_text, high_text = _number_text(low), _number_text(high)
        raise ConfigError(
            f"{name}={_number_text(value)}{unit} is outside [{low_text}, {high_text}]; "
            f"use a value from {low_text} to {high_text}{unit}."
        )


def _whole_numbers(config: "EditConfig") -> "EditConfig":
    """Whole floats in int fields (8.0 from a YAML file or a UI) become ints."""
    changes = {
        spec.name: int(value)
        for spec in fields(config)
        if str(spec.type) == "int" and isinstance(value := getattr(config, spec.name), float) and value.is_integer()
    }
    return dataclasses.replace(config, **changes) if changes else config


@dataclass
class EditConfig:
    """Settings of one AnyV2V edit. Field names match the CLI flags and the YAML keys."""

    # backbone: the video model (anyv2v.backbones: i2vgen-xl, seine) and its weights (hub id or local folder;
    # for a backbone other than I2VGen-XL the I2VGen-XL default means "that backbone's own default")
    backbone: str = DEFAULT_BACKBONE
    model: str = DEFAULT_MODEL
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: float16 on cuda, float32 on cpu
    cpu_offload: bool = False
    # clip preparation
    frames: int = 16  # 0 = every frame of the clip at `fps`
    fps: int = 8  # sampling rate of the clip, the output and the UNet's fps condition
    start_time: float = 0.0  # seconds into the source video
    width: int = 512
    height: int = 512
    resize_mode: str = "crop"  # "crop": scale and center-crop; "keep_aspect": longest side, multiples of 8
    keep_audio: bool = False
    # inversion
    inversion_steps: int = 500
    inversion_save_steps: int | None = None  # SEINE: latents kept on this DDIM grid (None: inversion_steps // 2)
    seed: int = 8888
    cache_dir: str = field(default_factory=default_cache_dir)
    cache_max_gb: float = 20.0
    # sampling and injection
    steps: int = 50
    start_index: int = 0  # T' in the paper: sampling starts at timesteps[start_index]
    tau_conv: float = 0.2
    tau_sa: float = 0.2
    tau_ta: float = 0.5
    guidance: float = 9.0
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    random_ratio: float = 0.0
    # the source branch's first-frame condition: "source" (the method as described) or "edited" (ConsistI2V's
    # official code, its default there: the source branch sees the edited first frame)
    source_branch_frame: str = "source"
    # FrameInit (ConsistI2V only; off in the reference's editing scripts): the start latent's low frequencies from
    # the edited first frame diffused to this noise level (ConsistI2V's inference config: 850)
    frame_init: bool = False
    frame_init_noise_level: int = 850
    decode_chunk_size: int = 4
    # memory: "auto" turns the bounded-memory options on only when the estimated peak exceeds the free memory
    memory: str = "auto"

    def validate(self) -> "EditConfig":
        """Raise ConfigError naming the first bad setting and its allowed range; return self for chaining."""
        check_types(self)
        for name in ("tau_conv", "tau_sa", "tau_ta", "random_ratio"):
            _in_range(name, getattr(self, name), 0.0, 1.0)
        _in_range("steps", self.steps, 1, MAX_STEPS)
        if not 0 <= self.start_index < self.steps:
            raise ConfigError(
                f"start_index={self.start_index} is past the {self.steps}-step schedule; "
                f"use a value from 0 to {self.steps - 1}."
            )
        _in_range("inversion_steps", self.inversion_steps, 1, MAX_STEPS)
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode={quoted(self.resize_mode)} is not one of {', '.join(RESIZE_MODES)}.")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 32 or value % 8:
                raise ConfigError(
                    f"{name}={quoted(value)} must be a multiple of 8 and at least 32 (multiples of 64 such as 512 work best)."
                )
            if value > 2048:
                raise ConfigError(f"{name}={quoted(value)} is larger than 2048; use 512 (the model's training size).")
        if self.frames != 0 and not 2 <= self.frames <= 512:
            raise ConfigError(f"frames={quoted(self.frames)} must be between 2 and 512 (or 0 for the whole clip).")
        if not 1 <= self.fps <= 60:
            raise ConfigError(f"fps={quoted(self.fps)} must be between 1 and 60.")
        _in_range("start_time", self.start_time, 0.0, MAX_START_SECONDS, unit=" s")
        _in_range("guidance", self.guidance, 0.0, MAX_GUIDANCE)
        _in_range("seed", self.seed, 0, MAX_SEED)
        if self.dtype not in (None, "float16", "bfloat16", "float32"):
            raise ConfigError(f"dtype={quoted(self.dtype)} must be float16, bfloat16 or float32.")
        if self.device is not None and not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"device={quoted(self.device)} is not a device this engine runs on; use cpu, cuda or cuda:N.")
        _in_range("cache_max_gb", self.cache_max_gb, 0.0, MAX_CACHE_GB)
        _in_range("decode_chunk_size", self.decode_chunk_size, 1, 512)
        from .backbones import NAMES, backbone_class

        if self.backbone not in NAMES:
            raise ConfigError(f"backbone={quoted(self.backbone)} is not one of {', '.join(NAMES)}.")
        if self.inversion_save_steps is not None and not 1 <= self.inversion_save_steps <= self.inversion_steps:
            raise ConfigError(
                f"inversion_save_steps={self.inversion_save_steps} must be between 1 and inversion_steps="
                f"{self.inversion_steps} (or empty for half of them)."
            )
        if not self.model.strip() and backbone_class(self.backbone).default_model:  # SEINE: empty = its env var
            raise ConfigError("model is empty; give a hub id (default ali-vilab/i2vgen-xl) or a local folder.")
        if not self.cache_dir.strip():
            raise ConfigError("cache_dir is empty; give a folder for the inversion cache.")
        if self.source_branch_frame not in SOURCE_BRANCH_FRAMES:
            raise ConfigError(
                f"source_branch_frame={quoted(self.source_branch_frame)} is not one of {', '.join(SOURCE_BRANCH_FRAMES)}."
            )
        _in_range("frame_init_noise_level", self.frame_init_noise_level, 0, 999)
        if self.frame_init and not backbone_class(self.backbone).supports_frame_init:
            raise ConfigError(
                f"frame_init is ConsistI2V's FrameInit; {self.backbone} has none. Use --backbone consisti2v or drop "
                "frame_init."
            )
        if self.memory not in MEMORY_MODES:
            raise ConfigError(f"memory={quoted(self.memory)} is not one of {', '.join(MEMORY_MODES)}.")
        return self

    @classmethod
    def for_backbone(cls, name: str, **changes: Any) -> "EditConfig":
        """The defaults of backbone `name` (its `defaults` over ours), then `changes`."""
        from .backbones import backbone_class

        return cls(**{"backbone": name, **backbone_class(name).defaults, **changes})

    def resolved_model(self) -> str:
        """The weights to load: `model`, except that a backbone other than I2VGen-XL given I2VGen-XL's default
        (or nothing) loads its own (its env var, e.g. ANYV2V_SEINE_MODEL, else its default)."""
        from .backbones import backbone_class

        cls = backbone_class(self.backbone)
        if self.model.strip() and (self.model != DEFAULT_MODEL or cls.default_model == DEFAULT_MODEL):
            return self.model
        return cls.resolve_model("")

    def replace(self, **changes: Any) -> "EditConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EditConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        config = cls(**data)
        check_types(config)
        return _whole_numbers(config)

    def save_yaml(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load_yaml(
        cls, path: str | os.PathLike, base: "EditConfig | None" = None, backbone: str | None = None
    ) -> "EditConfig":
        """Settings from a YAML mapping, applied over `base` (else over the file's `preset:`, else the defaults),
        the defaults being those of `backbone` (else of the file's `backbone:`, else I2VGen-XL's)."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist.") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise ConfigError(f"config file {path} cannot be read: {reason}.") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of setting: value.")
        preset = data.pop("preset", None)
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"config file {path}: preset must be one of {', '.join(PRESETS)}, got {quoted(preset)}.")
        if base is None:
            backbone = backbone or data.get("backbone", DEFAULT_BACKBONE)
            if not isinstance(backbone, str):
                raise ConfigError(f"config file {path}: backbone must be text, got {quoted(backbone)}.")
            base = preset_config(preset, backbone) if preset else cls.for_backbone(backbone)
        bad_keys = [key for key in data if not isinstance(key, str)]
        if bad_keys:
            raise ConfigError(f"config file {path}: setting names must be text, got {quoted(bad_keys[0])}.")
        try:
            return cls.from_dict({**base.to_dict(), **data})  # rejects unknown keys and wrong types
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's settings: 500 DDIM inversion steps, 50 sampling steps, tau 0.2 / 0.2 / 0.5.
    "paper": {},
    # The reference's hosted demo: 100 inversion steps (5x less inversion work, same sampling).
    "fast": {"inversion_steps": 100},
}


def preset_config(name: str, backbone: str = DEFAULT_BACKBONE) -> EditConfig:
    """A preset over the backbone's defaults."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return EditConfig.for_backbone(backbone, **PRESETS[name])
