"""A tiny random SEINE in our converted layout (tests and offline demos), written by the converter's own writer."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# 4 blocks of 2 layers as the real model (decoder layers 0..11 hold the injection sites); one head of 32
# channels, the least SEINE's temporal attention (rotary embeddings on 32 channels per head) accepts.
TINY_UNET = {
    "sample_size": 8,
    "block_out_channels": (32, 32, 32, 32),
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 1,
}


def make_tiny_seine(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny random SEINE (our UNet, SD-style VAE and CLIP text encoder) to `directory`."""
    from ...files import atomic_folder
    from ...tiny import tiny_autoencoder, tiny_clip_text
    from .convert import write_folder
    from .unet import SeineUNet3D

    out = Path(directory)
    torch.manual_seed(seed)
    unet = SeineUNet3D(**TINY_UNET)
    # The official model zero-initialises the temporal attention's output; a random one makes tests see it.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith("attn_temp.to_out.0.weight"):
                param.normal_(0.0, 0.02, generator=generator)
            elif "relative_attention_bias" in name:
                param.normal_(0.0, 0.1, generator=generator)
    vae = tiny_autoencoder(scaling_factor=0.18215)
    tokenizer, text_encoder = tiny_clip_text(32)
    with atomic_folder(out, replace=True) as tmp:  # the caller checked it may be replaced (empty, or --overwrite)
        write_folder(tmp, unet, vae, text_encoder, tokenizer)
    return out
