"""Random I2VGen-XL models in diffusers layout, the real classes: tiny configs for tests and offline demos, and
the hub model's real configs (`make_real_size_model`) for measuring real-size speed and memory offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# The hub model's scheduler config (ali-vilab/i2vgen-xl, scheduler/scheduler_config.json).
I2VGEN_XL_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def byte_level_vocab() -> dict[str, int]:
    """A CLIP BPE vocabulary whose tokens are single bytes (514 tokens); with no merges it encodes any text."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in alphabet:
        vocab[char] = len(vocab)
    for char in alphabet:
        vocab[char + "</w>"] = len(vocab)
    return vocab


def tiny_clip_text(hidden: int):
    """A byte-level CLIPTokenizer (built offline) and a tiny CLIPTextModel of width `hidden` that fits it."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return tokenizer, text_encoder


# A mid-size UNet for CPU memory measurements (README "Long clips and bounded memory"): the real layout (12
# decoder layers, injection sites), 63 M parameters, full-resolution width 128. At 64 frames of 128x128 its
# activations are about half the plain path's peak RSS (the process and 250 MB of weights the other half); at
# 256x256 they dominate.
MID_SIZE_UNET = {
    "sample_size": 16,
    "block_out_channels": (128, 128, 256, 256),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}


def tiny_autoencoder(block_out_channels: tuple[int, ...] = (8, 8, 16, 16), norm_num_groups: int = 4, **config):
    """A tiny random AutoencoderKL with Stable Diffusion's four blocks, so latents are 1/8 of the frame as with
    the real VAEs (I2VGen-XL, SD, SDXL); `config` sets the rest (e.g. scaling_factor)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=block_out_channels,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=norm_num_groups,
        sample_size=64,
        **config,
    )


def make_tiny_model(directory: str | os.PathLike, seed: int = 0, unet_config: dict | None = None) -> Path:
    """Save a tiny random I2VGen-XL (same component classes as the hub model) to `directory`.

    `unet_config` replaces the tiny UNet's config (e.g. MID_SIZE_UNET; its cross_attention_dim must be 32).
    """
    from diffusers import DDIMScheduler, I2VGenXLUNet
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hidden = 32  # text width = image projection width = UNet cross-attention width

    # Two layers per down block, so the decoder has the real 12 layers (4 blocks x 3) the injection addresses.
    unet = I2VGenXLUNet(
        **(
            unet_config
            or dict(
                sample_size=8,
                block_out_channels=(32, 32, 32, 32),
                layers_per_block=2,
                norm_num_groups=8,
                cross_attention_dim=hidden,
                attention_head_dim=4,
            )
        )
    )
    unet.save_pretrained(out / "unet", safe_serialization=True)

    vae = tiny_autoencoder(scaling_factor=0.18215)
    vae.save_pretrained(out / "vae", safe_serialization=True)

    tokenizer, text_encoder = tiny_clip_text(hidden)
    tokenizer.save_pretrained(out / "tokenizer")
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)

    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=hidden,
        )
    )
    image_encoder.save_pretrained(out / "image_encoder", safe_serialization=True)

    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    feature_extractor.save_pretrained(out / "feature_extractor")

    DDIMScheduler(**I2VGEN_XL_SCHEDULER).save_pretrained(out / "scheduler")

    _write_model_index(out)
    return out


# ---- the hub model's real component configs (ali-vilab/i2vgen-xl, */config.json), as plain data -------------

I2VGEN_XL_UNET = {
    "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "num_attention_heads": 64,
    "out_channels": 4,
    "sample_size": 32,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}
I2VGEN_XL_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "scaling_factor": 0.18125,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# OpenCLIP ViT-H/14 text tower as the hub ships it (24 layers; I2VGen-XL reads the penultimate one).
I2VGEN_XL_TEXT_ENCODER = {
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "projection_dim": 1024,
    "vocab_size": 49408,
}
I2VGEN_XL_IMAGE_ENCODER = {
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "image_size": 224,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "projection_dim": 1024,
}
I2VGEN_XL_FEATURE_EXTRACTOR = {
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def _random_init_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Fill freshly allocated (uninitialised) parameters with sane random values, fast and in place:
    norms 1/0, biases 0, weights N(0, 1/fan_in), embeddings N(0, 0.02)."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            data = param.data
            if isinstance(sub, norms):
                data.fill_(1.0 if name == "weight" else 0.0)
            elif data.ndim < 2:
                data.zero_()
            elif isinstance(sub, torch.nn.Embedding) or "embedding" in name:
                data.copy_(torch.randn(data.shape, generator=generator) * 0.02)
            else:
                fan_in = data[0].numel()
                data.copy_(torch.randn(data.shape, generator=generator) * fan_in**-0.5)
    for buffer_name, buffer in module.named_buffers():
        if buffer_name.endswith("position_ids"):
            buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))


def _materialise(build, dtype: torch.dtype, generator: torch.Generator):
    """Build a module on the meta device, allocate it in `dtype` and fill it (no fp32 copy of a 1.4 B model)."""
    with torch.device("meta"):
        module = build()
    module = module.to_empty(device="cpu").to(dtype)
    with torch.no_grad():
        _random_init_(module, generator)
    return module


def real_size_unet_on_meta():
    """The hub I2VGen-XL UNet built on the meta device (parameter counts and FLOPs without memory)."""
    from diffusers import I2VGenXLUNet

    with torch.device("meta"):
        return I2VGenXLUNet.from_config(I2VGEN_XL_UNET)


def make_real_size_model(directory: str | os.PathLike, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Save a random-weight I2VGen-XL with the hub model's real component configs (fp16 safetensors, 4.7 GB).

    Speed and memory do not depend on the weights' values, so this measures real-size edits without the
    download. The tokenizer is the byte-level one built offline (token ids differ from OpenCLIP's; the shapes
    the model sees, 77 tokens, do not).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator("cpu").manual_seed(seed)

    unet = _materialise(lambda: I2VGenXLUNet.from_config(I2VGEN_XL_UNET), dtype, generator)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    del unet
    vae = _materialise(lambda: AutoencoderKL.from_config(I2VGEN_XL_VAE), dtype, generator)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    del vae

    tokenizer = CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=77)
    tokenizer.save_pretrained(out / "tokenizer")
    text_config = CLIPTextConfig(
        **I2VGEN_XL_TEXT_ENCODER,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = _materialise(lambda: CLIPTextModel(text_config), dtype, generator)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    del text_encoder
    image_config = CLIPVisionConfig(**I2VGEN_XL_IMAGE_ENCODER)
    image_encoder = _materialise(lambda: CLIPVisionModelWithProjection(image_config), dtype, generator)
    image_encoder.save_pretrained(out / "image_encoder", safe_serialization=True)
    del image_encoder

    CLIPImageProcessor(**I2VGEN_XL_FEATURE_EXTRACTOR).save_pretrained(out / "feature_extractor")
    DDIMScheduler(**I2VGEN_XL_SCHEDULER).save_pretrained(out / "scheduler")
    _write_model_index(out)
    return out


def _write_model_index(out: Path) -> None:
    (out / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "I2VGenXLPipeline",
                "_diffusers_version": "0.42.1",
                "feature_extractor": ["transformers", "CLIPImageProcessor"],
                "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "I2VGenXLUNet"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            indent=2,
        )
    )
