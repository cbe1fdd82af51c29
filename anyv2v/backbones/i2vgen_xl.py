"""The I2VGen-XL backbone: components and our own conditioning (prompt, CLIP image embedding, first-frame latents).

diffusers' I2VGenXLPipeline is deprecated and its prompt encoding breaks with transformers 5, so the
pipeline's conditioning is done here on top of the components.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..device import resolve_device
from ..errors import ModelLoadError
from .base import (
    Condition, TimestepPlan, VideoBackbone, check_model_reference, pil_to_tensor, ready_for_inference,
)

# Where a decoder layer's injection sites sit inside its up block ({i}: the layer's index in the block).
SITE_PATHS = {
    "conv": "resnets.{i}.conv2",
    "spatial": "attentions.{i}.transformer_blocks.0.attn1",
    "temporal": "temp_attentions.{i}.transformer_blocks.0.attn1",
}

COMPONENTS = ("unet", "vae", "text_encoder", "image_encoder", "tokenizer", "feature_extractor", "scheduler")


@dataclass
class Backbone(VideoBackbone):
    """The loaded I2VGen-XL components plus where they run."""

    name: ClassVar[str] = "i2vgen-xl"
    label: ClassVar[str] = "I2VGen-XL"
    folder_kind: ClassVar[str] = "a diffusers-format I2VGen-XL"
    default_model: ClassVar[str] = "ali-vilab/i2vgen-xl"
    model_env: ClassVar[str] = "ANYV2V_MODEL"
    defaults: ClassVar[dict[str, Any]] = {}  # EditConfig's defaults are I2VGen-XL's (the paper's)
    batch_order: ClassVar[tuple[str, ...]] = ("source", "uncond", "cond")
    layout: ClassVar[str] = (
        "a diffusers-format I2VGen-XL with unet/, vae/, text_encoder/, image_encoder/, tokenizer/, "
        "feature_extractor/, scheduler/"
    )

    model_id: str
    unet: Any
    vae: Any
    text_encoder: Any
    image_encoder: Any
    tokenizer: Any
    feature_extractor: Any
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    cpu_offload: bool = False

    # ---- the backbone interface -----------------------------------------------------------------------

    @classmethod
    def load(cls, model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False) -> "Backbone":
        return load_backbone(model, device, dtype, cpu_offload)

    @classmethod
    def timestep_plan(cls, model: str) -> "DDIMPlan":
        return DDIMPlan(load_scheduler_config(model))

    @classmethod
    def default_timestep_plan(cls) -> "DDIMPlan":
        from ..tiny import I2VGEN_XL_SCHEDULER  # the hub model's scheduler config

        return DDIMPlan(dict(I2VGEN_XL_SCHEDULER))

    @property
    def plan(self) -> "DDIMPlan":
        return DDIMPlan(self.scheduler_config)

    @classmethod
    def make_random_model(cls, directory: str, seed: int = 0, size: str = "tiny") -> tuple[Any, str]:
        """A random-weight model in our layout: "tiny" (tests, demos), "mid" (63 M UNet, CPU memory runs) or
        "real" (the hub model's real configs, fp16). Returns (path, what it is)."""
        from ..tiny import MID_SIZE_UNET, make_real_size_model, make_tiny_model

        if size == "real":
            return make_real_size_model(directory, seed=seed), "a random-weight I2VGen-XL with the hub model's real configs (fp16)"
        if size == "mid":
            return make_tiny_model(directory, seed=seed, unet_config=MID_SIZE_UNET), "a mid-size random I2VGen-XL (63 M parameter UNet)"
        return make_tiny_model(directory, seed=seed), "a tiny random I2VGen-XL"

    @classmethod
    def reference_unet_calls(cls, inversion_steps: int, steps: int) -> dict[str, Any]:
        """The official code: every inversion step at batch 1, every sampling step at batch 3."""
        return {"inversion": inversion_steps, "sampling": {"3": steps}}

    @classmethod
    def read_unet_config(cls, model: str) -> dict:
        from diffusers import I2VGenXLUNet

        return dict(I2VGenXLUNet.load_config(model, subfolder="unet"))

    @classmethod
    def meta_unet_call(cls, config: dict, frames: int, h: int, w: int) -> Callable[[], Any]:
        """A batch-1 UNet call at this latent size on the current (meta) device, for FLOP counting."""
        from diffusers import I2VGenXLUNet

        unet = I2VGenXLUNet.from_config(config)
        channels = unet.config.in_channels
        cross = unet.config.cross_attention_dim
        return lambda: unet(
            torch.empty(1, channels, frames, h, w),
            torch.tensor(981),
            fps=torch.tensor([8]),
            image_latents=torch.empty(1, channels, frames, h, w),
            image_embeddings=torch.empty(1, 1, cross),
            encoder_hidden_states=torch.empty(1, 77, cross),
        )

    def inversion_condition(self, frames: list[Image.Image], seed: int, fps: int) -> Condition:
        """Source first frame, empty prompt (the reference's inversion conditioning)."""
        text = self.encode_prompt([""])
        image_embeddings = self.encode_image(frames[0])
        image_latents = self.first_frame_latents(frames[0], len(frames), seed)
        return {"text": text, "image": image_embeddings, "image_latents": image_latents, "fps": torch.tensor([fps])}

    def sampling_conditions(
        self, source_frame: Image.Image, edited_frame: Image.Image, prompt: str, negative_prompt: str, num_frames: int,
        seed: int, fps: int,
    ) -> dict[str, Condition]:
        """source: "" + source frame; uncond: negative prompt, zero image embedding, edited frame's latents;
        cond: the prompt, the edited frame's embedding and latents."""
        source_text, uncond_text, cond_text = self.encode_prompt(["", negative_prompt, prompt]).chunk(3)
        source_image = self.encode_image(source_frame)
        edited_image = self.encode_image(edited_frame)
        source_latents = self.first_frame_latents(source_frame, num_frames, seed)
        edited_latents = self.first_frame_latents(edited_frame, num_frames, seed)
        fps_tensor = torch.tensor([fps])
        return {
            "source": {"text": source_text, "image": source_image, "image_latents": source_latents, "fps": fps_tensor},
            "uncond": {
                "text": uncond_text, "image": torch.zeros_like(edited_image), "image_latents": edited_latents,
                "fps": fps_tensor,
            },
            "cond": {"text": cond_text, "image": edited_image, "image_latents": edited_latents, "fps": fps_tensor},
        }

    def forward(self, sample: torch.Tensor, timestep, condition: Condition) -> torch.Tensor:
        return self.unet_forward(
            sample, timestep, condition["text"], condition["image"], condition["image_latents"], int(condition["fps"][0])
        )

    def inversion_scheduler(self, inversion_steps: int) -> "SchedulerSteps":
        from ..schedule import make_scheduler

        scheduler = make_scheduler(self.scheduler_config, inverse=True)
        scheduler.set_timesteps(inversion_steps)
        return SchedulerSteps(scheduler)

    def sampling_scheduler(self, steps: int, seed: int, noise: dict[int, torch.Tensor] | None = None) -> "SchedulerSteps":
        """DDIM (eta 0): deterministic, `seed` and `noise` are not used."""
        from ..schedule import make_scheduler

        scheduler = make_scheduler(self.scheduler_config, inverse=False)
        scheduler.set_timesteps(steps)
        return SchedulerSteps(scheduler)

    def injection_sites(self):
        from ..injection import injection_sites

        return injection_sites(self.unet, SITE_PATHS)

    # ---- conditioning -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """CLIP text embedding as I2VGen-XL uses it: penultimate layer + final layer norm, 77 tokens."""
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        with self.on_device(self.text_encoder):
            out = self.text_encoder(tokens.input_ids.to(self.device), output_hidden_states=True)
            text_model = getattr(self.text_encoder, "text_model", self.text_encoder)
            embeds = text_model.final_layer_norm(out.hidden_states[-2])
        return embeds.to(self.dtype)

    def _clip_pixels(self, image: Image.Image) -> torch.Tensor:
        # As the I2VGen-XL reference: center-crop a square of the working width, bilinear to CLIP's size.
        crop = self.feature_extractor.crop_size
        clip_w, clip_h = (crop, crop) if isinstance(crop, int) else (int(crop["width"]), int(crop["height"]))
        square = center_crop_wide(image, (image.width, image.width))
        square = square.resize((clip_w, clip_h), Image.Resampling.BILINEAR)
        pixels = np.asarray(square.convert("RGB"), dtype=np.float32) / 255.0
        mean = np.asarray(self.feature_extractor.image_mean, dtype=np.float32)
        std = np.asarray(self.feature_extractor.image_std, dtype=np.float32)
        pixels = (pixels - mean) / std
        return torch.from_numpy(pixels).permute(2, 0, 1)[None]

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """CLIP image embedding of a conditioning frame, shape [1, 1, D]."""
        with self.on_device(self.image_encoder):
            pixels = self._clip_pixels(image).to(self.device, self.image_encoder.dtype)
            embeds = self.image_encoder(pixels).image_embeds
        return embeds[:, None].to(self.dtype)

    @torch.no_grad()
    def encode_frames(
        self,
        frames: list[Image.Image],
        generator: torch.Generator,
        chunk: int = 8,
        compute_chunk: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> torch.Tensor:
        """VAE latents of frames, sampled and scaled: [1, C, F, H/8, W/8].

        The noise is drawn per `chunk` frames (this fixes the random stream, hence the latents); the VAE runs
        on `compute_chunk` frames at a time (default `chunk`), which bounds its memory without changing them.
        """
        pixels = torch.stack([pil_to_tensor(f) for f in frames])
        compute_chunk = min(compute_chunk or chunk, chunk)
        latents = []
        with self.on_device(self.vae):
            for start in range(0, len(frames), chunk):
                group = pixels[start : start + chunk]
                if compute_chunk >= len(group):
                    dist = self.vae.encode(group.to(self.device, self.vae.dtype)).latent_dist
                    sample = dist.sample(generator=generator)
                else:
                    # DiagonalGaussianDistribution.sample over the whole group, from per-part moments.
                    from diffusers.utils.torch_utils import randn_tensor

                    parts = [
                        self.vae.encode(group[i : i + compute_chunk].to(self.device, self.vae.dtype)).latent_dist
                        for i in range(0, len(group), compute_chunk)
                    ]
                    mean = torch.cat([part.mean for part in parts])
                    std = torch.cat([part.std for part in parts])
                    noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                    sample = mean + std * noise
                latents.append(sample * self.vae.config.scaling_factor)
                if progress is not None and len(frames) > 1:
                    progress("encode", min(start + chunk, len(frames)), len(frames))
        video = torch.cat(latents)  # [F, C, h, w]
        return video.permute(1, 0, 2, 3)[None].to(self.dtype)

    @torch.no_grad()
    def first_frame_latents(self, image: Image.Image, num_frames: int, seed: int) -> torch.Tensor:
        """The UNet's image_latents: first-frame latent then F-1 constant position frames, [1, C, F, h, w].

        A fresh generator per call keeps each conditioning latent a pure function of (frame, seed).
        """
        generator = torch.Generator("cpu").manual_seed(seed)
        latent = self.encode_frames([image], generator)  # [1, C, 1, h, w]
        position = [torch.ones_like(latent) * ((i + 1) / (num_frames - 1)) for i in range(num_frames - 1)]
        return torch.cat([latent, *position], dim=2)

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, chunk: int = 4, progress: Callable[[str, int, int], None] | None = None
    ) -> list[Image.Image]:
        """Decode [1, C, F, h, w] latents to RGB frames, `chunk` frames per VAE call (reports frames done)."""
        latents = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        frames: list[Image.Image] = []
        with self.on_device(self.vae):
            for start in range(0, latents.shape[0], chunk):
                images = self.vae.decode(latents[start : start + chunk].to(self.device, self.vae.dtype)).sample
                images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                for image in images.permute(0, 2, 3, 1).cpu().numpy():
                    frames.append(Image.fromarray(image))
                if progress is not None:
                    progress("decode", len(frames), latents.shape[0])
        return frames

    def unet_forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        text: torch.Tensor,
        image_embeddings: torch.Tensor,
        image_latents: torch.Tensor,
        fps: int,
    ) -> torch.Tensor:
        batch = sample.shape[0]
        fps_tensor = torch.tensor([fps] * batch, device=self.device)
        return self.unet(
            sample.to(self.device, self.dtype),
            timestep,
            fps=fps_tensor,
            image_latents=image_latents.to(self.device, self.dtype),
            image_embeddings=image_embeddings.to(self.device, self.dtype),
            encoder_hidden_states=text.to(self.device, self.dtype),
            return_dict=False,
        )[0]


