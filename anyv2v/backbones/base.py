"""What the engine needs from a video backbone (an image-to-video diffusion model), and the shared helpers.

A backbone is a class registered by name in `anyv2v.backbones` (`i2vgen-xl`, `seine`). The inversion, the
sampler, the cache, the injection plug-in and the memory options use only this interface:

Before loading (class level, cheap): `name`, `default_model`, `model_env`, `defaults` (EditConfig values this
model is meant to run with), `batch_order` (branch names of a sampling UNet call, "source" first: the injection plug-in takes batch chunk 0 as
the source branch), `timestep_plan(model)`
(`TimestepPlan`: sampling and inversion grids, which inverted latents an edit reads, the check of a step count
pair), `check_folder(model)` (a local folder of another backbone is refused with one line), `load(...)`,
`make_random_model(dir, seed, size)` (random weights in our layout), and for `bench`: `reference_unet_calls`,
`read_unet_config`, `meta_unet_call` (a batch-1 UNet call on the meta device, for FLOP counting).

Loaded (instance): `unet`, `vae`, `device`, `dtype`, `model_id`, `plan`, `fingerprint()`, `on_device()`,
`latent_channels`, `vae_scale_factor`, `encode_frames(...)` (the video latents), `inversion_condition(...)`,
`sampling_conditions(...)` (per branch), `forward(sample, t, condition)` (one UNet call on a batch whose
conditions were concatenated with `cat_conditions`), `inversion_scheduler(...)` / `sampling_scheduler(...)`
(objects with `timesteps` and `step(eps, t, x)`), `injection_sites()`, `decode(...)`.

A condition is a dict of batch-first tensors (one branch = batch 1), so any number of branches concatenate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..device import dtype_name
from ..errors import ConfigError, ModelLoadError, first_line

Condition = dict[str, torch.Tensor]


def cat_conditions(conditions: list[Condition]) -> Condition:
    """Branch conditions (batch 1 each) -> one batch, in the given order."""
    return {key: torch.cat([c[key] for c in conditions]) for key in conditions[0]}


def looks_like_path(model: str) -> bool:
    """True for what a user means as a local path; hub ids are 'owner/name' without extra slashes."""
    return (
        model.startswith((".", "/", "~"))
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
        or model.endswith(".safetensors")
        or os.path.isdir(model)
    )


def check_model_reference(model: str) -> None:
    if looks_like_path(model) and not os.path.isdir(os.path.expanduser(model)):
        raise ModelLoadError(f"model folder {model} does not exist; give a diffusers-format folder or a hub id.")


def folder_backbone(model: str) -> str | None:
    """The backbone a local model folder holds, from its model_index.json (None: not a folder, or unknown)."""
    index = Path(os.path.expanduser(model)) / "model_index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    name = data.get("_class_name")
    unet = data.get("unet")
    if isinstance(unet, list) and unet[-1:] == ["VideoLDMUNet3DConditionModel"]:  # ConsistI2V's hub layout
        return "consisti2v"
    return {"I2VGenXLPipeline": "i2vgen-xl", "SEINEPipeline": "seine"}.get(name)


def load_sd_components(folder: str, torch_dtype: torch.dtype, what: str) -> tuple[Any, Any, Any]:
    """The VAE, CLIP text encoder and tokenizer of a Stable Diffusion-layout folder (safetensors only), or one
    ModelLoadError line saying `what` could not be loaded."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, torch_dtype=torch_dtype)
        text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", use_safetensors=True, torch_dtype=torch_dtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelLoadError(f"cannot load {what}: {first_line(exc)}") from None
    return vae, text_encoder, tokenizer


def ready_for_inference(modules: tuple[torch.nn.Module, ...], device: torch.device, cpu_offload: bool) -> None:
    """Frozen, in eval mode and, unless offloaded (moved to `device` as each is used), on `device`."""
    for module in modules:
        module.requires_grad_(False)
        module.eval()
        if not cpu_offload:
            module.to(device)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> [3, H, W] float in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


class TimestepPlan:
    """Timestep grids of one backbone's schedulers (from its scheduler config, before loading weights)."""

    def sampling_timesteps(self, steps: int) -> list[int]:
        raise NotImplementedError

    def inversion_timesteps(self, inversion_steps: int) -> list[int]:
        raise NotImplementedError

    def needed(self, steps: int, inversion_steps: int, save_steps: int | None = None) -> set[int]:
        """Inversion timesteps an edit of `steps` (any start index) reads."""
        raise NotImplementedError

    def covers(self, steps: int, inversion_steps: int, save_steps: int | None = None) -> bool:
        raise NotImplementedError

    def source_timestep(self, t: int) -> int:
        """The inverted latent the source branch reads at sampling timestep t."""
        return int(t)

    def start_timestep(self, timesteps: list[int], start_index: int, inversion_steps: int, save_steps: int | None) -> int:
        """The inverted latent sampling starts from."""
        return int(timesteps[start_index])

    def check(self, steps: int, inversion_steps: int, save_steps: int | None = None) -> None:
        raise NotImplementedError


