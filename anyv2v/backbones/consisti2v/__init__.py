"""The ConsistI2V backbone (Ren et al. 2024, `TIGER-Lab/ConsistI2V`), as AnyV2V's official `consisti2v/` code edits
with it.

Components: Stable Diffusion 2.1-base's VAE, OpenCLIP text encoder (last hidden state) and tokenizer, DDIM
scheduler config (linear betas 0.00085-0.012, leading, steps_offset 1, epsilon), and ConsistI2V's video UNet
(`unet.ConsistI2VUNet`). The hub folder loads as it is: its model_index.json names the official UNet class
(`consisti2v.models.videoldm_unet.VideoLDMUNet3DConditionModel`), which we never import; unet/ is read with our class
(strict state-dict loading). Weights must be safetensors (`python -m anyv2v convert-consisti2v` converts a folder
of .bin pickles once, reading them with `torch.load(weights_only=True)`).

The edit as the reference runs it:
- The UNet denoises frames 1..F-1; the first frame's clean latent is a separate input (`first_frame`). Every
  latent of the engine holds all F frames: frame 0 is that clean latent (the inversion keeps the source first
  frame's latent there, as the reference saves `cat([first-frame latent, x])`; sampling puts the edited first
  frame's latent there, so the output is `cat([edited latent, frames])` as the reference decodes), and every
  scheduler step moves frames 1..F-1 only.
- Each frame is VAE-encoded alone (its posterior sampled with a generator seeded per clip), the first frame once
  per conditioning; decoding is one frame at a time.
- Inversion: DDIM inversion (diffusers' `DDIMInverseScheduler` on the model's config), prompt "", the source
  first frame, no guidance (batch 1), frame stride 3.
- Sampling: DDIM, eta 0; batch [source | uncond | cond]: text ["", negative prompt, prompt]; the edit branches
  are conditioned on the edited first frame. The source branch reads the inverted latent of the step; its
  first-frame condition is the **edited** first frame in the official code (a slip there: the inversion used the
  source frame) and that is our default (`source_branch_frame: edited` among this backbone's defaults);
  `source_branch_frame: source` runs the method as described (source branch on the source first frame).
- Guidance 35 on the text (image guidance 1: none), 50 steps, start index 4 (t = 901), the reference's editing
  negative prompt, taus 0.2 / 0.2 / 0.5, 256x256, 16 frames.
- Injection: conv at up_blocks[1].resnets[1] (conv2 output, before the shortcut), Q/K of the spatial
  self-attention (`attentions[i].transformer_blocks[0].attn1`) and of the temporal self-attention
  (`tempo_attns[i].transformer_blocks[0].attn1`, before its rotary embedding) at up_blocks[1] layers 1, 2 and
  up_blocks[2..3] layers 0..2; schedule `timesteps[:int(T * tau)]` over the full grid.
- FrameInit (`frame_init: true`; off by default, as in the reference's editing scripts): the start latent's low
  frequencies from the edited first frame diffused to `frame_init_noise_level` (850), see `frame_init.py`.
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
    Condition, VideoBackbone, check_model_reference, load_sd_components, looks_like_path, ready_for_inference,
)
from ..i2vgen_xl import DDIMPlan, SchedulerSteps

NAME = "consisti2v"
HUB_ID = "TIGER-Lab/ConsistI2V"
OFFICIAL_UNET_CLASS = "VideoLDMUNet3DConditionModel"
PIPELINE_CLASSES = ("ConditionalAnimationPipeline", "ConditionalVideoEditingPipeline")
FRAME_STRIDE = 3  # the editing configs' frame_stride (a UNet input)
SITE_PATHS = {
    "conv": "resnets.{i}.conv2",
    "spatial": "attentions.{i}.transformer_blocks.0.attn1",
    "temporal": "tempo_attns.{i}.transformer_blocks.0.attn1",
}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
LAYOUT = f"a folder in {HUB_ID}'s layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
NEGATIVE_PROMPT = (
    "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static, disfigured, "
    "disconnected limbs, Ugly faces, incomplete arms"
)
# Keys of the official UNet config that this implementation only supports at these values (the released model's).
FIXED_UNET_CONFIG = {
    "act_fn": "silu", "addition_embed_type": None, "attention_type": "default", "center_input_sample": False,
    "class_embed_type": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "dual_cross_attention": False,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False,
    "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": 1,
    "mid_block_scale_factor": 1, "cross_attention_norm": None, "class_embeddings_concat": False,
}


def consisti2v_pixels(image: Image.Image) -> torch.Tensor:
    """RGB -> [3, H, W] in [-1, 1] as the reference transforms frames: ToTensor (/255), Normalize(0.5, 0.5)."""
    array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    return (array.float() / 255.0 - 0.5) / 0.5


class FirstFrameSteps:
    """A scheduler whose steps move frames 1..F-1 of an F-frame latent and keep frame 0 (the clean first frame)."""

    def __init__(self, inner: SchedulerSteps) -> None:
        self.inner = inner
        self.timesteps = inner.timesteps

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        if model_output.shape[2] != sample.shape[2] - 1:
            raise ValueError(f"eps has {model_output.shape[2]} frames for a {sample.shape[2]}-frame latent")
        moved = self.inner.step(model_output, timestep, sample[:, :, 1:])
        return torch.cat([sample[:, :, :1], moved], dim=2)


@dataclass
class ConsistI2VBackbone(VideoBackbone):
    """The loaded ConsistI2V components plus where they run."""

    name: ClassVar[str] = NAME
    label: ClassVar[str] = "ConsistI2V"
    folder_kind: ClassVar[str] = "a ConsistI2V in TIGER-Lab/ConsistI2V's layout"
    default_model: ClassVar[str] = HUB_ID
    model_env: ClassVar[str] = "ANYV2V_CONSISTI2V_MODEL"
    defaults: ClassVar[dict[str, Any]] = {
        "width": 256, "height": 256, "frames": 16, "steps": 50, "inversion_steps": 500, "start_index": 4,
        "guidance": 35.0, "negative_prompt": NEGATIVE_PROMPT, "tau_conv": 0.2, "tau_sa": 0.2, "tau_ta": 0.5,
        "source_branch_frame": "edited",
    }
    batch_order: ClassVar[tuple[str, ...]] = ("source", "uncond", "cond")
    supports_frame_init = True
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
    frame_stride: int = FRAME_STRIDE

    @classmethod
    def load(cls, model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False) -> "ConsistI2VBackbone":
        return load_consisti2v(model, device, dtype, cpu_offload)

    @classmethod
    def timestep_plan(cls, model: str) -> DDIMPlan:
        return DDIMPlan(read_scheduler_config(model))

    @classmethod
    def default_timestep_plan(cls) -> DDIMPlan:
        from .tiny import SCHEDULER  # the released model's noise_scheduler_kwargs

        return DDIMPlan(dict(SCHEDULER))

    @property
    def plan(self) -> DDIMPlan:
        return DDIMPlan(self.scheduler_config)

    @classmethod
    def make_random_model(cls, directory: str, seed: int = 0, size: str = "tiny") -> tuple[Any, str]:
        """A tiny random ConsistI2V in the hub's layout (our writer); only "tiny" exists."""
        if size != "tiny":
            raise ConfigError(f"--{size}-size models are I2VGen-XL's; ConsistI2V has a tiny random model only.")
        from .tiny import make_tiny_consisti2v

        return make_tiny_consisti2v(directory, seed=seed), f"a tiny random ConsistI2V ({HUB_ID}'s layout)"

    @classmethod
    def reference_unet_calls(cls, inversion_steps: int, steps: int, start_index: int = 0) -> dict[str, Any]:
        """The official scripts: the inversion (batch 1), then a DDIM reconstruction of `steps` steps from the
        noisiest latent (batch 1, not used by the edit), and the edit's steps from the start index at batch 3
        (the source branch runs on every step, injected or not)."""
        return {"inversion": inversion_steps + steps, "sampling": {"3": steps - start_index}}

    @classmethod
    def read_unet_config(cls, model: str) -> dict:
        from .unet import ConsistI2VUNet

        return dict(ConsistI2VUNet.load_config(str(Path(resolve_folder(model, CONFIG_PATTERNS)) / "unet")))

    @classmethod
    def meta_unet_call(cls, config: dict, frames: int, h: int, w: int) -> Callable[[], Any]:
        from .unet import ConsistI2VUNet

        unet = ConsistI2VUNet.from_config(config)
        cross = unet.config.cross_attention_dim
        channels = unet.config.in_channels
        return lambda: unet(
            torch.empty(1, channels, frames - 1, h, w), torch.tensor(901), torch.empty(1, 77, cross),
            torch.empty(1, channels, 1, h, w), FRAME_STRIDE,
        )

    # ---- conditioning -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """CLIP last hidden state, padded to the tokenizer's length (the reference's `_encode_prompt`)."""
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        with self.on_device(self.text_encoder):
            out = self.text_encoder(input_ids=tokens.input_ids.to(self.device))
        return out.last_hidden_state.to(self.dtype)

    @torch.no_grad()
    def encode_frames(
        self, frames: list[Image.Image], generator: torch.Generator, chunk: int = 8, compute_chunk: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> torch.Tensor:
        """[1, 4, F, h, w]: each frame VAE-encoded alone, its posterior sampled (noise drawn frame by frame from
        `generator`), x the VAE scaling factor. `chunk`/`compute_chunk` do not apply: one frame per VAE call."""
        from diffusers.utils.torch_utils import randn_tensor

        latents = []
        with self.on_device(self.vae):
            for i, frame in enumerate(frames):
                pixels = consisti2v_pixels(frame)[None].to(self.device, self.vae.dtype)
                dist = self.vae.encode(pixels).latent_dist
                noise = randn_tensor(dist.mean.shape, generator=generator, device=dist.mean.device, dtype=dist.mean.dtype)
                latents.append((dist.mean + dist.std * noise) * self.vae.config.scaling_factor)
                if progress is not None and len(frames) > 1:
                    progress("encode", i + 1, len(frames))
        return torch.cat(latents).permute(1, 0, 2, 3)[None].to(self.dtype)

    def first_frame_latent(self, frame: Image.Image, seed: int) -> torch.Tensor:
        """[1, 4, 1, h, w]: one frame's latent, its posterior noise from a generator seeded with `seed` (so the
        source first frame's latent equals frame 0 of the clip's latents)."""
        return self.encode_frames([frame], torch.Generator("cpu").manual_seed(seed))

    def inversion_condition(self, frames: list[Image.Image], seed: int, fps: int) -> Condition:
        return {"text": self.encode_prompt([""]), "first_frame": self.first_frame_latent(frames[0], seed)}

    def sampling_conditions(
        self, source_frame: Image.Image, edited_frame: Image.Image, prompt: str, negative_prompt: str, num_frames: int,
        seed: int, fps: int,
    ) -> dict[str, Condition]:
        """source: "" + `source_frame` (the sampler passes the edited frame there by default for this backbone,
        as the official code does); uncond: the negative prompt; cond: the prompt; both on the edited frame."""
        source_text, uncond_text, cond_text = self.encode_prompt(["", negative_prompt, prompt]).chunk(3)
        edited = self.first_frame_latent(edited_frame, seed)
        source = edited if source_frame is edited_frame else self.first_frame_latent(source_frame, seed)
        return {
            "source": {"text": source_text, "first_frame": source},
            "uncond": {"text": uncond_text, "first_frame": edited},
            "cond": {"text": cond_text, "first_frame": edited},
        }

    def sampling_start(self, latents: torch.Tensor, conditions: dict[str, Condition]) -> torch.Tensor:
        """The edit's latent: frames 1.. from the inversion, frame 0 the edited first frame's latent (what the
        reference prepends before decoding)."""
        first = conditions["cond"]["first_frame"].to(latents.device, latents.dtype)
        return torch.cat([first, latents[:, :, 1:]], dim=2)

    def frame_init(self, latents: torch.Tensor, conditions: dict[str, Condition], noise_level: int) -> torch.Tensor:
        """The reference's `use_frameinit` branch on the inverted start latent (all F frames, frame 0 the clean
        source latent, as the reference's `latents` before it splits frame 0 off): low frequencies from the
        edited first frame's latent diffused to `noise_level`."""
        from ...schedule import make_scheduler
        from .frame_init import frame_init

        alphas_cumprod = make_scheduler(self.scheduler_config, inverse=False).alphas_cumprod
        return frame_init(latents, conditions["cond"]["first_frame"], alphas_cumprod, noise_level)

    def forward(self, sample: torch.Tensor, timestep, condition: Condition) -> torch.Tensor:
        """One UNet call on F-frame latents: frames 1.. denoised, frame 0 replaced by the condition's first frame."""
        dev = lambda x: x.to(self.device, self.dtype)  # noqa: E731
        if torch.is_tensor(timestep):
            timestep = timestep.to(self.device)
        return self.unet(
            dev(sample[:, :, 1:]), timestep, dev(condition["text"]), dev(condition["first_frame"]), self.frame_stride
        )

    # ---- schedulers, sites, decoding ---------------------------------------------------------------------

    def inversion_scheduler(self, inversion_steps: int) -> FirstFrameSteps:
        from ...schedule import make_scheduler

        scheduler = make_scheduler(self.scheduler_config, inverse=True)
        scheduler.set_timesteps(inversion_steps)
        return FirstFrameSteps(SchedulerSteps(scheduler))

    def sampling_scheduler(self, steps: int, seed: int, noise: dict[int, torch.Tensor] | None = None) -> FirstFrameSteps:
        """DDIM (eta 0): deterministic, `seed` and `noise` are not used."""
        from ...schedule import make_scheduler

        scheduler = make_scheduler(self.scheduler_config, inverse=False)
        scheduler.set_timesteps(steps)
        return FirstFrameSteps(SchedulerSteps(scheduler))

    def injection_sites(self):
        from ...injection import injection_sites

        return injection_sites(self.unet, SITE_PATHS)

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, chunk: int = 1, progress: Callable[[str, int, int], None] | None = None
    ) -> list[Image.Image]:
        """[1, 4, F, h, w] -> RGB frames, one frame per VAE call as the reference; (x / 2 + 0.5) clamped to [0, 1],
        then rounded to uint8."""
        latents = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        frames: list[Image.Image] = []
        with self.on_device(self.vae):
            for i in range(latents.shape[0]):
                image = self.vae.decode(latents[i : i + 1].to(self.device, self.vae.dtype)).sample.float()
                image = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
                frames.append(Image.fromarray(image[0].permute(1, 2, 0).cpu().numpy()))
                if progress is not None:
                    progress("decode", len(frames), latents.shape[0])
        return frames


