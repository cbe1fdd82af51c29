"""InstantID image-to-image on diffusers components: SDXL + IdentityNet (a ControlNet) + an IP-Adapter.

What differs from diffusers' `StableDiffusionXLControlNetImg2ImgPipeline`, and is overridden here:

- IdentityNet is conditioned on the face, not the text: its `encoder_hidden_states` are the 16 face tokens (the
  ArcFace embedding through the IP-Adapter's Resampler), with the negative branch made from a zero embedding,
  as in InstantID's own pipeline. The stock pipeline passes the prompt embeddings; a forward pre-hook on the
  ControlNet, installed for the duration of one call, swaps in the face tokens.
- The UNet sees the same face through the IP-Adapter (diffusers' core `load_ip_adapter` with the converted
  `ip-adapter.safetensors`: `IPAdapterPlusImageProjection` + IP-Adapter attention processors), fed the
  ArcFace embedding directly as `ip_adapter_image_embeds` (no CLIP image encoder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetImg2ImgPipeline

from anyv2v.backbone import looks_like_path
from anyv2v.errors import ModelLoadError

from ..base import missing_model_message, resolve_torch_device
from .convert import IDENTITYNET_DIR, IP_ADAPTER_FILE, check_instantid_folder
from ..instruct_pix2pix import _quiet_component_bars


class IdentityNetFaceTokens:
    """Forward pre-hook for IdentityNet: its `encoder_hidden_states` become the face tokens.

    `tokens` are [negative..., positive...] (classifier-free guidance); a batch of half that size (no
    guidance) gets the positive half.
    """

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        sample = args[0] if args else kwargs["sample"]
        tokens = self.tokens
        if sample.shape[0] != tokens.shape[0]:
            if 2 * sample.shape[0] != tokens.shape[0]:
                raise RuntimeError(f"IdentityNet batch {sample.shape[0]} does not match {tokens.shape[0]} face tokens")
            tokens = tokens.chunk(2)[1]
        return args, {**kwargs, "encoder_hidden_states": tokens.to(device=sample.device, dtype=module.dtype)}


class InstantIDImg2ImgPipeline(StableDiffusionXLControlNetImg2ImgPipeline):
    """SDXL ControlNet img2img whose ControlNet (IdentityNet) is conditioned on face tokens (see module doc)."""

    def face_image_embeds(self, face_embedding: torch.Tensor, batch: int, guidance: bool) -> torch.Tensor:
        """The IP-Adapter input for `batch` images: (2*batch or batch, 1, 1, 512), the negatives (zero
        embeddings) first when `guidance`."""
        embedding = face_embedding.reshape(1, 1, 1, -1).to(device=self._execution_device, dtype=self.unet.dtype)
        positive = embedding.repeat(batch, 1, 1, 1)
        return torch.cat([torch.zeros_like(positive), positive]) if guidance else positive

    def face_tokens(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """The projected face tokens (batch, 16, cross-attention width) for IP-Adapter inputs from
        `face_image_embeds`: the same Resampler the UNet applies."""
        projection = self.unet.encoder_hid_proj
        if projection is None:
            raise RuntimeError("the InstantID IP-Adapter is not loaded (call load_ip_adapter first)")
        return projection([image_embeds])[0][:, 0]

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        *,
        face_embedding: torch.Tensor,
        prompt: str | list[str],
        ip_adapter_scale: float = 0.8,
        guidance_scale: float = 5.0,
        **kwargs: Any,
    ) -> Any:
        """Stock arguments plus `face_embedding` (512-d ArcFace, the identity) and `ip_adapter_scale`;
        `control_image` is the keypoint image. One image per prompt (pass a list of prompts for several)."""
        if kwargs.get("guess_mode") or kwargs.get("num_images_per_prompt", 1) != 1:
            raise ValueError("InstantID runs without guess mode and with one image per prompt")
        for name in ("ip_adapter_image", "ip_adapter_image_embeds"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{name} is made from face_embedding")
        batch = 1 if isinstance(prompt, str) else len(prompt)
        guidance = guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None
        image_embeds = self.face_image_embeds(face_embedding, batch, guidance)
        self.set_ip_adapter_scale(ip_adapter_scale)
        hook = self.controlnet.register_forward_pre_hook(
            IdentityNetFaceTokens(self.face_tokens(image_embeds)), with_kwargs=True
        )
        try:
            return super().__call__(
                prompt=prompt, guidance_scale=guidance_scale, ip_adapter_image_embeds=[image_embeds], **kwargs
            )
        finally:
            hook.remove()


def load_instantid_pipeline(
    instantid_dir: str | os.PathLike, base: str, device: str | None = None, dtype: str | None = None
) -> InstantIDImg2ImgPipeline:
    """The InstantID pipeline: SDXL `base` (hub id or diffusers folder) + IdentityNet and the IP-Adapter from a
    converted InstantID folder. Safetensors only, never remote code."""
    reason = check_instantid_folder(instantid_dir)
    if reason:
        raise ModelLoadError(reason)
    if looks_like_path(base) and not os.path.isdir(base):
        raise ModelLoadError(f"SDXL folder {base} does not exist (give a diffusers-format SDXL folder or a hub id).")
    folder = Path(instantid_dir).expanduser()
    torch_device, torch_dtype = resolve_torch_device(device, dtype)
    try:
        identitynet = ControlNetModel.from_pretrained(folder / IDENTITYNET_DIR, dtype=torch_dtype, use_safetensors=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(missing_model_message(str(folder / IDENTITYNET_DIR), "IdentityNet", exc)) from None
    kwargs: dict[str, Any] = {"controlnet": identitynet, "dtype": torch_dtype, "use_safetensors": True}
    with _quiet_component_bars():
        pipe = _load_base(base, torch_dtype, kwargs)
    if identitynet.config.cross_attention_dim != pipe.unet.config.cross_attention_dim:
        raise ModelLoadError(
            f"IdentityNet in {folder} has cross-attention width {identitynet.config.cross_attention_dim} but the "
            f"SDXL UNet of {base} has {pipe.unet.config.cross_attention_dim}; use the SDXL base InstantID was made for."
        )
    try:
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=IP_ADAPTER_FILE, image_encoder_folder=None)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(missing_model_message(str(folder / IP_ADAPTER_FILE), "the InstantID IP-Adapter", exc)) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch_device)


def _load_base(base: str, torch_dtype: torch.dtype, kwargs: dict[str, Any]) -> InstantIDImg2ImgPipeline:
    """The SDXL base as an InstantID pipeline; on CUDA in float16 the hub's fp16 variant first (half the download)."""
    if torch_dtype == torch.float16 and not os.path.isdir(base):
        try:
            return InstantIDImg2ImgPipeline.from_pretrained(base, variant="fp16", **kwargs)
        except (OSError, ValueError):
            pass  # no fp16 variant: the default weights, cast
    try:
        return InstantIDImg2ImgPipeline.from_pretrained(base, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(
            missing_model_message(base, "an SDXL base model", exc)
            + ". Check the id or folder (diffusers SDXL layout in safetensors) and, for a hub id, the network."
        ) from None
