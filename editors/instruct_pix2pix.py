"""InstructPix2Pix: edit the frame by a written instruction ("turn the man into a robot").

Loads any checkpoint of diffusers' `StableDiffusionInstructPix2PixPipeline` (the default
`timbrooks/instruct-pix2pix`, or MagicBrush `vinesmsuic/magicbrush-jul7`, or a local folder) with the
reference settings: Euler ancestral scheduler, 100 steps, image guidance 1.5, text guidance 7.5.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from anyv2v.backbone import looks_like_path
from anyv2v.errors import ModelLoadError
from anyv2v.tiny import tiny_autoencoder, tiny_clip_text

from .base import (
    Editor,
    EditorInput,
    Progress,
    empty_target_dir,
    missing_model_message,
    resolve_torch_device,
    save_dir_atomically,
)

ORDER = 10
DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
MODEL_ENV = "ANYV2V_IP2P_MODEL"


def load_pipeline(model: str, device: str | None = None, dtype: str | None = None) -> Any:
    """An InstructPix2Pix pipeline from a hub id or a local diffusers folder, on `device`, Euler ancestral.

    Safetensors only (no pickled weights) and never remote code. On CUDA in float16 the hub's fp16 variant
    is tried first (half the download), then the default weights cast to float16.
    """
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    if looks_like_path(model) and not os.path.isdir(model):
        raise ModelLoadError(f"model folder {model} does not exist (give a diffusers-format folder or a hub id).")
    torch_device, torch_dtype = resolve_torch_device(device, dtype)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "use_safetensors": True,
        "safety_checker": None,  # the pipeline edits the user's own frames; the checker would blank false positives
        "requires_safety_checker": False,
    }
    with _quiet_component_bars():
        pipe = _from_pretrained(StableDiffusionInstructPix2PixPipeline, model, torch_dtype, kwargs)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)  # progress goes through the editor's callback instead
    return pipe.to(torch_device)


def _from_pretrained(cls: Any, model: str, torch_dtype: torch.dtype, kwargs: dict[str, Any]) -> Any:
    pipe = None
    if torch_dtype == torch.float16 and not os.path.isdir(model):
        try:
            pipe = cls.from_pretrained(model, variant="fp16", **kwargs)
        except (OSError, ValueError):
            pipe = None  # no fp16 variant published: load the default weights and cast
    if pipe is None:
        try:
            pipe = cls.from_pretrained(model, **kwargs)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(
                missing_model_message(model, "an InstructPix2Pix pipeline", exc)
                + ". Check the id or folder (diffusers format with unet/, vae/, text_encoder/, tokenizer/, "
                "scheduler/ in safetensors) and, for a hub id, the network."
            ) from None
    return pipe


@contextlib.contextmanager
def _quiet_component_bars() -> Iterator[None]:
    """No 'Loading pipeline components' bar: the editor reports loading through its progress callback."""
    from diffusers.utils import logging as diffusers_logging

    was_active = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_active:
            diffusers_logging.enable_progress_bar()


class InstructPix2PixEditor(Editor):
    name = "instruct_pix2pix"
    title = "InstructPix2Pix"
    description = "Edit the frame by a written instruction (InstructPix2Pix; MagicBrush loads the same way)."
    inputs = (
        EditorInput(
            "instruction",
            "text",
            "Instruction",
            required=True,
            help="Describe the change, e.g. 'turn the man into a robot'.",
        ),
        EditorInput(
            "steps",
            "int",
            "Steps",
            default=100,
            minimum=1,
            maximum=500,
            step=1,
            help="Denoising steps (reference: 100).",
        ),
        EditorInput(
            "text_guidance",
            "float",
            "Text guidance",
            default=7.5,
            minimum=0.0,
            maximum=30.0,
            step=0.5,
            help="How strongly to follow the instruction (reference: 7.5).",
        ),
        EditorInput(
            "image_guidance",
            "float",
            "Image guidance",
            default=1.5,
            minimum=0.0,
            maximum=10.0,
            step=0.1,
            help="How closely to keep the original frame (reference: 1.5).",
        ),
        EditorInput("seed", "seed", "Seed", default=8888, help="Candidate i uses seed + i."),
    )
    model_ids = {"pipeline": DEFAULT_MODEL}
    model_env = MODEL_ENV
    supports_candidates = True
    oom_advice = "lower the number of candidates or the working size, or use float16 on a GPU."

    def _edit(
        self,
        frame: Image.Image,
        values: dict[str, Any],
        candidates: int,
        progress: Progress,
        model: str | None,
        device: str | None,
        dtype: str | None,
    ) -> list[Image.Image]:
        model_id = self.resolve_model(model)
        progress(0.0, f"loading InstructPix2Pix from {model_id}")
        pipe = self.load_model(model_id, device, dtype, lambda: load_pipeline(model_id, device, dtype))
        steps = values["steps"]
        # CPU generators: the same seed gives the same candidate on any device.
        generators = [torch.Generator("cpu").manual_seed(values["seed"] + i) for i in range(candidates)]

        def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            progress((step + 1) / steps, f"InstructPix2Pix step {step + 1}/{steps}")
            return callback_kwargs

        progress(0.0, f"InstructPix2Pix: {candidates} candidate(s), {steps} steps")
        with torch.inference_mode():
            # One batched call: one prompt and one image per candidate, one generator each.
            result = pipe(
                prompt=[values["instruction"]] * candidates,
                image=[frame] * candidates,
                num_inference_steps=steps,
                guidance_scale=values["text_guidance"],
                image_guidance_scale=values["image_guidance"],
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step_end,
            )
        return list(result.images)

    @classmethod
    def make_tiny_model(cls, directory: str | os.PathLike) -> Path:
        """A tiny random InstructPix2Pix (real classes, tiny configs, ~6 MB) saved as a diffusers folder."""
        return make_tiny_pipeline(directory)


def make_tiny_pipeline(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny random `StableDiffusionInstructPix2PixPipeline` to `directory` (must be absent or empty)."""
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )

    out = empty_target_dir(directory)
    hidden = 32  # text width = UNet cross-attention width
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=8,  # 4 noisy latent + 4 image latent channels: InstructPix2Pix's conditioning
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=hidden,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = tiny_autoencoder((32, 32, 64, 64), norm_num_groups=32)
        tokenizer, text_encoder = tiny_clip_text(hidden)
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's global RNG as it was
    # Stable Diffusion 1.x noise schedule, as in the real checkpoint.
    scheduler = EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return save_dir_atomically(out, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))


EDITOR = InstructPix2PixEditor()