# ---- loading -----------------------------------------------------------------------------------------------


def _not_consisti2v(model: str) -> str:
    return f"{model} is not a ConsistI2V folder; give {LAYOUT} (the hub repo {HUB_ID} or a local copy)."


WEIGHT_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"]
CONFIG_PATTERNS = ["model_index.json", "scheduler/*.json", "unet/config.json"]


def resolve_folder(model: str, patterns: list[str] = WEIGHT_PATTERNS) -> str:
    """The local folder of `model`: the folder itself, or the hub snapshot of the files matching `patterns`
    (downloaded unless HF_HUB_OFFLINE; the configs alone for checks made before loading)."""
    if not model:
        raise ModelLoadError(f"no ConsistI2V model given; pass --model {HUB_ID} or a local copy of it.")
    check_model_reference(model)
    if looks_like_path(model) or os.path.isdir(os.path.expanduser(model)):
        folder = os.path.expanduser(model)
        ConsistI2VBackbone.check_folder(folder)
        return folder
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, allow_patterns=patterns)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one line
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        reason = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache" if offline else (
            first_line(exc)
        )
        raise ModelLoadError(f"cannot get ConsistI2V {model}: {reason}. Download it once, or pass a local copy.") from None


def read_scheduler_config(model: str) -> dict:
    """The scheduler config of a ConsistI2V folder (cheap: checks the folder before loading weights)."""
    path = Path(resolve_folder(model, CONFIG_PATTERNS)) / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing: {_not_consisti2v(model)}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc}).") from None


