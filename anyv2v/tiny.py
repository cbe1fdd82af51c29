"""A tiny random I2VGen-XL in diffusers layout: the real classes with tiny configs, for tests and offline demos."""

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


def make_tiny_model(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny random I2VGen-XL (same component classes as the hub model) to `directory`."""
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hidden = 32  # text width = image projection width = UNet cross-attention width

    # Two layers per down block, so the decoder has the real 12 layers (4 blocks x 3) the injection addresses.
    unet = I2VGenXLUNet(
        sample_size=8,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=hidden,
        attention_head_dim=4,
    )
    unet.save_pretrained(out / "unet", safe_serialization=True)

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    )
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
    return out
