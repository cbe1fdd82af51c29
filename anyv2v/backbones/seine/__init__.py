"""The SEINE backbone (Chen et al. 2023, `Vchitect/SEINE`), as AnyV2V's official `seine/` code edits with it.

Components: Stable Diffusion 1.4's VAE (scale 0.18215), CLIP text encoder (last hidden state) and tokenizer, and
SEINE's 3-D UNet (`unet.SeineUNet3D`, 9 input channels). Our folder layout (written by `convert-seine`, see
`convert.py`): model_index.json (`SEINEPipeline`), unet/ (config.json + safetensors), vae/, text_encoder/,
tokenizer/, scheduler/ (linear betas 0.0001-0.02, as the reference overrides SD-1.4's).

The edit as the reference runs it:
- UNet input: cat[latents (4), mask (1: 0 on frame 0, 1 after), VAE latents of [first frame, F-1 zero frames]
  (4)]; the source branch uses the source first frame, the edit branches the edited one.
- Inversion: DDIM inversion over `arange(N) * (1000 // N) + 1`, with alpha_prev = alphas_cumprod of the previous
  inversion timestep (alphas_cumprod[0] at the first); the reference keeps latents on the `save_steps` DDIM grid
  (default N/2), and the edit reads t+1 of each DDPM step and the grid's noisiest latent as x_T.
- Sampling: DDPM ("fixed_small" variance), timesteps `arange(S) * (1000 // S)` descending (980 ... 0 for 50:
  the diffusers release the reference pins ignores steps_offset there); per-step noise from a generator seeded
  with the edit's seed, or supplied tensors.
- Batch [source | cond | uncond]; guidance 4; negative prompt ""; taus 0.2 / 0.2 / 0.5.
- Injection: conv at up_blocks[1].resnets[1] (conv2 output), spatial and temporal self-attention Q/K of the
  transformer block of up_blocks[1].attentions[1, 2], up_blocks[2..3].attentions[0..2].
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ...device import resolve_device
from ...errors import ConfigError, ModelLoadError, first_line
from ..base import (
    Condition, TimestepPlan, VideoBackbone, check_model_reference, check_save_steps, load_sd_components,
    ready_for_inference,
)

NAME = "seine"
PIPELINE_CLASS = "SEINEPipeline"
SCALING_FACTOR = 0.18215
SITE_PATHS = {
    "conv": "resnets.{i}.conv2",
    "spatial": "attentions.{i}.transformer_blocks.0.attn1",
    "temporal": "attentions.{i}.transformer_blocks.0.attn_temp",
}
# SEINE's training schedule (the reference builds its DDIM/DDPM schedulers with these betas).
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
LAYOUT = "a SEINE folder written by `python -m anyv2v convert-seine` (unet/, vae/, text_encoder/, tokenizer/, scheduler/)"


def alphas_cumprod(config: dict) -> torch.Tensor:
    """alphas_cumprod of the linear beta schedule, float32 as diffusers computes it."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("beta_schedule", "linear") != "linear":
        raise ModelLoadError(f"SEINE's scheduler uses linear betas, not {config.get('beta_schedule')!r}.")
    betas = torch.linspace(float(config["beta_start"]), float(config["beta_end"]), n, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_grid(steps: int, total: int = 1000) -> list[int]:
    """The DDIM timesteps ('leading' + steps_offset 1), ascending: 1, 1 + 1000 // steps, ..."""
    ratio = total // steps
    return [i * ratio + 1 for i in range(steps)]


def ddpm_grid(steps: int, total: int = 1000) -> list[int]:
    """The DDPM timesteps of the reference's diffusers (no steps_offset), descending: 980, ..., 0 for 50."""
    ratio = total // steps
    return [i * ratio for i in reversed(range(steps))]


class SeinePlan(TimestepPlan):
    """Which inverted latents a SEINE edit reads: t+1 of every DDPM step, and x_T = the save grid's noisiest."""

    def __init__(self, total: int = 1000) -> None:
        self.total = total

    def sampling_timesteps(self, steps: int) -> list[int]:
        return ddpm_grid(steps, self.total)

    def inversion_timesteps(self, inversion_steps: int) -> list[int]:
        return ddim_grid(inversion_steps, self.total)

    def save_grid(self, inversion_steps: int, save_steps: int | None) -> list[int]:
        return ddim_grid(save_steps or max(1, inversion_steps // 2), self.total)

    def source_timestep(self, t: int) -> int:
        return int(t) + 1

    def start_timestep(self, timesteps: list[int], start_index: int, inversion_steps: int, save_steps: int | None) -> int:
        """x_T: the noisiest latent of the save grid (the reference's `load_ddim_latents_at_T`), whatever the
        first sampling step; with a start index, the latent the source branch reads at that step."""
        if start_index == 0:
            return max(self.save_grid(inversion_steps, save_steps))
        return self.source_timestep(timesteps[start_index])

    def needed(self, steps: int, inversion_steps: int, save_steps: int | None = None) -> set[int]:
        grid = self.save_grid(inversion_steps, save_steps)
        return {self.source_timestep(t) for t in self.sampling_timesteps(steps)} | {max(grid)}

    def covers(self, steps: int, inversion_steps: int, save_steps: int | None = None) -> bool:
        inversion = set(self.inversion_timesteps(inversion_steps))
        grid = set(self.save_grid(inversion_steps, save_steps))
        if max(inversion) >= self.total or not grid <= inversion:
            return False
        return {self.source_timestep(t) for t in self.sampling_timesteps(steps)} <= grid

    def compatible_inversion_steps(self, steps: int, save_steps: int | None = None) -> list[int]:
        return [n for n in range(1, self.total + 1) if (save_steps or n // 2) >= 1 and self.covers(steps, n, save_steps)]

    def check(self, steps: int, inversion_steps: int, save_steps: int | None = None) -> None:
        for name, value in (("steps", steps), ("inversion_steps", inversion_steps)):
            if not 1 <= value <= self.total:
                raise ConfigError(f"{name}={value} is outside [1, {self.total}]: the model was trained with {self.total} timesteps.")
        check_save_steps(inversion_steps, save_steps)
        if (save_steps or inversion_steps // 2) < 1:
            raise ConfigError(f"inversion_steps={inversion_steps} keeps no latent (half of it is 0); use at least 2.")
        if self.covers(steps, inversion_steps, save_steps):
            return
        from ...schedule import _ranges

        needed = [self.source_timestep(t) for t in self.sampling_timesteps(steps)]
        grid = "half of the inversion steps" if save_steps is None else f"inversion_save_steps={save_steps}"
        valid = self.compatible_inversion_steps(steps, save_steps)
        hint = f"use inversion_steps in: {_ranges(valid)}" if valid else "no inversion step count works with it"
        raise ConfigError(
            f"inversion_steps={inversion_steps} ({grid} kept) does not keep latents at the {steps}-step DDPM edit's "
            f"timesteps + 1 ({needed[0]}..{needed[-1]}); with steps={steps} {hint}."
        )


class DDIMInversion:
    """SEINE's hand-written DDIM inversion step (the reference's `ddim_inversion`)."""

    def __init__(self, alphas: torch.Tensor, inversion_steps: int, total: int = 1000) -> None:
        self.alphas = alphas
        self.timesteps = torch.tensor(ddim_grid(inversion_steps, total))
        self._index = {int(t): i for i, t in enumerate(self.timesteps)}

    def step(self, eps: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        i = self._index[int(t)]
        alpha = self.alphas[int(t)]
        alpha_prev = self.alphas[int(self.timesteps[i - 1])] if i > 0 else self.alphas[0]  # final_alpha_cumprod = ᾱ_0
        mu, mu_prev = alpha**0.5, alpha_prev**0.5
        sigma, sigma_prev = (1 - alpha) ** 0.5, (1 - alpha_prev) ** 0.5
        pred_x0 = (x - sigma_prev * eps) / mu_prev
        return mu * pred_x0 + sigma * eps


class DDPMSampler:
    """DDPM ("fixed_small" variance, epsilon prediction, no clipping) on the reference's grid; the variance noise
    of step t comes from `noise[t]` when given, else from a generator seeded with `seed` (steps with t > 0)."""

    def __init__(self, alphas: torch.Tensor, steps: int, seed: int, noise: dict[int, torch.Tensor] | None, total: int = 1000) -> None:
        self.alphas = alphas
        self.ratio = total // steps
        self.timesteps = torch.tensor(ddpm_grid(steps, total))
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.noise = noise

    def step(self, eps: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        t = int(t)
        prev = t - self.ratio
        alpha = self.alphas[t]
        alpha_prev = self.alphas[prev] if prev >= 0 else torch.tensor(1.0)
        beta, beta_prev = 1 - alpha, 1 - alpha_prev
        current_alpha = alpha / alpha_prev
        current_beta = 1 - current_alpha
        pred_x0 = (x - beta ** (0.5) * eps) / alpha ** (0.5)
        x0_coeff = (alpha_prev ** (0.5) * current_beta) / beta
        x_coeff = current_alpha ** (0.5) * beta_prev / beta
        prev_x = x0_coeff * pred_x0 + x_coeff * x
        if t > 0:
            variance = torch.clamp(beta_prev / beta * current_beta, min=1e-20)
            prev_x = prev_x + variance**0.5 * self.draw(t, x)
        return prev_x

    def draw(self, t: int, like: torch.Tensor) -> torch.Tensor:
        if self.noise is not None:
            if t not in self.noise:
                raise ConfigError(f"the supplied DDPM noise has no tensor for timestep {t}.")
            noise = self.noise[t]
            if tuple(noise.shape) != tuple(like.shape):
                raise ConfigError(f"the supplied DDPM noise at t={t} has shape {tuple(noise.shape)}, not {tuple(like.shape)}.")
            return noise.to(like.device, like.dtype)
        return torch.randn(like.shape, generator=self.generator, dtype=torch.float32).to(like.device, like.dtype)


def seine_pixels(image: Image.Image) -> torch.Tensor:
    """RGB -> [3, H, W] in [-1, 1] as the reference transforms frames: /255, then Normalize(0.5, 0.5)."""
    array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    return (array.float() / 255.0 - 0.5) / 0.5


@dataclass
class SeineBackbone(VideoBackbone):
    """The loaded SEINE components plus where they run."""

    name: ClassVar[str] = NAME
    label: ClassVar[str] = "SEINE"
    folder_kind: ClassVar[str] = "a converted SEINE (python -m anyv2v convert-seine)"
    default_model: ClassVar[str] = ""  # no hub repo in our format: convert the official checkpoint (README)
    model_env: ClassVar[str] = "ANYV2V_SEINE_MODEL"
    defaults: ClassVar[dict[str, Any]] = {
        "width": 512, "height": 512, "frames": 16, "steps": 50, "inversion_steps": 500, "guidance": 4.0,
        "negative_prompt": "", "tau_conv": 0.2, "tau_sa": 0.2, "tau_ta": 0.5,
    }
    batch_order: ClassVar[tuple[str, ...]] = ("source", "cond", "uncond")
    layout: ClassVar[str] = LAYOUT

    model_id: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    cpu_offload: bool = False

    @classmethod
    def load(cls, model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False) -> "SeineBackbone":
        return load_seine(model, device, dtype, cpu_offload)

    @classmethod
    def timestep_plan(cls, model: str) -> SeinePlan:
        return SeinePlan(int(read_scheduler_config(model).get("num_train_timesteps", 1000)))

    @classmethod
    def default_timestep_plan(cls) -> SeinePlan:
        return SeinePlan()

    @property
    def plan(self) -> SeinePlan:
        return SeinePlan(int(self.scheduler_config.get("num_train_timesteps", 1000)))

    @classmethod
    def make_random_model(cls, directory: str, seed: int = 0, size: str = "tiny") -> tuple[Any, str]:
        """A tiny random SEINE in our converted layout (the converter's writer); only "tiny" exists."""
        if size != "tiny":
            raise ConfigError(f"--{size}-size models are I2VGen-XL's; SEINE has a tiny random model only.")
        from .tiny import make_tiny_seine

        return make_tiny_seine(directory, seed=seed), "a tiny random SEINE (our converted layout)"

    @classmethod
    def reference_unet_calls(cls, inversion_steps: int, steps: int) -> dict[str, Any]:
        """The official scripts: the inversion (batch 1) then a DDIM reconstruction of as many steps (batch 1,
        not used by the edit), and every DDPM step at batch 3."""
        return {"inversion": 2 * inversion_steps, "sampling": {"3": steps}}

    @classmethod
    def read_unet_config(cls, model: str) -> dict:
        from .unet import SeineUNet3D

        return dict(SeineUNet3D.load_config(str(Path(resolve_folder(model)) / "unet")))

    @classmethod
    def meta_unet_call(cls, config: dict, frames: int, h: int, w: int) -> Callable[[], Any]:
        from .unet import SeineUNet3D

        unet = SeineUNet3D.from_config(config)
        cross = unet.config.cross_attention_dim
        return lambda: unet(torch.empty(1, unet.config.in_channels, frames, h, w), torch.tensor(980), torch.empty(1, 77, cross))

    @property
    def alphas(self) -> torch.Tensor:
        return alphas_cumprod(self.scheduler_config)

    # ---- conditioning -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """CLIP last hidden state, 77 tokens (SEINE's FrozenCLIPEmbedder)."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with self.on_device(self.text_encoder):
            out = self.text_encoder(input_ids=tokens.input_ids.to(self.device))
        return out.last_hidden_state.to(self.dtype)

    @torch.no_grad()
    def _vae_latents(
        self, pixels: torch.Tensor, generator: torch.Generator | None, compute_chunk: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> torch.Tensor:
        """[F, 3, H, W] pixels -> [1, 4, F, h, w] sampled latents x 0.18215 (noise drawn for all frames at once)."""
        from diffusers.utils.torch_utils import randn_tensor

        chunk = compute_chunk or pixels.shape[0]
        means, stds = [], []
        with self.on_device(self.vae):
            for start in range(0, pixels.shape[0], chunk):
                dist = self.vae.encode(pixels[start : start + chunk].to(self.device, self.vae.dtype)).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
                if progress is not None and pixels.shape[0] > 1:
                    progress("encode", min(start + chunk, pixels.shape[0]), pixels.shape[0])
        mean, std = torch.cat(means), torch.cat(stds)
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        latents = (mean + std * noise) * SCALING_FACTOR
        return latents.permute(1, 0, 2, 3)[None].to(self.dtype)

    def encode_frames(
        self, frames: list[Image.Image], generator: torch.Generator, chunk: int = 8, compute_chunk: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> torch.Tensor:
        """The clip's VAE latents [1, 4, F, h, w] (the inversion's start)."""
        pixels = torch.stack([seine_pixels(f) for f in frames])
        return self._vae_latents(pixels, generator, compute_chunk or chunk, progress)

    def first_frame_condition(self, frame: Image.Image, num_frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask [1, 1, F, h, w]: 0 on frame 0, 1 after; VAE latents of [frame, F-1 zero frames] [1, 4, F, h, w])."""
        first = seine_pixels(frame)
        pixels = torch.cat([first[None], torch.zeros((num_frames - 1, *first.shape))])
        latents = self._vae_latents(pixels, torch.Generator("cpu").manual_seed(seed))
        h, w = latents.shape[-2:]
        mask = torch.ones((1, 1, num_frames, h, w), dtype=latents.dtype)
        mask[:, :, 0] = 0
        return mask, latents

    def inversion_condition(self, frames: list[Image.Image], seed: int, fps: int) -> Condition:
        mask, masked = self.first_frame_condition(frames[0], len(frames), seed)
        return {"text": self.encode_prompt([""]), "mask": mask, "masked_video": masked}

    def sampling_conditions(
        self, source_frame: Image.Image, edited_frame: Image.Image, prompt: str, negative_prompt: str, num_frames: int,
        seed: int, fps: int,
    ) -> dict[str, Condition]:
        source_text, cond_text, uncond_text = self.encode_prompt(["", prompt, negative_prompt]).chunk(3)
        mask, masked_source = self.first_frame_condition(source_frame, num_frames, seed)
        _, masked_edited = self.first_frame_condition(edited_frame, num_frames, seed)
        return {
            "source": {"text": source_text, "mask": mask, "masked_video": masked_source},
            "cond": {"text": cond_text, "mask": mask, "masked_video": masked_edited},
            "uncond": {"text": uncond_text, "mask": mask, "masked_video": masked_edited},
        }

    def forward(self, sample: torch.Tensor, timestep, condition: Condition) -> torch.Tensor:
        dev = lambda x: x.to(self.device, self.dtype)  # noqa: E731
        inputs = torch.cat([dev(sample), dev(condition["mask"]), dev(condition["masked_video"])], dim=1)
        if torch.is_tensor(timestep):
            timestep = timestep.to(self.device)
        return self.unet(inputs, timestep, dev(condition["text"]))

    # ---- schedulers, sites, decoding ---------------------------------------------------------------------

    def inversion_scheduler(self, inversion_steps: int) -> DDIMInversion:
        return DDIMInversion(self.alphas.to(self.device), inversion_steps, self.plan.total)

    def sampling_scheduler(self, steps: int, seed: int, noise: dict[int, torch.Tensor] | None = None) -> DDPMSampler:
        return DDPMSampler(self.alphas.to(self.device), steps, seed, noise, self.plan.total)

    def injection_sites(self):
        from ...injection import injection_sites

        return injection_sites(self.unet, SITE_PATHS)

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, chunk: int = 4, progress: Callable[[str, int, int], None] | None = None
    ) -> list[Image.Image]:
        """[1, 4, F, h, w] -> RGB frames, as the reference: floor((x / 2 + 0.5) * 255 + 0.5) clamped."""
        latents = latents[0].permute(1, 0, 2, 3) / SCALING_FACTOR
        frames: list[Image.Image] = []
        with self.on_device(self.vae):
            for start in range(0, latents.shape[0], chunk):
                images = self.vae.decode(latents[start : start + chunk].to(self.device, self.vae.dtype)).sample.float()
                images = ((images / 2 + 0.5) * 255).add_(0.5).clamp_(0, 255).to(torch.uint8)
                for image in images.permute(0, 2, 3, 1).cpu().numpy():
                    frames.append(Image.fromarray(image))
                if progress is not None:
                    progress("decode", len(frames), latents.shape[0])
        return frames


# ---- loading -----------------------------------------------------------------------------------------------


def _not_seine(model: str) -> str:
    return f"{model} is not a SEINE folder in our format; give {LAYOUT}, or convert seine.pt with it."


def read_scheduler_config(model: str) -> dict:
    """The scheduler config of a SEINE folder (cheap: checks the folder before loading weights)."""
    folder = resolve_folder(model)
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing: {_not_seine(model)}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc}); convert the checkpoint again.") from None


def resolve_folder(model: str) -> str:
    """SEINE loads from a local folder only (what convert-seine writes); a hub id is refused with what to do."""
    if not model:
        raise ModelLoadError(
            "no SEINE model given: convert the official seine.pt with `python -m anyv2v convert-seine` and pass the "
            "folder with --model (or set ANYV2V_SEINE_MODEL)."
        )
    check_model_reference(model)
    folder = os.path.expanduser(model)
    if not os.path.isdir(folder):
        raise ModelLoadError(
            f"SEINE model {model} must be a local folder written by `python -m anyv2v convert-seine` (there is no "
            "hub repo in this format)."
        )
    SeineBackbone.check_folder(folder)
    return folder


def load_seine(model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False) -> SeineBackbone:
    """Load a SEINE folder (safetensors only; the UNet with strict loading)."""
    from safetensors.torch import load_file

    from .unet import SeineUNet3D

    folder = resolve_folder(model)
    torch_device, torch_dtype = resolve_device(device, dtype)
    for part in COMPONENTS:
        if not (Path(folder) / part).is_dir():
            raise ModelLoadError(f"{folder} has no {part}/: {_not_seine(model)}")
    scheduler_config = read_scheduler_config(folder)
    unet_dir = Path(folder) / "unet"
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"{weights} is missing: {_not_seine(model)}")
    try:
        config = SeineUNet3D.load_config(str(unet_dir))
        unet = SeineUNet3D.from_config(config)
        state = load_file(str(weights))
        unet.load_state_dict(state, strict=True)
    except (OSError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise ModelLoadError(f"cannot load the SEINE UNet of {model}: {first}. Convert the checkpoint again.") from None
    vae, text_encoder, tokenizer = load_sd_components(folder, torch_dtype, f"SEINE's SD-1.4 components from {model}")
    if torch_dtype != torch.float32:
        unet.to(dtype=torch_dtype)
    ready_for_inference((unet, vae, text_encoder), torch_device, cpu_offload)
    return SeineBackbone(
        model_id=model,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        device=torch_device,
        dtype=torch_dtype,
        cpu_offload=cpu_offload and torch_device.type == "cuda",
    )
