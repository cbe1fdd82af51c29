"""InstantID: give the person in the first frame the identity of one face photo ("make him look like this person").

InstantID (Wang et al. 2024) = SDXL + IdentityNet (a ControlNet on the 5 facial keypoints, conditioned on face
tokens) + an IP-Adapter fed the 512-d ArcFace embedding of the face photo. For a video edit it runs
image-to-image on the first frame: the keypoints come from the frame (so the head pose matches the video), the
identity from the photo, strength 0.85 as in InstantID's img2img script, and a prompt describing the frame.

Models (see README, "Identity editor (InstantID)"):
- the converted InstantID folder (`ANYV2V_INSTANTID_MODEL` or --model): `ControlNetModel/` + `ip-adapter.safetensors`,
  made once from the hub repo `InstantX/InstantID` by `python -m editors convert-instantid`;
- the SDXL base (`ANYV2V_SDXL_MODEL`; else an `sdxl/` folder inside the InstantID folder; else
  `stabilityai/stable-diffusion-xl-base-1.0`);
- InsightFace antelopev2 for the faces (`ANYV2V_FACE_MODELS`; see `editors.instantid.faces`), non-commercial licence.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from anyv2v.backbone import looks_like_path

from ..base import (
    Editor,
    EditorError,
    EditorInput,
    Progress,
    empty_target_dir,
    model_key,
    save_dir_atomically,
)
from .faces import (
    EMBEDDING_SIZE,
    FaceAnalyzer,
    analyzer_spec,
    analyzer_unavailable_reason,
    as_rgb_photo,
    choose_face,
    draw_keypoints,
    face_analysis_unavailable,
    face_models_dir,
    face_number_at,
    load_face_analyzer,
)
from .convert import (
    IDENTITYNET_DIR,
    IP_ADAPTER_FILE,
    check_instantid_folder,
    cross_attention_hidden_sizes,
    random_instantid_ip_adapter,
    write_ip_adapter_safetensors,
)

ORDER = 28  # after the other generative editors, before Manual
MODEL_ENV = "ANYV2V_INSTANTID_MODEL"
SDXL_ENV = "ANYV2V_SDXL_MODEL"
DEFAULT_INSTANTID_DIR = "~/.cache/anyv2v/instantid"
DEFAULT_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
BUNDLED_SDXL_DIR = "sdxl"  # an SDXL base inside the InstantID folder (make-tiny-model writes one)
DEFAULT_PROMPT = "a photo of a person, detailed face, natural light"
DEFAULT_NEGATIVE_PROMPT = (
    "lowres, low quality, worst quality, deformed, ugly, deformed eyes, blurry, out of focus, watermark, text"
)
MAX_FACE_INDEX = 32
SIZE_MULTIPLE = 64  # working sizes in multiples of 64 (InstantID's base_pixel_number): every SDXL level divides
DEFAULT_RESOLUTION = 1280  # the longer side: infer_img2img.py's resize_img(max_side=1280)
OFFICIAL_SHORT_SIDE = 1024  # resize_img's min_side: the first, intermediate scaling (only its rounding matters)


def sdxl_base(instantid_dir: str | os.PathLike) -> str:
    """The SDXL base: `ANYV2V_SDXL_MODEL`, else `<InstantID folder>/sdxl` when it holds a pipeline, else the hub's."""
    chosen = os.environ.get(SDXL_ENV, "").strip()
    if chosen:
        return chosen
    bundled = Path(instantid_dir).expanduser() / BUNDLED_SDXL_DIR
    return str(bundled) if (bundled / "model_index.json").is_file() else DEFAULT_SDXL


