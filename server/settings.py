"""Server-side settings of the app from ANYV2V_* environment variables (models, device, limits, folders,
retention, the login), checked at start, the app's command line over them, and the start-up check of the
video model's source."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyv2v.config import DEFAULT_BACKBONE, DEFAULT_MODEL, PRESETS, EditConfig, default_cache_dir, preset_config
from anyv2v.errors import AnyV2VError


def _env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _env_number(env: Mapping[str, str], name: str, default: float, kind: type = int) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} must be a {'whole number' if kind is int else 'number'}.") from None
    if not math.isfinite(value):
        raise SystemExit(f"error: {name}={raw!r} must be a finite number.")
    return value


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """ANYV2V_AUTH as (user, password) for Gradio's login page; None when unset. The password may hold ':'."""
    value = (value or "").strip()
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise SystemExit("error: ANYV2V_AUTH must look like user:password (both parts non-empty).")
    return user.strip(), password


@dataclass
class AppSettings:
    """Server-side settings of the app (not per request): models, device, limits, folders and retention."""

    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str | None = None
    cpu_offload: bool = False
    cache_dir: str = field(default_factory=default_cache_dir)
    cache_max_gb: float = 20.0
    output_dir: str = "outputs"
    preset: str = "fast"  # the reference's hosted demo: 100 inversion steps; "paper" uses 500
    max_frames: int = 128
    max_size: int = 1024
    max_upload_mb: int = 200
    queue_size: int = 16
    gpu_duration: int = 300  # seconds a ZeroGPU call may take
    preload: bool = False
    # Memory for prepared clips (working-size frames only), shared by every visitor.
    clip_cache_mb: int = 512
    # Outputs, previews and candidates older than this, or beyond this total (oldest first), are deleted.
    keep_hours: float = 24.0
    output_max_gb: float = 5.0
    auth: tuple[str, str] | None = None
    # The other video models' sources (backbone name -> hub id or folder) from their env vars
    # (ANYV2V_SEINE_MODEL, ANYV2V_CONSISTI2V_MODEL); I2VGen-XL's is `model` (ANYV2V_MODEL).
    backbone_models: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "AppSettings":
        """Settings from ANYV2V_* environment variables (see README.md); unset ones keep their defaults."""
        env = os.environ if env is None else env
        base = cls()
        return cls(
            model=env.get("ANYV2V_MODEL", "").strip() or DEFAULT_MODEL,
            device=env.get("ANYV2V_DEVICE", "").strip() or None,
            dtype=env.get("ANYV2V_DTYPE", "").strip() or None,
            cpu_offload=_env_bool(env.get("ANYV2V_CPU_OFFLOAD")),
            cache_dir=env.get("ANYV2V_CACHE_DIR", "").strip() or base.cache_dir,
            cache_max_gb=_env_number(env, "ANYV2V_CACHE_MAX_GB", base.cache_max_gb, float),
            output_dir=env.get("ANYV2V_OUTPUT_DIR", "").strip() or base.output_dir,
            preset=env.get("ANYV2V_PRESET", "").strip() or base.preset,
            max_frames=_env_number(env, "ANYV2V_MAX_FRAMES", base.max_frames),
            max_size=_env_number(env, "ANYV2V_MAX_SIZE", base.max_size),
            max_upload_mb=_env_number(env, "ANYV2V_MAX_UPLOAD_MB", base.max_upload_mb),
            queue_size=_env_number(env, "ANYV2V_QUEUE_SIZE", base.queue_size),
            gpu_duration=_env_number(env, "ANYV2V_GPU_DURATION", base.gpu_duration),
            preload=_env_bool(env.get("ANYV2V_PRELOAD")),
            clip_cache_mb=_env_number(env, "ANYV2V_CLIP_CACHE_MB", base.clip_cache_mb),
            keep_hours=_env_number(env, "ANYV2V_KEEP_HOURS", base.keep_hours, float),
            output_max_gb=_env_number(env, "ANYV2V_OUTPUT_MAX_GB", base.output_max_gb, float),
            auth=parse_auth(env.get("ANYV2V_AUTH")),
            backbone_models=backbone_models_from_env(env),
        )

    def replace(self, **changes: Any) -> "AppSettings":
        return dataclasses.replace(self, **changes)

    def check(self) -> "AppSettings":
        """Refuse nonsensical server settings at startup rather than on the first click."""
        if self.preset not in PRESETS:
            raise SystemExit(f"error: ANYV2V_PRESET={self.preset!r} is not one of {', '.join(PRESETS)}.")
        if not 2 <= self.max_frames <= 512:
            raise SystemExit(f"error: ANYV2V_MAX_FRAMES={self.max_frames} must be between 2 and 512.")
        if self.max_size < 64:
            raise SystemExit(f"error: ANYV2V_MAX_SIZE={self.max_size} must be at least 64.")
        if self.max_upload_mb < 1 or self.queue_size < 1:
            raise SystemExit("error: the upload limit and the queue size must be at least 1.")
        if self.clip_cache_mb < 0 or self.keep_hours <= 0 or self.output_max_gb <= 0:
            raise SystemExit(
                "error: ANYV2V_CLIP_CACHE_MB must be 0 or more; ANYV2V_KEEP_HOURS and ANYV2V_OUTPUT_MAX_GB above 0."
            )
        if self.device:
            import torch

            try:
                kind = torch.device(self.device).type
            except RuntimeError:
                raise SystemExit(f"error: ANYV2V_DEVICE={self.device!r} is not a device; use cpu or cuda.") from None
            if kind == "cuda" and not torch.cuda.is_available():
                raise SystemExit(f"error: ANYV2V_DEVICE={self.device!r} but this machine has no CUDA GPU; use cpu.")
        try:  # the engine's own checks for device/dtype names, so a typo fails at startup
            self.base_config().validate()
        except AnyV2VError as exc:
            raise SystemExit(f"error: {exc}") from None
        return self

    def model_for(self, backbone: str = DEFAULT_BACKBONE) -> str:
        """The weights this server loads for `backbone`: its env var's value, else its default hub id ("" when
        it has none, e.g. SEINE: not enabled here)."""
        if backbone == DEFAULT_BACKBONE:
            return self.model
        from anyv2v.backbones import backbone_class

        return self.backbone_models.get(backbone, "").strip() or backbone_class(backbone).default_model

    def base_config(self, backbone: str = DEFAULT_BACKBONE) -> EditConfig:
        """The preset's EditConfig over `backbone`'s defaults, with this server's model for it, device and cache;
        requests change the rest."""
        return preset_config(self.preset, backbone).replace(
            model=self.model_for(backbone),
            device=self.device,
            dtype=self.dtype,
            cpu_offload=self.cpu_offload,
            cache_dir=self.cache_dir,
            cache_max_gb=self.cache_max_gb,
        )

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def device_name(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def backbone_models_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Each video model's source from its env var (I2VGen-XL's, ANYV2V_MODEL, is `AppSettings.model`)."""
    from anyv2v.backbones import NAMES, backbone_class

    models = {}
    for name in NAMES:
        if name == DEFAULT_BACKBONE:
            continue
        value = env.get(backbone_class(name).model_env, "").strip()
        if value:
            models[name] = value
    return models


def check_model_source(model: str, timeout: float = 5.0, backbone: str = DEFAULT_BACKBONE) -> str | None:
    """None when the video model `backbone` can be loaded from `model` here; else what is wrong and what to do
    (one paragraph, for the operator)."""
    from anyv2v.backbone import looks_like_path
    from anyv2v.backbones import backbone_class
    from anyv2v.backbones.base import folder_backbone

    env_var = backbone_class(backbone).model_env
    kind = backbone_class(backbone).folder_kind or f"a {backbone}"
    flag = "" if backbone == DEFAULT_BACKBONE else f" --backbone {backbone}"
    demo = ("For a quick offline try with tiny random models (noise output), see 'Offline demo' in the README: "
            f"`python -m anyv2v make-tiny-model{flag} /tmp/tiny` and `{env_var}=/tmp/tiny`.")
    if not model.strip():
        return f"The video model {backbone} has no model on this server: set {env_var} to {kind} folder. {demo}"
    if looks_like_path(model):
        folder = Path(os.path.expanduser(model))
        if not folder.is_dir():
            return f"The model folder {folder.name} does not exist on this server. Set {env_var} to {kind} folder or a hub id. {demo}"
        if not (folder / "model_index.json").is_file() and not (folder / "unet").is_dir():
            return f"The model folder {folder.name} is not {kind} (no model_index.json or unet/). {demo}"
        found = folder_backbone(str(folder))
        if found is not None and found != backbone:
            return f"The model folder {folder.name} ({env_var}) holds a {found} model, not {backbone}; set {env_var} to {kind} folder."
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "model_index.json"), str):
            return None  # downloaded before: loads offline too
    except Exception:  # noqa: BLE001 - an unusual cache layout: fall through to the network check
        pass
    if _env_bool(os.environ.get("HF_HUB_OFFLINE")):
        return (f"The video model {model} is not downloaded and HF_HUB_OFFLINE is set, so the first edit would fail. "
                f"Unset HF_HUB_OFFLINE (with network access it downloads once), or set {env_var} to "
                f"a local folder. {demo}")
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(model, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure here means the first edit cannot download the model
        return (f"The video model {model} is not downloaded and the Hugging Face Hub cannot be reached "
                f"({type(exc).__name__}). Check the network (or a proxy), or set {env_var} to a local folder. {demo}")
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = AppSettings.from_env()
    parser = argparse.ArgumentParser(description="AnyV2V web app (Gradio).")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT") or 7860),
                        help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--output-dir", default=env.output_dir,
                        help=f"folder for edited videos and frames (default {env.output_dir}; ANYV2V_OUTPUT_DIR)")
    parser.add_argument("--max-upload-mb", type=int, default=env.max_upload_mb,
                        help=f"largest upload in MB (default {env.max_upload_mb}; ANYV2V_MAX_UPLOAD_MB)")
    parser.add_argument("--queue-size", type=int, default=env.queue_size,
                        help=f"most jobs waiting in the queue (default {env.queue_size}; ANYV2V_QUEUE_SIZE)")
    parser.add_argument("--max-frames", type=int, default=env.max_frames,
                        help=f"most frames per edit (default {env.max_frames}; ANYV2V_MAX_FRAMES)")
    parser.add_argument("--preload", action="store_true", default=env.preload,
                        help="load the video model before serving (ANYV2V_PRELOAD=1)")
    return parser.parse_args(argv)
