"""A tiny random ConsistI2V in the hub's folder layout (`TIGER-Lab/ConsistI2V`: model_index.json naming the official
UNet class, unet/ vae/ text_encoder/ tokenizer/ scheduler/), for tests and offline demos; written complete or not
at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import OFFICIAL_UNET_CLASS, PIPELINE_CLASSES

# 4 blocks of 2 layers as the real model (decoder layers 0..11 hold the injection sites); channels multiples of 32
# (the temporal ResNets' GroupNorm has 32 groups in the official model).
TINY_UNET = {
    "sample_size": 8,
    "block_out_channels": (32, 32, 64, 64),
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "use_linear_projection": True,
    "n_frames": 8,
    "n_temp_heads": 2,
    "first_frame_condition_mode": "concat",
    "augment_temporal_attention": True,
    "temp_pos_embedding": "rotary",
    "use_frame_stride_condition": True,
}
# ConsistI2V's noise_scheduler_kwargs (configs/inference/inference.yaml of TIGER-AI-Lab/ConsistI2V).
SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
    "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": True, "timestep_spacing": "leading",
    "prediction_type": "epsilon", "rescale_betas_zero_snr": False,
}


def make_tiny_consisti2v(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny random ConsistI2V (our UNet, SD-style VAE and CLIP text encoder) to `directory`."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    from ...files import atomic_folder
    from ...tiny import tiny_autoencoder, tiny_clip_text
    from .unet import ConsistI2VUNet

    out = Path(directory)
    torch.manual_seed(seed)
    unet = ConsistI2VUNet(**TINY_UNET)
    # The official model starts its temporal blends at alpha = 1 (temporal layers off); random blends make the
    # temporal layers (and their injection) visible in tests.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith("alpha"):
                param.uniform_(0.2, 0.8, generator=generator)
    vae = tiny_autoencoder(scaling_factor=0.18215)
    tokenizer, text_encoder = tiny_clip_text(32)
    with atomic_folder(out, replace=True) as tmp:  # the caller checked it may be replaced (empty, or --overwrite)
        (tmp / "unet").mkdir()
        config = {"_class_name": OFFICIAL_UNET_CLASS, "_diffusers_version": "0.21.2"}
        config.update({k: v for k, v in unet.config.items() if not k.startswith("_")})
        (tmp / "unet" / "config.json").write_text(json.dumps(config, indent=2, default=list))
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp / "unet" / "diffusion_pytorch_model.safetensors"))
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        DDIMScheduler(**SCHEDULER).save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": PIPELINE_CLASSES[0], "_diffusers_version": "0.21.2",
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["consisti2v.models.videoldm_unet", OFFICIAL_UNET_CLASS],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return out