def check_unet_config(config: dict, model: str) -> None:
    """Refuse an official-UNet config whose options this implementation does not compute (one line)."""
    for key, value in FIXED_UNET_CONFIG.items():
        if key in config and config[key] != value:
            raise ModelLoadError(
                f"the ConsistI2V UNet of {model} sets {key}={config[key]!r}; only the released model's {value!r} is "
                "supported."
            )


def load_consisti2v(model: str, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False) -> ConsistI2VBackbone:
    """Load a ConsistI2V folder in the hub's layout (safetensors only; the UNet with strict loading)."""
    from safetensors.torch import load_file

    from .unet import ConsistI2VUNet

    folder = resolve_folder(model)
    torch_device, torch_dtype = resolve_device(device, dtype)
    for part in COMPONENTS:
        if not (Path(folder) / part).is_dir():
            raise ModelLoadError(f"{folder} has no {part}/: {_not_consisti2v(model)}")
    scheduler_config = read_scheduler_config(folder)
    unet_dir = Path(folder) / "unet"
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        if (unet_dir / "diffusion_pytorch_model.bin").is_file():
            raise ModelLoadError(
                f"{unet_dir} holds .bin pickles only; convert the folder once with `python -m anyv2v "
                "convert-consisti2v FOLDER OUT_DIR` and load OUT_DIR."
            )
        raise ModelLoadError(
            f"{weights} is missing: {_not_consisti2v(model)} (safetensors only; a copy with .bin weights converts "
            "with `python -m anyv2v convert-consisti2v`)"
        )
    try:
        config = dict(ConsistI2VUNet.load_config(str(unet_dir)))
        check_unet_config(config, model)
        unet = ConsistI2VUNet.from_config({k: v for k, v in config.items() if k not in FIXED_UNET_CONFIG})
        unet.load_state_dict(load_file(str(weights)), strict=True)
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise ModelLoadError(f"cannot load the ConsistI2V UNet of {model}: {first}") from None
    vae, text_encoder, tokenizer = load_sd_components(
        folder, torch_dtype, f"ConsistI2V's SD-2.1 components from {model}"
    )
    if torch_dtype != torch.float32:
        unet.to(dtype=torch_dtype)
    ready_for_inference((unet, vae, text_encoder), torch_device, cpu_offload)
    return ConsistI2VBackbone(
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
