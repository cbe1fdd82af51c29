"""`python -m anyv2v convert-seine --checkpoint seine.pt --sd SD14_FOLDER OUT_DIR`: the official SEINE weights
into one self-contained safetensors folder that `anyv2v.backbones.seine` loads.

- `seine.pt` (a pickle, `{"ema": state_dict}`) is read with `torch.load(weights_only=True)`: a pickle holding
  anything but tensors, plain containers and `argparse.Namespace` (the training arguments DiT-style checkpoints
  keep beside the weights: an attribute bag, allowed by name) is refused and nothing in it runs.
- The "ema" state dict is loaded into our `SeineUNet3D` with strict loading (every name and shape must match);
  the UNet's config comes from the SD-1.4 folder's unet/config.json with in_channels 9 (SEINE's `use_concat`).
- SD-1.4's VAE, CLIP text encoder and tokenizer are copied (read from their safetensors files only: a pickled
  .bin is never opened); the scheduler config holds SEINE's linear betas (0.0001-0.02), which the reference sets
  over SD-1.4's.
- The folder is written beside OUT_DIR under a temporary name and renamed into place: complete or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path

import torch

from ...errors import ModelLoadError, OutputError, first_line
from ...files import atomic_folder
from . import PIPELINE_CLASS, SCHEDULER

# SD-1.x unet/config.json keys that SEINE's UNet takes over (the rest of its config is fixed by the layout).
UNET_KEYS = (
    "sample_size", "out_channels", "block_out_channels", "layers_per_block", "downsample_padding", "norm_num_groups",
    "norm_eps", "cross_attention_dim", "attention_head_dim", "flip_sin_to_cos", "freq_shift",
)
SD_BLOCKS = {
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The "ema" state dict of an official seine.pt, read without running any code from it."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist; download seine.pt from the hub repo Vchitect/SEINE.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = (str(exc).strip().splitlines() or ["not a plain tensor pickle"])[0][:160]
        raise ModelLoadError(
            f"refused {path}: it holds objects other than tensors (weights_only load: {reason}); nothing from it "
            "was run. Use the official seine.pt."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = first_line(exc, 160)
        raise ModelLoadError(f"cannot read checkpoint {path} ({first}); is it the official seine.pt?") from None
    if not isinstance(data, dict) or not isinstance(data.get("ema"), dict):
        keys = ", ".join(map(str, list(data)[:5])) if isinstance(data, dict) else type(data).__name__
        raise ModelLoadError(f"checkpoint {path} has no 'ema' state dict (found: {keys}); is it the official seine.pt?")
    state = data["ema"]
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ModelLoadError(f"checkpoint {path}: 'ema' holds non-tensor entries (e.g. {bad[0]!r}); is it the official seine.pt?")
    return state


def unet_config_from_sd(sd_folder: Path) -> dict:
    path = sd_folder / "unet" / "config.json"
    try:
        sd = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing; --sd must be a Stable Diffusion 1.4 folder (CompVis/stable-diffusion-v1-4).") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc}).") from None
    for key, value in SD_BLOCKS.items():
        if key in sd and list(sd[key]) != value:
            raise ModelLoadError(f"{path}: {key} is {sd[key]}, not SD-1.x's; --sd must be Stable Diffusion 1.4.")
    config = {key: sd[key] for key in UNET_KEYS if key in sd}
    config["in_channels"] = 9  # latents + mask + masked-video latents
    return config


def load_unet(state: dict[str, torch.Tensor], config: dict, checkpoint: str | os.PathLike):
    from .unet import SeineUNet3D

    try:
        unet = SeineUNet3D.from_config(config)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"the SD-1.4 UNet config does not build SEINE's UNet: {exc}") from None
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise ModelLoadError(
            f"checkpoint {checkpoint} does not fit SEINE's UNet built from the --sd config: {'; '.join(parts)}. "
            "Use the official seine.pt with the SD-1.4 folder it was trained from."
        )
    unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return unet


def convert_seine(checkpoint: str | os.PathLike, sd_folder: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the converted folder to `out_dir` (which must not exist or be empty); return its path."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out} already exists and is not an empty folder; choose a new output folder.")
    sd = Path(sd_folder)
    if not sd.is_dir():
        raise ModelLoadError(f"--sd {sd} is not a folder; give a Stable Diffusion 1.4 folder (CompVis/stable-diffusion-v1-4).")
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (sd / part).is_dir():
            raise ModelLoadError(f"--sd {sd} has no {part}/; give a Stable Diffusion 1.4 folder (CompVis/stable-diffusion-v1-4).")
    pickled_only = [f"{part}/" for part in ("vae", "text_encoder") if not any((sd / part).glob("*.safetensors"))]
    if pickled_only:
        raise ModelLoadError(
            f"--sd {sd} has no .safetensors weights in {' and '.join(pickled_only)}; they are read as safetensors only: "
            "download vae/diffusion_pytorch_model.safetensors and text_encoder/model.safetensors from "
            "CompVis/stable-diffusion-v1-4."
        )
    state = read_checkpoint(checkpoint)
    unet = load_unet(state, unet_config_from_sd(sd), checkpoint)
    try:
        # safetensors only: a pickled .bin is never unpickled here (CompVis/stable-diffusion-v1-4 ships both).
        vae = AutoencoderKL.from_pretrained(sd, subfolder="vae", use_safetensors=True)
        text_encoder = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder", use_safetensors=True)
        tokenizer = CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer")
    except (OSError, ValueError, EnvironmentError) as exc:
        first = first_line(exc)
        raise ModelLoadError(f"cannot read SD-1.4's components from {sd}: {first}") from None

    with atomic_folder(out) as tmp:  # empty or absent (checked above)
        write_folder(tmp, unet, vae, text_encoder, tokenizer)
    return out


def write_folder(out: Path, unet, vae, text_encoder, tokenizer) -> None:
    """Our SEINE layout (the real writer: convert-seine and the tiny test model both use it)."""
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    scheduler = {
        "_class_name": "DDPMScheduler", **SCHEDULER, "variance_type": "fixed_small", "clip_sample": False,
        "prediction_type": "epsilon", "set_alpha_to_one": False,
    }
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {
        "_class_name": PIPELINE_CLASS,
        "backbone": "seine",
        "unet": ["anyv2v", "SeineUNet3D"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["anyv2v", "DDPMScheduler (SEINE's linear betas)"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
