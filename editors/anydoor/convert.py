"""Convert the official AnyDoor checkpoint to an `AnyDoorPipeline` folder (diffusers layout, safetensors).

    python -m editors convert-anydoor epoch=1-step=8687.ckpt models/anydoor [--image-encoder facebook/dinov2-giant]

The official weights (`epoch=1-step=8687.ckpt`, a PyTorch Lightning checkpoint) are read with
`torch.load(weights_only=True)` only: tensors and plain containers, never arbitrary pickled objects. Only the model
`state_dict` is used (optimizer state and training metadata are dropped). Its LDM key names are mapped with
diffusers' own converters (`convert_ldm_unet_checkpoint`, `convert_controlnet_checkpoint`,
`convert_ldm_vae_checkpoint`); the ControlNet's unused first layer becomes a zero `conv_in` (AnyDoor's ControlNet
never sees the noisy latent); `cond_stage_model.projector` becomes the image projector. DINOv2 ViT-g/14 is frozen
in AnyDoor, so the image encoder is `facebook/dinov2-giant` (the same weights in transformers' `Dinov2Model`),
copied into the folder so it is self-contained; the checkpoint's own DINOv2 copy is only compared with it.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anyv2v.errors import ModelLoadError, first_line

from ..base import EditorError, empty_target_dir, quoted, first_sentence, load_tensors_only, save_dir_atomically

DEFAULT_IMAGE_ENCODER = "facebook/dinov2-giant"
DEFAULT_ENCODER_SIZE = 224  # FrozenDinoV2Encoder's input: 224 px, 16x16 patches + CLS = 257 tokens

# The architecture of configs/anydoor.yaml (ali-vilab/AnyDoor), in the LDM config layout diffusers' converters read.
_LDM_UNET_PARAMS = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 1024,
    "legacy": False,
}
ANYDOOR_LDM_CONFIG: dict[str, Any] = {
    "model": {
        "target": "cldm.cldm.ControlLDM",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.0120,
            "timesteps": 1000,
            "image_size": 64,  # latent side: 512 px crops
            "scale_factor": 0.18215,
            "control_stage_config": {
                "target": "cldm.cldm.ControlNet",
                "params": {**{k: v for k, v in _LDM_UNET_PARAMS.items() if k != "out_channels"}, "hint_channels": 4},
            },
            "unet_config": {"target": "cldm.cldm.ControlledUnetModel", "params": dict(_LDM_UNET_PARAMS)},
            "first_stage_config": {
                "target": "ldm.models.autoencoder.AutoencoderKL",
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 256,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 128,
                        "ch_mult": [1, 2, 4, 4],
                        "num_res_blocks": 2,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                },
            },
        },
    }
}

_REQUIRED_PREFIXES = {
    "model.diffusion_model.": "the UNet (model.diffusion_model.*)",
    "control_model.": "the ControlNet (control_model.*)",
    "first_stage_model.": "the VAE (first_stage_model.*)",
    "cond_stage_model.projector.": "the DINOv2 projector (cond_stage_model.projector.*)",
}

_GIVE_OFFICIAL = "Give the official AnyDoor checkpoint epoch=1-step=8687.ckpt (see docs/editors.md)."
_TRUSTED_RESAVE = (
    "python -c \"import torch; c = torch.load('CKPT', map_location='cpu', weights_only=False); "
    "torch.save({'state_dict': c['state_dict']}, 'anydoor-weights.pt')\""
)


class ConversionError(EditorError):
    """The checkpoint cannot be converted; the message says why and what to do."""


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model state dict of a checkpoint (safetensors, or a torch file read with weights_only=True) and the
    names of the top-level entries that were dropped (optimizer state, training metadata)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConversionError(
            f"checkpoint {path} is a folder; give the checkpoint file itself (epoch=1-step=8687.ckpt, or a "
            "weights-only copy or .safetensors)."
        )
    if not path.is_file():
        raise ConversionError(
            f"checkpoint {path} does not exist; download epoch=1-step=8687.ckpt from the Hugging Face Space "
            "xichenhku/AnyDoor (see docs/editors.md)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), []
        except Exception as exc:  # safetensors raises its own error type for damaged files
            raise ConversionError(
                f"{path} is not a readable safetensors file ({first_sentence(str(exc), 160)}). {_GIVE_OFFICIAL}"
            ) from None
    loaded = _torch_load(path)
    dropped: list[str] = []
    state: Any = loaded
    while isinstance(state, Mapping) and "state_dict" in state:
        dropped += [str(key) for key in state if key != "state_dict"]
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
    not_tensors = [str(key) for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f"{path}'s state dict holds non-tensor entries ({', '.join(not_tensors[:3])}); "
            "it is not a model checkpoint."
        )
    return {str(key): value for key, value in state.items()}, dropped


def _torch_load(path: Path) -> Any:
    try:
        return load_tensors_only(path, "an AnyDoor checkpoint", _GIVE_OFFICIAL)
    except EditorError as exc:
        text = str(exc)
        if " holds a pickled " in text:  # a real checkpoint with training objects: how to keep just its weights
            text = text.replace(_GIVE_OFFICIAL, "") + (
                f"Use a weights-only copy, or, where you trust this file, re-save its weights with "
                f"{_TRUSTED_RESAVE.replace('CKPT', str(path))} and convert anydoor-weights.pt."
            )
        raise ConversionError(text) from None


def load_original_config(path: str | os.PathLike | None) -> dict[str, Any]:
    """The LDM model config: a YAML file in configs/anydoor.yaml's layout, or the built-in AnyDoor one."""
    if path is None:
        return copy.deepcopy(ANYDOOR_LDM_CONFIG)
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise ConversionError(f"cannot read the model config {path}: {exc}.") from None
    try:
        config["model"]["params"]["unet_config"]["params"]
        config["model"]["params"]["control_stage_config"]["params"]["hint_channels"]
        config["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    except (KeyError, TypeError):
        raise ConversionError(
            f"{path} is not an AnyDoor model config (model.params.unet_config / control_stage_config / "
            "first_stage_config); give configs/anydoor.yaml's layout."
        ) from None
    return config


def _check_anydoor(state: Mapping[str, torch.Tensor], source: str) -> None:
    missing = [what for prefix, what in _REQUIRED_PREFIXES.items() if not any(k.startswith(prefix) for k in state)]
    if missing:
        raise ConversionError(
            f"{source} is not an AnyDoor checkpoint: it has no weights for {', '.join(missing)}. Give the official "
            "epoch=1-step=8687.ckpt (or its pruned copy)."
        )


def _load_strict(model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    weights = {key: value for key, value in weights.items() if value is not None}
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches: the config does not fit the checkpoint
        raise ConversionError(f"the checkpoint's {what} does not fit the model config: {str(exc)[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(
            f"the checkpoint's {what} does not match the AnyDoor architecture (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}); give the official checkpoint and config."
        )


def crop_and_encoder_sizes(original_config: Mapping[str, Any]) -> tuple[int, int]:
    """(crop size in pixels, DINOv2 input size) of a model config: the latent size times the VAE factor, and
    `cond_stage_config.params.image_size` where given (the official config leaves it at 224)."""
    params = original_config["model"]["params"]
    vae_factor = 2 ** (len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)
    cond = (params.get("cond_stage_config") or {}).get("params") or {}
    return int(params.get("image_size", 64)) * vae_factor, int(cond.get("image_size", DEFAULT_ENCODER_SIZE))


@dataclass
class ConvertedPart:
    """One component in diffusers terms: its class name, config and renamed weights."""

    class_name: str
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    what: str  # for messages: which part of the checkpoint it came from


def map_anydoor_state(
    state: Mapping[str, torch.Tensor], original_config: Mapping[str, Any]
) -> dict[str, ConvertedPart]:
    """The diffusers configs and weight names of an AnyDoor LDM state dict (no model is built: pure renaming)."""
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    image_size = crop_and_encoder_sizes(original_config)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the image_size argument's deprecation notice
        unet_config = create_unet_diffusers_config_from_ldm(original_config, state, image_size=image_size)
        vae_config = create_vae_diffusers_config_from_ldm(original_config, state, image_size=image_size)
    # create_controlnet_diffusers_config_from_ldm raises a TypeError in diffusers 0.42.1 (it calls the UNet config
    # function without the checkpoint), so the ControlNet config is built from the UNet's, as that function would.
    control_params = original_config["model"]["params"]["control_stage_config"]["params"]
    controlnet_config = {
        key: unet_config[key]
        for key in (
            "in_channels",
            "down_block_types",
            "block_out_channels",
            "layers_per_block",
            "cross_attention_dim",
            "attention_head_dim",
            "use_linear_projection",
            "class_embed_type",
            "addition_embed_type",
            "addition_time_embed_dim",
            "projection_class_embeddings_input_dim",
            "transformer_layers_per_block",
        )
    }
    controlnet_config["conditioning_channels"] = control_params["hint_channels"]
    # LDM's SD 2.x attention computes its scores in float32 (ATTN_PRECISION "fp32"); keep that in float16 runs.
    unet_config["upcast_attention"] = controlnet_config["upcast_attention"] = True

    control_weights = convert_controlnet_checkpoint(dict(state), controlnet_config)
    # input_blocks.0.0 is trained but unused in AnyDoor ("skip the first layer"): conv_in becomes zero.
    control_weights["conv_in.weight"] = torch.zeros_like(control_weights["conv_in.weight"])
    control_weights["conv_in.bias"] = torch.zeros_like(control_weights["conv_in.bias"])
    projector = state["cond_stage_model.projector.weight"]
    return {
        "unet": ConvertedPart(
            "UNet2DConditionModel",
            unet_config,
            convert_ldm_unet_checkpoint(dict(state), unet_config),
            "UNet (model.diffusion_model.*)",
        ),
        "controlnet": ConvertedPart(
            "ControlNetModel", controlnet_config, control_weights, "ControlNet (control_model.*)"
        ),
        "vae": ConvertedPart(
            "AutoencoderKL",
            vae_config,
            convert_ldm_vae_checkpoint(dict(state), vae_config),
            "VAE (first_stage_model.*)",
        ),
        "image_projector": ConvertedPart(
            "AnyDoorImageProjector",
            {"in_features": projector.shape[1], "out_features": projector.shape[0]},
            {"proj.weight": projector, "proj.bias": state["cond_stage_model.projector.bias"]},
            "projector (cond_stage_model.projector.*)",
        ),
    }


def component_class(class_name: str) -> type:
    import diffusers

    from .pipeline import AnyDoorImageProjector

    return AnyDoorImageProjector if class_name == "AnyDoorImageProjector" else getattr(diffusers, class_name)


def convert_components(state: Mapping[str, torch.Tensor], original_config: Mapping[str, Any]) -> dict[str, Any]:
    """The UNet, ControlNet (zero conv_in), VAE and projector of an AnyDoor state dict as loaded diffusers modules."""
    modules = {}
    for name, part in map_anydoor_state(state, original_config).items():
        module = component_class(part.class_name)(**part.config)
        _load_strict(module, part.weights, part.what)
        modules[name] = module
    return modules


def _check_image_encoder(encoder: Any, state: Mapping[str, torch.Tensor], image_encoder: str) -> None:
    """The checkpoint's frozen DINOv2 (if it carries one) must be the encoder we copy in."""
    projector_in = state["cond_stage_model.projector.weight"].shape[1]
    if encoder.config.hidden_size != projector_in:
        raise ConversionError(
            f"the image encoder {image_encoder} is {encoder.config.hidden_size} wide but the checkpoint's projector "
            f"takes {projector_in}; AnyDoor uses DINOv2 ViT-g/14 ({DEFAULT_IMAGE_ENCODER})."
        )
    pairs = {
        "cond_stage_model.model.cls_token": encoder.embeddings.cls_token,
        "cond_stage_model.model.patch_embed.proj.weight": encoder.embeddings.patch_embeddings.projection.weight,
    }
    for key, ours in pairs.items():
        theirs = state.get(key)
        if theirs is None:
            continue
        ours = ours.detach().float()
        if theirs.shape != ours.shape or not torch.allclose(theirs.float(), ours, rtol=1e-2, atol=1e-3):
            raise ConversionError(
                f"the image encoder {image_encoder} differs from the checkpoint's own DINOv2 ({key}); use "
                f"--image-encoder {DEFAULT_IMAGE_ENCODER}."
            )


def convert_anydoor(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_encoder: str = DEFAULT_IMAGE_ENCODER,
    original_config: str | os.PathLike | None = None,
    dtype: str = "float16",
    report: Callable[[str], None] | None = None,
) -> Path:
    """Write an `AnyDoorPipeline` folder converted from the official checkpoint; all or nothing."""
    from transformers import Dinov2Model

    from .pipeline import AnyDoorPipeline, make_scheduler

    say = report or (lambda message: None)
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ConversionError(f"dtype {quoted(dtype)} must be float16, bfloat16 or float32.")
    out = empty_target_dir(out_dir, "the converted AnyDoor model")
    config = load_original_config(original_config)
    say(f"reading {checkpoint} (weights only)")
    state, dropped = read_checkpoint(checkpoint)
    _check_anydoor(state, str(checkpoint))
    if dropped:
        say(f"dropped non-model entries: {', '.join(sorted(dropped))}")
    say("mapping LDM names to diffusers")
    components = convert_components(state, config)
    say(f"loading the image encoder {image_encoder}")
    try:
        encoder = Dinov2Model.from_pretrained(image_encoder, use_safetensors=True)
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise ModelLoadError(
            f"cannot load the image encoder {image_encoder} ({first}); run the converter where the hub is reachable "
            "or give --image-encoder a local Dinov2Model folder."
        ) from None
    _check_image_encoder(encoder, state, image_encoder)
    del state
    crop_size, encoder_size = crop_and_encoder_sizes(config)
    pipe = AnyDoorPipeline(
        image_encoder=encoder, scheduler=make_scheduler(), crop_size=crop_size, encoder_size=encoder_size, **components
    )
    pipe.to(dtype=getattr(torch, dtype))
    pipe.check_components()
    say(f"writing {out}")
    return save_dir_atomically(out, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