def center_crop_wide(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """I2VGen-XL's crop: box-resize so the image covers `size` (integer-divided scale), then center crop."""
    scale = min(image.width / size[0], image.height / size[1])
    resized = image.resize((round(image.width // scale), round(image.height // scale)), resample=Image.Resampling.BOX)
    x1 = (resized.width - size[0]) // 2
    y1 = (resized.height - size[1]) // 2
    return resized.crop((x1, y1, x1 + size[0], y1 + size[1]))


# ---- loading -----------------------------------------------------------------------------------------


def _from_pretrained(cls: Any, model: str, subfolder: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(model, subfolder=subfolder, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelLoadError(_load_message(model, subfolder, exc)) from None


def _load_message(model: str, subfolder: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = "folder" if os.path.isdir(model) else "hub id"
    if where == "hub id" and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return (
            f"cannot load '{subfolder}' of {model}: HF_HUB_OFFLINE is set and it is not in the local Hugging Face "
            "cache. Download it once with network access, or pass a local diffusers-format folder."
        )
    return (
        f"cannot load '{subfolder}' of model {model} ({where}): {first[:200]}. "
        f"Check the model id or folder ({Backbone.layout}) and, for a hub id, the network."
    )


def load_scheduler_config(model: str) -> dict:
    """The scheduler config alone (cheap): used to check settings before loading the weights."""
    from diffusers import DDIMScheduler

    check_model_reference(model)
    Backbone.check_folder(model)
    return dict(_from_pretrained(DDIMScheduler, model, "scheduler").config)


def load_backbone(
    model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False
) -> Backbone:
    """Load I2VGen-XL from a hub id or a local diffusers-format folder (safetensors only)."""
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    check_model_reference(model)
    Backbone.check_folder(model)
    torch_device, torch_dtype = resolve_device(device, dtype)
    weights: dict[str, Any] = {"torch_dtype": torch_dtype, "use_safetensors": True}
    # The hub repo ships fp16 weights as a variant; local folders may not have it.
    variant = "fp16" if torch_dtype == torch.float16 and not os.path.isdir(model) else None

    def load_weights(cls: Any, subfolder: str) -> Any:
        if variant:
            try:
                return cls.from_pretrained(model, subfolder=subfolder, variant=variant, **weights)
            except (OSError, ValueError, EnvironmentError):
                pass  # no fp16 variant published: load the default weights and cast
        return _from_pretrained(cls, model, subfolder, **weights)

    unet = load_weights(I2VGenXLUNet, "unet")
    vae = load_weights(AutoencoderKL, "vae")
    text_encoder = load_weights(CLIPTextModel, "text_encoder")
    image_encoder = load_weights(CLIPVisionModelWithProjection, "image_encoder")
    tokenizer = _from_pretrained(CLIPTokenizer, model, "tokenizer")
    feature_extractor = _from_pretrained(CLIPImageProcessor, model, "feature_extractor")
    scheduler_config = dict(_from_pretrained(DDIMScheduler, model, "scheduler").config)
    ready_for_inference((unet, vae, text_encoder, image_encoder), torch_device, cpu_offload)
    return Backbone(
        model_id=model,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        tokenizer=tokenizer,
        feature_extractor=feature_extractor,
        scheduler_config=scheduler_config,
        device=torch_device,
        dtype=torch_dtype,
        cpu_offload=cpu_offload and torch_device.type == "cuda",
    )


class SchedulerSteps:
    """A diffusers scheduler as the engine's loops use it: `timesteps` and `step(eps, t, x) -> x`."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(model_output, timestep, sample).prev_sample


class DDIMPlan(TimestepPlan):
    """I2VGen-XL: DDIM sampling on leading timesteps, DDIM inversion whose grid must contain them."""

    def __init__(self, scheduler_config: dict) -> None:
        self.scheduler_config = scheduler_config

    def sampling_timesteps(self, steps: int) -> list[int]:
        from ..schedule import sampling_timesteps

        return sampling_timesteps(self.scheduler_config, steps)

    def inversion_timesteps(self, inversion_steps: int) -> list[int]:
        from ..schedule import make_scheduler

        scheduler = make_scheduler(self.scheduler_config, inverse=True)
        scheduler.set_timesteps(inversion_steps)
        return [int(t) for t in scheduler.timesteps.tolist()]

    def needed(self, steps: int, inversion_steps: int, save_steps: int | None = None) -> set[int]:
        return set(self.sampling_timesteps(steps))

    def covers(self, steps: int, inversion_steps: int, save_steps: int | None = None) -> bool:
        from ..schedule import inversion_timesteps_kept

        return inversion_timesteps_kept(self.scheduler_config, inversion_steps, steps) is not None

    def check(self, steps: int, inversion_steps: int, save_steps: int | None = None) -> None:
        from ..schedule import check_inversion_steps

        check_inversion_steps(self.scheduler_config, steps, inversion_steps)

    def compatible_inversion_steps(self, steps: int) -> list[int]:
        from ..schedule import compatible_inversion_steps

        return compatible_inversion_steps(self.scheduler_config, steps)