def working_size(size: tuple[int, int], resolution: int = DEFAULT_RESOLUTION) -> tuple[int, int]:
    """The size SDXL draws a frame of `size` at, by the rule of InstantID's `infer_img2img.py` (`resize_img`): the
    shorter side scaled to 1024 (rounded), then the longer side to `resolution` (1280 there), each side rounded
    and then cut down to a multiple of 64 (at least 64). A 16:9 frame runs at 1280x704, a square one at 1280x1280."""
    width, height = size
    first = OFFICIAL_SHORT_SIDE / min(width, height)
    width, height = round(width * first), round(height * first)
    scale = resolution / max(width, height)
    return tuple(max(SIZE_MULTIPLE, round(side * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE) for side in (width, height))


class InstantIDEditor(Editor):
    name = "instantid"
    title = "Identity (InstantID)"
    description = (
        "Give the person in the frame the identity of one face photo, keeping the frame's pose "
        "(InstantID: SDXL + IdentityNet + IP-Adapter; needs InsightFace antelopev2, non-commercial)."
    )
    inputs = (
        EditorInput(
            "face_image",
            "image",
            "Face photo",
            required=True,
            help="A photo of the person whose identity the frame gets: one clear face, frontal or three-quarter.",
        ),
        EditorInput(
            "prompt",
            "text",
            "Prompt",
            default=DEFAULT_PROMPT,
            help="Describe the frame as it should look (who, clothes, scene); the identity comes from the photo.",
        ),
        EditorInput("negative_prompt", "text", "Negative prompt", default=DEFAULT_NEGATIVE_PROMPT),
        EditorInput(
            "face",
            "int",
            "Face",
            default=0,
            minimum=0,
            maximum=MAX_FACE_INDEX,
            step=1,
            help="Which face of the frame gets the new identity: 0 = the largest (refused when several are of "
            "similar size), 1..N = the N-th face from the left. In the app, a click on a face in the first frame "
            "sets it.",
        ),
        EditorInput(
            "strength",
            "float",
            "Strength",
            default=0.85,
            minimum=0.05,
            maximum=1.0,
            step=0.05,
            help="How much of the frame is redrawn (InstantID img2img: 0.85; 1 ignores the frame's colours).",
        ),
        EditorInput(
            "identitynet_strength",
            "float",
            "IdentityNet strength",
            default=0.8,
            minimum=0.0,
            maximum=1.5,
            step=0.05,
            help="ControlNet conditioning scale of IdentityNet (keypoints + face; InstantID: 0.8).",
        ),
        EditorInput(
            "ip_scale",
            "float",
            "IP-Adapter scale",
            default=0.8,
            minimum=0.0,
            maximum=1.5,
            step=0.05,
            help="Weight of the face embedding in the UNet's cross-attention (InstantID: 0.8).",
        ),
        EditorInput("steps", "int", "Steps", default=30, minimum=1, maximum=200, step=1, help="Denoising steps (InstantID: 30)."),
        EditorInput(
            "guidance", "float", "Guidance", default=5.0, minimum=0.0, maximum=20.0, step=0.5, help="Text guidance (InstantID: 5)."
        ),
        EditorInput(
            "resolution",
            "int",
            "Working resolution",
            default=DEFAULT_RESOLUTION,
            minimum=64,
            maximum=2048,
            step=64,
            help="Longer side SDXL draws at, both sides multiples of 64 (InstantID's img2img script: 1280, so a 16:9 "
            "frame runs at 1280x704); lower is faster. The result is resized back to the frame.",
        ),
        EditorInput("seed", "seed", "Seed", default=42, help="Candidate i uses seed + i."),
    )
    model_ids = {"instantid": DEFAULT_INSTANTID_DIR, "sdxl": DEFAULT_SDXL}  # SDXL: ANYV2V_SDXL_MODEL
    model_env = MODEL_ENV
    supports_candidates = True
    oom_advice = "lower the working resolution or the number of candidates, or use float16 on a GPU."
    # The AnyV2V reference's four identity examples (i2vgen-xl/configs/group_pnp_edit/group_config.json) all use
    # start_index 0 and tau_ta 1.0; tau_conv = tau_sa is hand-tuned per clip (0.0 and 0.1 for a walking man,
    # 0.8 and 1.0 for a close-up). Suggested: their shared values and a low conv/attention injection.
    video_settings = {"tau_conv": 0.2, "tau_sa": 0.2, "tau_ta": 1.0, "start_index": 0}

    def instantid_folder(self, model: str | None = None) -> Path:
        return Path(self.resolve_model(model)).expanduser()

    def unavailable(self, model: str | None = None) -> EditorError | None:
        missing, details = [], []
        if importlib.util.find_spec("cv2") is None:
            missing.append("OpenCV")
            details.append("OpenCV is not installed: `pip install opencv-python-headless` (one OpenCV, headless).")
        face_reason = analyzer_unavailable_reason()
        if face_reason:
            missing.append("the face analysis models, InsightFace antelopev2")
            details.append(face_reason)
        folder = self.instantid_folder(model)
        model_reason = check_instantid_folder(folder)
        if model_reason:
            missing.append("the InstantID model")
            details.append(model_reason)
        base = sdxl_base(folder)
        if looks_like_path(base) and not os.path.isdir(base):
            missing.append("the SDXL base model")
            details.append(f"the SDXL folder {base} ({SDXL_ENV}) does not exist.")
        if not missing:
            return None
        what = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        return EditorError(
            f"the identity editor (InstantID) is not set up on this server (it lacks {what}); the server's operator "
            "can enable it.",
            operator=" ".join(details) + " See docs/editors.md.",
            cli=" ".join(details),
        )

    def load_analyzer(self, device: str | None = None, dtype: str | None = None) -> FaceAnalyzer:
        """The configured face analyzer (cached); EditorError saying what to install when it is missing."""
        reason = analyzer_unavailable_reason()
        if reason:  # before the cache, so a failed load evicts no other model
            raise face_analysis_unavailable(reason)
        key = f"faces:{analyzer_spec()}:{face_models_dir()}"
        return self.load_model(key, device, dtype, load_face_analyzer)

    def pipeline(self, model: str | None = None, device: str | None = None, dtype: str | None = None) -> Any:
        """The cached `InstantIDImg2ImgPipeline` for the InstantID folder `model` and its SDXL base."""
        folder = self.instantid_folder(model)
        self.check_available(str(folder))
        base = sdxl_base(folder)
        return self.load_model(
            f"{model_key(str(folder))}+{model_key(base)}", device, dtype, lambda: _load(folder, base, device, dtype)
        )

    click_inputs = ("face",)

    def values_at(self, frame: Image.Image, x: float, y: float) -> dict[str, Any]:
        return {"face": self.face_at(frame, x, y)}

    def face_at(self, frame: Image.Image, x: float, y: float) -> int:
        """The `face` value for a click at pixel (x, y) of the frame (for a UI that lets users click a face)."""
        return face_number_at(self.load_analyzer().detect(frame.convert("RGB")), x, y)

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
        folder = self.instantid_folder(model)
        steps, strength = values["steps"], values["strength"]
        denoising_steps = int(steps * strength)
        if denoising_steps < 1:
            raise EditorError(f"steps x strength = {steps} x {strength:g} is under one step; raise either.")
        self.check_available(str(folder))  # before any work

        progress(0.0, "finding the faces")
        analyzer = self.load_analyzer(device, dtype)
        photo, photo_note = as_rgb_photo(values["face_image"])
        identity, identity_note = choose_face(
            analyzer.detect(photo),
            0,
            "the face photo",
            how_to_pick="crop the photo to the one person whose identity you want",
        )
        target, target_note = choose_face(analyzer.detect(frame), values["face"], "the first frame")
        embedding = np.asarray(identity.embedding, dtype=np.float32).reshape(-1)
        if embedding.size != EMBEDDING_SIZE or not np.isfinite(embedding).all():
            raise EditorError(f"the face analyzer gave a {embedding.size}-d embedding; InstantID needs {EMBEDDING_SIZE}-d ArcFace.")
        notes = "; ".join(note for note in (photo_note, identity_note, target_note) if note)
        progress(0.0, notes)

        size = working_size(frame.size, values["resolution"])
        scale = np.array([size[0] / frame.width, size[1] / frame.height], dtype=np.float32)
        keypoint_image = draw_keypoints(size, np.asarray(target.keypoints, dtype=np.float32) * scale)
        init_image = frame.resize(size, Image.Resampling.LANCZOS) if size != frame.size else frame

        progress(0.0, f"loading InstantID from {folder} on SDXL {sdxl_base(folder)}")
        pipe = self.pipeline(str(folder), device, dtype)
        # CPU generators: the same seed gives the same candidate on any device.
        generators = [torch.Generator("cpu").manual_seed(values["seed"] + i) for i in range(candidates)]

        def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            progress((step + 1) / denoising_steps, f"InstantID step {step + 1}/{denoising_steps}")
            return callback_kwargs

        progress(0.0, f"InstantID: {candidates} candidate(s), {denoising_steps} steps at {size[0]}x{size[1]}")
        with torch.inference_mode():
            result = pipe(
                face_embedding=torch.from_numpy(embedding),
                prompt=[values["prompt"] or DEFAULT_PROMPT] * candidates,
                negative_prompt=[values["negative_prompt"]] * candidates,
                image=init_image,
                control_image=keypoint_image,
                strength=strength,
                num_inference_steps=steps,
                guidance_scale=values["guidance"],
                controlnet_conditioning_scale=float(values["identitynet_strength"]),
                ip_adapter_scale=float(values["ip_scale"]),
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step_end,
            )
        return list(result.images)

    @classmethod
    def make_tiny_model(cls, directory: str | os.PathLike) -> Path:
        """A tiny random InstantID folder (IdentityNet, ip-adapter.safetensors as the converter writes it) with a
        tiny SDXL base in `sdxl/`: the real classes, a few MB."""
        return make_tiny_instantid(directory)


def _load(folder: Path, base: str, device: str | None, dtype: str | None) -> Any:
    from .pipeline import load_instantid_pipeline

    return load_instantid_pipeline(folder, base, device, dtype)


def make_tiny_instantid(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny random InstantID (SDXL UNet/VAE/two CLIP text encoders, IdentityNet, IP-Adapter) to `directory`."""
    from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from anyv2v.tiny import tiny_autoencoder, tiny_clip_text

    out = empty_target_dir(directory)
    text_width = 32  # each text encoder; the UNet sees both side by side (64)
    blocks = {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "transformer_layers_per_block": (1, 2),
        "projection_class_embeddings_input_dim": 6 * 8 + text_width,  # 6 SDXL time ids x 8 + pooled text
        "cross_attention_dim": 2 * text_width,
    }
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **blocks
        )
        # IdentityNet: SDXL's ControlNet; four conditioning stages so the keypoint image (pixels) meets the
        # latents (1/8) as in the real model.
        identitynet = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(8, 8, 16, 16), **blocks)
        with torch.no_grad():  # a trained IdentityNet's output convolutions are not zero: let it matter
            for conv in [*identitynet.controlnet_down_blocks, identitynet.controlnet_mid_block]:
                conv.weight.normal_(0.0, 0.05)
        vae = tiny_autoencoder(scaling_factor=0.13025, force_upcast=False)  # SDXL's VAE scaling
        tokenizer, text_encoder = tiny_clip_text(text_width)
        tokenizer_2, _ = tiny_clip_text(text_width)
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**{**text_encoder.config.to_dict(), "projection_dim": text_width})
        )
        ip_adapter = random_instantid_ip_adapter(
            cross_attention_hidden_sizes(unet),
            output_dims=unet.config.cross_attention_dim,
            hidden_dims=64,  # diffusers reads the head count as width // 64
            heads=1,
            generator=torch.Generator().manual_seed(seed),
        )
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's global RNG as it was
    # SDXL base's scheduler config.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    sdxl = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )

    def save(tmp: Path) -> None:
        sdxl.save_pretrained(tmp / BUNDLED_SDXL_DIR, safe_serialization=True)
        identitynet.save_pretrained(tmp / IDENTITYNET_DIR, safe_serialization=True)
        write_ip_adapter_safetensors(ip_adapter, tmp / IP_ADAPTER_FILE)

    return save_dir_atomically(out, save)


EDITOR = InstantIDEditor()