class VideoBackbone:
    """Base class of loaded backbones: where the modules run, their fingerprint, CPU offload."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # the paper's name, for people (arXiv 2403.14468, section 4)
    folder_kind: ClassVar[str] = ""  # what a local folder of this model is, for messages
    default_model: ClassVar[str] = ""
    model_env: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    batch_order: ClassVar[tuple[str, ...]] = ("source", "uncond", "cond")
    supports_frame_init: ClassVar[bool] = False  # whether `frame_init` is implemented (ConsistI2V's FrameInit)
    layout: ClassVar[str] = ""  # the folder layout, for error messages

    model_id: str
    unet: Any
    vae: Any
    device: torch.device
    dtype: torch.dtype
    cpu_offload: bool

    # ---- declared by each backbone (see the module docstring) ---------------------------------------------

    @classmethod
    def load(cls, model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False):
        raise NotImplementedError

    @classmethod
    def timestep_plan(cls, model: str) -> "TimestepPlan":
        raise NotImplementedError

    @classmethod
    def default_timestep_plan(cls) -> "TimestepPlan":
        """The plan of the released model's scheduler, for when the model cannot be read yet (not configured or
        not downloaded): the grids depend only on the step counts and the scheduler's spacing."""
        raise NotImplementedError

    @classmethod
    def make_random_model(cls, directory: str, seed: int = 0, size: str = "tiny") -> tuple[Any, str]:
        raise NotImplementedError

    @classmethod
    def reference_unet_calls(cls, inversion_steps: int, steps: int) -> dict[str, Any]:
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------------------

    @classmethod
    def resolve_model(cls, model: str | None) -> str:
        """The model to load: the given one, else the backbone's env var, else its hub id."""
        return model or os.environ.get(cls.model_env) or cls.default_model

    @classmethod
    def check_folder(cls, model: str) -> None:
        """A local folder of another backbone is refused with one line naming the right --backbone."""
        found = folder_backbone(model)
        if found is not None and found != cls.name:
            raise ModelLoadError(
                f"model folder {model} holds a {found} model, not {cls.name}; pass --backbone {found} "
                f"(or give a {cls.name} folder)."
            )

    def sampling_start(self, latents: torch.Tensor, conditions: dict[str, Condition]) -> torch.Tensor:
        """The edit branches' starting latent from the inverted one (ConsistI2V puts the edited first frame's latent
        in frame 0); by default unchanged."""
        return latents

    def frame_init(self, latents: torch.Tensor, conditions: dict[str, Condition], noise_level: int) -> torch.Tensor:
        """FrameInit: the start latent's low frequencies from the edited first frame diffused to `noise_level`
        (only where `supports_frame_init`; the config refuses it elsewhere)."""
        raise NotImplementedError(f"{self.name} has no FrameInit")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def fingerprint(self) -> str:
        """Identifies the weights for cache keys: the backbone, the id/path plus the configs (and file stamps
        for folders)."""
        parts: dict[str, Any] = {"model": self.model_id, "dtype": dtype_name(self.dtype)}
        parts["unet_config"] = {k: v for k, v in self.unet.config.items() if not k.startswith("_")}
        if os.path.isdir(self.model_id):
            stamps = []
            for path in sorted(Path(self.model_id).rglob("*.safetensors")):
                stat = path.stat()
                stamps.append((str(path.relative_to(self.model_id)), stat.st_size, int(stat.st_mtime)))
            parts["files"] = stamps
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @contextlib.contextmanager
    def on_device(self, *modules: torch.nn.Module) -> Iterator[None]:
        """With CPU offload, move `modules` to the device for the block and back after it."""
        if not self.cpu_offload:
            yield
            return
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def check_save_steps(inversion_steps: int, save_steps: int | None) -> None:
    if save_steps is not None and not 1 <= save_steps <= inversion_steps:
        raise ConfigError(
            f"inversion_save_steps={save_steps} must be between 1 and inversion_steps={inversion_steps} "
            "(or empty for half of them)."
        )
