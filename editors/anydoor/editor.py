"""AnyDoor: put a subject from a reference photo into a marked region of the frame (subject swap or insertion).

Chen et al., "AnyDoor: Zero-shot Object-level Image Customization" (CVPR 2024). The model is our diffusers port of
the official one (`editors.anydoor.pipeline`), loaded from a folder written once by
`python -m editors convert-anydoor CKPT OUT_DIR` from the official checkpoint (default folder `models/anydoor`,
or `ANYV2V_ANYDOOR_MODEL`, or `--model`). The subject's mask comes from, in order: an uploaded subject mask, the
reference's transparency (an RGBA cut-out), or rembg with a local model file (`editors.anydoor.masks`). The target region
is painted on the frame in the app, or given as `--mask M.png` / `--box x0,y0,x1,y1` in frame pixels. Region mode
"box" (default, as the official demo) marks the region's bounding box for the model; "shape" (the demo's shape
control) marks the painted shape itself.
Reference settings (`run_inference.py`): DDIM 50 steps, guidance 5.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anyv2v.backbone import looks_like_path
from anyv2v.errors import ModelLoadError

from ..base import Editor, EditorError, EditorInput, Progress, as_mask, missing_model_message, resolve_torch_device
from .masks import SubjectMasker

ORDER = 25  # after the other generative editors, before the manual upload
MODEL_ENV = "ANYV2V_ANYDOOR_MODEL"
DEFAULT_MODEL = "./models/anydoor"  # a local folder: no hub copy in this format exists
CONVERT_HINT = (
    "convert the official AnyDoor checkpoint once with `python -m editors convert-anydoor epoch=1-step=8687.ckpt "
    "models/anydoor` (see docs/editors.md), or point ANYV2V_ANYDOOR_MODEL / --model at a "
    "converted folder"
)
_REQUIRED_PACKAGES = ("cv2", "diffusers", "transformers")
REGION_MODES = ("box", "shape")
UNAVAILABLE = "the subject editor (AnyDoor) is not set up on this server: {what} missing; the server's operator can enable it."


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return int(np.asarray(image.convert("RGBA").getchannel("A")).min()) < 255
    return False


def fit_region(mask: Image.Image, frame_size: tuple[int, int], label: str) -> np.ndarray:
    """A region mask as bool at the frame's size; a mask of the same shape at another resolution is rescaled."""
    if mask.size == tuple(frame_size):
        return np.asarray(mask) > 127
    width, height = frame_size
    if abs(mask.size[0] / mask.size[1] - width / height) > 0.02 * width / height:
        sizes = f"{label} is {mask.size[0]}x{mask.size[1]} but the frame is {width}x{height}"
        raise EditorError(
            f"{sizes}; paint the region on the first frame, or give a mask image of the same shape as the frame.",
            cli=f"{sizes}; draw the mask on the prepared first frame (`python -m editors export-frame` writes it) or "
            "give a mask of the same shape.",
        )
    return np.asarray(mask.resize(frame_size, Image.Resampling.NEAREST)) > 127


