"""AnyDoor (Chen et al., CVPR 2024) as a diffusers pipeline: the official ControlNet-style model in diffusers classes.

The official model (`ali-vilab/AnyDoor`, `cldm/cldm.py`, `configs/anydoor.yaml`) is a Stable Diffusion 2.1 latent
diffusion model (epsilon prediction, cross-attention width 1024, linear transformer projections) with no text
encoder. Its condition is the reference subject seen by DINOv2 ViT-g/14 (the CLS token and the patch tokens,
layer-normed: 257 tokens of 1536 at 224 px) through a trained `Linear(1536 -> 1024)`; the unconditional branch is
DINOv2 of an all-zero image. Its ControlNet takes a 4-channel hint (the collage, see `editors.anydoor.preprocess`) and never
sees the noisy latent ("skip the first layer" in `cldm.py`): in diffusers terms a `ControlNetModel` with
`conditioning_channels=4` whose `conv_in` weight and bias are zero, so `conv_in(latent) + hint_embedding` is just
the hint embedding. Sampling: DDIM, 50 steps, guidance 5, eta 0, with the same hint in both guidance branches
(`run_inference.py`).

Component folders are the usual diffusers layout (safetensors), written by `python -m editors convert-anydoor` from
the official checkpoint, or by `make_tiny_anydoor` for tests. The crop and encoder sizes are pipeline config
(`crop_size` 512 and `encoder_size` 224 for the real model), so a tiny model runs the same code at tiny sizes.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor
from transformers import Dinov2Config, Dinov2Model

from anyv2v.tiny import tiny_autoencoder

# DINOv2's ImageNet normalisation (`FrozenDinoV2Encoder` in the official code).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Stable Diffusion 2.1's DDIM settings; the LDM "linear" schedule 0.00085-0.012 is diffusers' scaled_linear, and
# `steps_offset=1` with "leading" spacing gives the LDM DDIM sampler's timesteps 981, 961, ..., 1.
SD21_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",  # configs/anydoor.yaml sets no parameterization: LDM's default, eps
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

StepCallback = Callable[[int, int], None]


def dinov2_position_embeddings(position_embeddings: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """DINOv2's position embeddings for a `height` x `width` input as the official DINOv2 code computes them.

    `facebookresearch/dinov2` (the copy AnyDoor runs) resizes the 37x37 grid bicubically with
    `scale_factor=((rows + 0.1) / 37, (cols + 0.1) / 37)`; transformers' `Dinov2Embeddings` asks for `size=(rows,
    cols)` instead, which samples the grid at other points (up to a fifth of a cell apart at 224 px).
    """
    count = position_embeddings.shape[1] - 1
    side = int(math.sqrt(count))
    rows, cols = height // patch, width // patch
    if rows == cols == side:
        return position_embeddings.float()
    grid = position_embeddings[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(
        grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic", align_corners=False
    )
    if grid.shape[-2:] != (rows, cols):
        raise ValueError(f"DINOv2 position grid {side}x{side} does not resize to {rows}x{cols}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat([position_embeddings[:, :1].float(), grid], dim=1)


class OfficialDinoPositions:
    """Forward hook on `Dinov2Model.embeddings`: swaps transformers' interpolated position embeddings for the
    official ones (`dinov2_position_embeddings`), so the tokens are those AnyDoor was trained on."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ours = module.interpolate_pos_encoding(output, self.height, self.width).float()
            official = dinov2_position_embeddings(
                module.position_embeddings, self.height, self.width, module.patch_size
            )
        return output + (official - ours).to(output.dtype)


class AnyDoorImageProjector(ModelMixin, ConfigMixin):
    """The trained projection of DINOv2 tokens to the UNet's cross-attention width (`cond_stage_model.projector`)."""

    @register_to_config
    def __init__(self, in_features: int = 1536, out_features: int = 1024) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(in_features, out_features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


class AnyDoorPipeline(DiffusionPipeline):
    """Generates the `crop_size` target crop from a hint collage and a reference subject image.

    Inputs are prepared by `editors.anydoor.preprocess.prepare_pair`: `hint` is (B, 4, crop, crop) in [-1, 1] (the
    mask channel in {-1, 0, 1}), `reference` is (B, 3, encoder, encoder) in [0, 1]. Returns uint8 HWC crops.
    """

    model_cpu_offload_seq = "image_encoder->image_projector->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        image_encoder: Dinov2Model,
        image_projector: AnyDoorImageProjector,
        scheduler: DDIMScheduler,
        crop_size: int = 512,
        encoder_size: int = 224,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            unet=unet,
            controlnet=controlnet,
            image_encoder=image_encoder,
            image_projector=image_projector,
            scheduler=scheduler,
        )
        self.register_to_config(crop_size=crop_size, encoder_size=encoder_size)

    @property
    def crop_size(self) -> int:
        return int(self.config.crop_size)

    @property
    def encoder_size(self) -> int:
        return int(self.config.encoder_size)

    def check_components(self) -> None:
        """Refuse a folder that is not an AnyDoor model (the converter writes one that passes)."""
        weight = self.controlnet.conv_in.weight
        if torch.count_nonzero(weight) or torch.count_nonzero(self.controlnet.conv_in.bias):
            raise ValueError(
                "controlnet/conv_in is not zero: AnyDoor's ControlNet never sees the noisy latent "
                "(convert the official checkpoint with `python -m editors convert-anydoor`)"
            )
        if self.controlnet.config.conditioning_channels != 4:
            raise ValueError("controlnet takes a 4-channel hint in AnyDoor (collage RGB + mask)")
        if self.image_projector.config.in_features != self.image_encoder.config.hidden_size:
            raise ValueError("image_projector does not fit the image encoder's width")
        if self.image_projector.config.out_features != self.unet.config.cross_attention_dim:
            raise ValueError("image_projector does not fit the UNet's cross-attention width")
        if self.crop_size % self.vae_scale_factor or self.encoder_size % self.image_encoder.config.patch_size:
            raise ValueError("crop_size / encoder_size do not fit the VAE factor / DINOv2 patch size")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @contextlib.contextmanager
    def official_dino_positions(self, height: int, width: int):
        """DINOv2 with the official position-embedding interpolation, for the duration of the block."""
        hook = self.image_encoder.embeddings.register_forward_hook(OfficialDinoPositions(height, width))
        try:
            yield
        finally:
            hook.remove()

    @torch.no_grad()
    def encode_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """DINOv2 CLS + patch tokens (layer-normed, as `x_norm_clstoken` / `x_norm_patchtokens`), projected."""
        encoder = self.image_encoder
        mean = torch.tensor(IMAGE_MEAN, device=reference.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD, device=reference.device, dtype=torch.float32).view(1, 3, 1, 1)
        pixels = ((reference.float() - mean) / std).to(encoder.device, encoder.dtype)
        with self.official_dino_positions(*pixels.shape[-2:]):
            tokens = encoder(pixel_values=pixels).last_hidden_state
        return self.image_projector(tokens.to(self.image_projector.dtype))

    @torch.no_grad()
    def __call__(
        self,
        hint: torch.Tensor,
        reference: torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        control_scale: float = 1.0,
        step_callback: StepCallback | None = None,
    ) -> np.ndarray:
        device = self._execution_device
        dtype = self.unet.dtype
        batch = hint.shape[0]
        if hint.shape[1:] != (4, self.crop_size, self.crop_size):
            raise ValueError(f"hint must be (B, 4, {self.crop_size}, {self.crop_size}), got {tuple(hint.shape)}")
        if reference.shape != (batch, 3, self.encoder_size, self.encoder_size):
            raise ValueError(f"reference must be ({batch}, 3, {self.encoder_size}, {self.encoder_size})")

        cond = self.encode_reference(reference)
        uncond = self.encode_reference(torch.zeros_like(reference))  # the official unconditional input
        use_guidance = guidance_scale != 1.0
        context = torch.cat([uncond, cond]) if use_guidance else cond
        control_image = hint.to(device, dtype)
        control_image = torch.cat([control_image, control_image]) if use_guidance else control_image

        side = self.crop_size // self.vae_scale_factor
        shape = (batch, self.unet.config.in_channels, side, side)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        timesteps = self.scheduler.timesteps
        for index, t in enumerate(timesteps):
            model_input = torch.cat([latents, latents]) if use_guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            down_residuals, mid_residual = self.controlnet(
                model_input,
                t,
                encoder_hidden_states=context,
                controlnet_cond=control_image,
                conditioning_scale=control_scale,
                return_dict=False,
            )
            noise = self.unet(
                model_input,
                t,
                encoder_hidden_states=context,
                down_block_additional_residuals=down_residuals,
                mid_block_additional_residual=mid_residual,
                return_dict=False,
            )[0]
            if use_guidance:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            latents = self.scheduler.step(noise, t, latents, eta=0.0, return_dict=False)[0]
            if step_callback is not None:
                step_callback(index + 1, len(timesteps))

        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        images = (images.float() * 127.5 + 127.5).clamp(0, 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()


def load_anydoor_pipeline(model: str, torch_device: torch.device, torch_dtype: torch.dtype) -> AnyDoorPipeline:
    """An `AnyDoorPipeline` from a converted folder or hub id (safetensors only), checked, on `torch_device`."""
    pipe = AnyDoorPipeline.from_pretrained(model, dtype=torch_dtype, use_safetensors=True)
    pipe.check_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch_device)


def make_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SD21_SCHEDULER)


def tiny_dinov2(hidden: int = 24, image_size: int = 42) -> Dinov2Model:
    """A tiny random `Dinov2Model` (patch 14 like ViT-g/14; SwiGLU like the giant). Its 3x3 position grid is
    resized to the tiny pipeline's 28 px input (2x2), as the giant's 37x37 grid is resized to 224 px (16x16)."""
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=image_size,
        patch_size=14,
        use_swiglu_ffn=True,
    )
    return Dinov2Model(config)


def tiny_unet_config(cross_attention_dim: int = 32) -> dict:
    """The tiny UNet/ControlNet architecture shared by the tiny pipeline and the converter tests."""
    return {
        "in_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": (2, 4),  # LDM num_head_channels 16: 32 // 16 and 64 // 16 heads
        "use_linear_projection": True,  # SD 2.x transformers project with Linear layers
        "norm_num_groups": 32,
    }


def tiny_vae() -> AutoencoderKL:
    return tiny_autoencoder((32, 32, 64, 64), norm_num_groups=32)


def zero_conv_in(controlnet: ControlNetModel) -> ControlNetModel:
    """AnyDoor's ControlNet skips its first layer: a zero `conv_in` makes diffusers' forward do the same."""
    with torch.no_grad():
        controlnet.conv_in.weight.zero_()
        controlnet.conv_in.bias.zero_()
    return controlnet


def make_tiny_anydoor(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny random `AnyDoorPipeline` (real classes, tiny configs: 64 px crops, 28 px DINOv2 input)."""
    from ..base import empty_target_dir, save_dir_atomically

    out = empty_target_dir(directory)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet_config = tiny_unet_config()
        unet = UNet2DConditionModel(
            **unet_config, sample_size=8, out_channels=4, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")
        )
        controlnet = zero_conv_in(ControlNetModel(**unet_config, conditioning_channels=4))
        encoder = tiny_dinov2()
        projector = AnyDoorImageProjector(encoder.config.hidden_size, unet_config["cross_attention_dim"])
        vae = tiny_vae()
    finally:
        torch.random.set_rng_state(state)
    pipe = AnyDoorPipeline(
        vae=vae,
        unet=unet,
        controlnet=controlnet,
        image_encoder=encoder,
        image_projector=projector,
        scheduler=make_scheduler(),
        crop_size=64,
        encoder_size=28,
    )
    return save_dir_atomically(out, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