class AnyDoorEditor(Editor):
    name = "anydoor"
    title = "Subject (AnyDoor)"
    description = "Put the subject of a reference photo into a region you mark on the frame (AnyDoor)."
    inputs = (
        EditorInput(
            "reference",
            "image",
            "Subject photo",
            required=True,
            help="A photo of the subject (your dog, a product, a car). An RGBA cut-out's transparency is its mask.",
        ),
        EditorInput(
            "reference_mask",
            "image",
            "Subject mask",
            help="White where the subject is in the photo. Without it: the photo's transparency, else rembg finds it.",
        ),
        EditorInput(
            "mask",
            "mask",
            "Target region",
            help="Where the subject goes: paint it on the frame, or a mask image of the frame (white = region).",
        ),
        EditorInput(
            "box",
            "text",
            "Target box",
            default="",
            help="Instead of painting: x0,y0,x1,y1 in pixels of the prepared first frame.",
        ),
        EditorInput(
            "region_mode",
            "choice",
            "Region mode",
            default="box",
            choices=REGION_MODES,
            help="box (default, as the official demo): the subject fills the region's bounding box in its own pose "
            "and proportions; best for a rough region or a box. shape (the demo's 'shape control'): the subject "
            "follows the painted outline; use it when you paint the silhouette and pose the subject should take.",
        ),
        EditorInput(
            "steps", "int", "Steps", default=50, minimum=1, maximum=200, step=1, help="DDIM steps (reference: 50)."
        ),
        EditorInput(
            "guidance",
            "float",
            "Guidance",
            default=5.0,
            minimum=1.0,
            maximum=15.0,
            step=0.5,
            help="Higher follows the subject more closely, lower blends it in more (reference: 5).",
        ),
        EditorInput("seed", "seed", "Seed", default=8888, help="Candidate i uses seed + i."),
    )
    model_ids = {"pipeline": DEFAULT_MODEL}
    model_env = MODEL_ENV
    supports_candidates = True
    oom_advice = "lower the number of candidates, or use float16 on a GPU."
    # The AnyV2V paper's subject-driven settings (reference configs for AnyDoor edits).
    video_settings = {"start_index": 0, "tau_conv": 0.2, "tau_sa": 0.2, "tau_ta": 1.0}

    def __init__(self) -> None:
        super().__init__()
        self._masker = SubjectMasker()

    def unavailable(self, model: str | None = None) -> EditorError | None:
        missing = [name for name in _REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            packages = {"cv2": "opencv-python-headless"}
            names = ", ".join(packages.get(m, m) for m in missing)
            details = f"the AnyDoor editor needs the packages {names} (pip install -r requirements.txt)."
            return EditorError(UNAVAILABLE.format(what="software it needs is"), operator=details, cli=details)
        chosen = self.resolve_model(model)
        if looks_like_path(chosen) and not os.path.isfile(os.path.join(chosen, "model_index.json")):
            details = f"the converted AnyDoor model folder {chosen} is missing: {CONVERT_HINT}."
            return EditorError(UNAVAILABLE.format(what="its model is"), operator=details, cli=details)
        # A missing rembg model is not a reason: a subject mask or an RGBA reference still works, and the edit
        # that needs rembg says what to upload instead (and logs which file to put where).
        return None

    # ---- inputs ---------------------------------------------------------------------------------------

    def target_region(self, frame: Image.Image, values: dict[str, Any]) -> np.ndarray:
        from .preprocess import box_from_text, box_mask, target_region

        mask, box = values.get("mask"), (values.get("box") or "").strip()
        if mask is not None and box:
            raise EditorError("give the target region one way, painted (or a mask image) or as a box, not both.")
        if box:
            region = box_mask(box_from_text(box, frame.size), frame.size)
        elif mask is not None:
            region = fit_region(mask, frame.size, self.input("mask").label)
        else:
            raise EditorError(
                "Target region is required: paint where the subject goes on the frame, or give a box x0,y0,x1,y1 "
                "(pixels of the prepared first frame).",
                cli="Target region is required: give --mask M.png (white where the subject goes) or --box "
                "x0,y0,x1,y1 (pixels of the prepared first frame).",
            )
        target_region(region)  # refuse empty, tiny and whole-frame regions before any model work
        return region

    def reference_and_mask(self, values: dict[str, Any], progress: Progress) -> tuple[Image.Image, np.ndarray]:
        from .preprocess import fit_reference, subject_box

        reference: Image.Image = values["reference"]
        given = values.get("reference_mask")
        if given is not None:
            label = self.input("reference_mask").label
            mask_image = as_mask(given, label)
            if mask_image is None:
                raise EditorError(f"{label} is empty: mark the subject in white (or opaque) on the photo.")
            if mask_image.size != reference.size:
                raise EditorError(
                    f"{label} is {mask_image.size[0]}x{mask_image.size[1]} but the subject photo is "
                    f"{reference.size[0]}x{reference.size[1]}; give a mask of the photo itself."
                )
            image, mask = fit_reference(reference.convert("RGB"), np.asarray(mask_image) > 127)
            where = "the subject mask"
        elif _has_alpha(reference):
            progress(0.0, "AnyDoor: using the subject photo's transparency as the subject mask")
            alpha = np.asarray(reference.convert("RGBA").getchannel("A")) > 127
            image, mask = fit_reference(reference.convert("RGB"), alpha)
            where = "the photo's transparency"
        else:
            image, _ = fit_reference(reference.convert("RGB"))
            progress(0.0, "AnyDoor: finding the subject in the photo with rembg")
            mask = self._masker(image)
            where = "rembg's mask"
        assert mask is not None
        subject_box(mask, where)
        return image, mask

    # ---- running --------------------------------------------------------------------------------------

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
        import torch

        from .preprocess import paste_back, prepare_pair

        model_id = self.resolve_model(model)
        self.check_available(model_id)  # before any work: the packages and the converted folder
        region = self.target_region(frame, values)
        reference, reference_mask = self.reference_and_mask(values, progress)

        progress(0.0, f"loading AnyDoor from {model_id}")
        torch_device, torch_dtype = resolve_torch_device(device, dtype)
        pipe = self.load_model(model_id, device, dtype, lambda: load_pipeline(model_id, torch_device, torch_dtype))
        pair = prepare_pair(
            frame, region, reference, reference_mask, pipe.crop_size, pipe.encoder_size,
            shape_control=values["region_mode"] == "shape",
        )

        steps = values["steps"]
        hint = torch.from_numpy(pair.hint).permute(2, 0, 1)[None].expand(candidates, -1, -1, -1)
        subject = torch.from_numpy(pair.reference).permute(2, 0, 1)[None].expand(candidates, -1, -1, -1)
        # CPU generators: the same seed gives the same candidate on any device.
        generators = [torch.Generator("cpu").manual_seed(values["seed"] + i) for i in range(candidates)]
        progress(0.0, f"AnyDoor: {candidates} candidate(s), {steps} steps")
        crops = pipe(
            hint,
            subject,
            num_inference_steps=steps,
            guidance_scale=values["guidance"],
            generator=generators,
            step_callback=lambda done, total: progress(done / total, f"AnyDoor step {done}/{total}"),
        )
        return [paste_back(crop, frame, pair) for crop in crops]

    @classmethod
    def make_tiny_model(cls, directory: str | os.PathLike) -> Path:
        """A tiny random AnyDoor pipeline (real classes, tiny configs and sizes) saved as a converted folder."""
        from .pipeline import make_tiny_anydoor

        return make_tiny_anydoor(directory)


def load_pipeline(model: str, torch_device: Any, torch_dtype: Any) -> Any:
    """The AnyDoor pipeline from a converted folder or hub id, with one clear error when it cannot load."""
    from .pipeline import load_anydoor_pipeline
    from ..instruct_pix2pix import _quiet_component_bars

    try:
        with _quiet_component_bars():
            return load_anydoor_pipeline(model, torch_device, torch_dtype)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelLoadError(
            missing_model_message(model, "an AnyDoor pipeline", exc) + f". {CONVERT_HINT[0].upper()}{CONVERT_HINT[1:]}."
        ) from None


EDITOR = AnyDoorEditor()
