"""AnyDoor's inputs and output in pixels: the subject cut-out, the hint collage and the paste-back (OpenCV + numpy).

Follows the official preprocessing (`ali-vilab/AnyDoor`: `process_pairs` and `crop_back` in `run_inference.py`,
the helpers in `datasets/data_utils.py`, the training collage in `datasets/base.py`):

- Reference: the subject is cut out with its mask onto white, cropped to its box, padded by 1.2x and to a square
  (white), and resized to the encoder size (224): DINOv2's input. Its Sobel high-frequency map (the subject's
  edges, colour-weighted, on an eroded mask) is what the collage shows of the subject.
- Target: the region's box is grown 1.1x; the crop around it is grown 2x (the official scripts draw 1.3-2.9 or
  1.5-2.9 at random; a fixed value keeps a seed reproducible; see docs/editors.md) and squared. The collage is the crop with the region's box
  replaced by the Sobel map; the mask channel is 1 on the region's grown box (the official default; with shape
  control, the demo's option, on the painted shape itself), 0 elsewhere in the crop and -1 on the square padding,
  as in training. Everything is resized to the crop size
  (512).
- Output: the generated crop is resized back, unpadded, and only the region's box is pasted into the frame, so
  every pixel outside that box is the source frame's own (the official script pastes the whole crop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..base import EditorError, quoted

REFERENCE_EXPAND = 1.2  # run_inference.py: the subject's box padded by 1.2x before squaring
REGION_EXPAND = 1.1  # the target region's box grown 1.1x (training and run_inference.py)
CROP_EXPAND = 2.0  # the crop around the region (run_inference.py draws 1.5-2.9, run_gradio_demo.py 1.3-2.9)
MAX_REGION_FRACTION = 0.9  # a region this wide and tall leaves no context around it
MIN_REGION_SIDE = 8  # pixels of the frame
MIN_SUBJECT_SIDE = 8  # pixels of the reference
MIN_REFERENCE_SIDE = 16
MAX_REFERENCE_SIDE = 8192
WORK_REFERENCE_SIDE = 1024  # bigger references are shrunk first: the subject ends up at 224 px anyway
SOBEL_SIZE = 256  # data_utils.sobel works at 256 px
SOBEL_THRESHOLD = 50

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), end exclusive


@dataclass
class AnyDoorPair:
    """One prepared (reference, target) pair: the model's inputs and what the paste-back needs."""

    hint: np.ndarray  # (crop, crop, 4) float32: collage RGB in [-1, 1], then the mask channel in {-1, 0, 1}
    reference: np.ndarray  # (encoder, encoder, 3) float32 in [0, 1]: the cut-out subject on white
    reference_image: np.ndarray  # the same as uint8
    sobel_map: np.ndarray  # (encoder, encoder, 3) uint8: the subject's high-frequency map
    crop_box: Box  # the crop in frame pixels
    region_box: Box  # the region's (grown) box in frame pixels: the only pixels the paste-back changes
    frame_size: tuple[int, int]  # (width, height)


def box_from_text(text: str, frame_size: tuple[int, int]) -> Box:
    """'x0,y0,x1,y1' in frame pixels (x1, y1 exclusive) as a checked (y0, y1, x0, x1) box.

    Commas and/or spaces separate the numbers. Anything that is not four finite numbers (text, NaN, inf, 1e999)
    gets one message; the user's text is quoted at most `quoted`'s length."""
    width, height = frame_size
    shown = quoted(str(text))
    parts = [part for part in str(text).replace(",", " ").split() if part]
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(number) for number in numbers):
        raise EditorError(
            f"box {shown} must be four finite numbers x0,y0,x1,y1 in frame pixels, e.g. 100,120,300,400."
        )
    x0, y0, x1, y1 = (int(round(number)) for number in numbers)
    if x1 <= x0 or y1 <= y0:
        raise EditorError(f"box {shown} is empty: x1 must be greater than x0 and y1 greater than y0.")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise EditorError(
            f"box {shown} reaches outside the {width}x{height} frame; give x0,y0,x1,y1 within 0..{width} and "
            f"0..{height} (the prepared first frame's pixels)."
        )
    return (y0, y1, x0, x1)


def box_mask(box: Box, frame_size: tuple[int, int]) -> np.ndarray:
    width, height = frame_size
    mask = np.zeros((height, width), dtype=bool)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def mask_box(mask: np.ndarray) -> Box | None:
    """The bounding box of the True pixels (end exclusive), None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def expand_box(box: Box, ratio: float, height: int, width: int) -> Box:
    """`box` grown `ratio` times about its centre, clipped to the image (data_utils.expand_bbox)."""
    y0, y1, x0, x1 = box
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    half_h, half_w = ratio * (y1 - y0) / 2, ratio * (x1 - x0) / 2
    return (
        max(0, int(cy - half_h)),
        min(height, int(np.ceil(cy + half_h))),
        max(0, int(cx - half_w)),
        min(width, int(np.ceil(cx + half_w))),
    )


def square_box(box: Box, height: int, width: int) -> Box:
    """`box` widened to a square about its centre, clipped to the image (data_utils.box2squre)."""
    y0, y1, x0, x1 = box
    side = max(y1 - y0, x1 - x0)
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    y0, x0 = cy - side // 2, cx - side // 2
    return (max(0, y0), min(height, y0 + side), max(0, x0), min(width, x0 + side))


def pad_to_square(image: np.ndarray, value: float) -> tuple[np.ndarray, tuple[int, int]]:
    """`image` centred on a square of `value` (data_utils.pad_to_square); also the (top, left) offset."""
    height, width = image.shape[:2]
    if height == width:
        return image, (0, 0)
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padded = np.full((side, side, *image.shape[2:]), value, dtype=image.dtype)
    padded[top : top + height, left : left + width] = image
    return padded, (top, left)


def target_region(mask: np.ndarray) -> Box:
    """The grown box of the target region, refusing empty, tiny and whole-frame regions."""
    height, width = mask.shape
    box = mask_box(mask)
    if box is None:
        raise EditorError(
            "the target region is empty: paint where the subject goes on the frame, or give a box x0,y0,x1,y1.",
            cli="the target region is empty: give --mask M.png (white where the subject goes) or --box x0,y0,x1,y1.",
        )
    y0, y1, x0, x1 = box
    if y1 - y0 < MIN_REGION_SIDE or x1 - x0 < MIN_REGION_SIDE:
        raise EditorError(
            f"the target region is only {x1 - x0}x{y1 - y0} pixels; mark a region of at least "
            f"{MIN_REGION_SIDE}x{MIN_REGION_SIDE} pixels."
        )
    if y1 - y0 > MAX_REGION_FRACTION * height and x1 - x0 > MAX_REGION_FRACTION * width:
        raise EditorError(
            f"the target region ({x1 - x0}x{y1 - y0} of the {width}x{height} frame) covers nearly the whole frame; "
            f"AnyDoor needs the scene around it: mark a region less than {int(MAX_REGION_FRACTION * 100)}% of the "
            "frame's width or height."
        )
    return expand_box(box, REGION_EXPAND, height, width)


def fit_reference(image: Image.Image, mask: np.ndarray | None = None) -> tuple[Image.Image, np.ndarray | None]:
    """The reference (and its mask) checked for size and shrunk to at most WORK_REFERENCE_SIDE a side."""
    width, height = image.size
    if min(width, height) < MIN_REFERENCE_SIDE:
        raise EditorError(
            f"the reference image is {width}x{height}; give a photo of the subject at least "
            f"{MIN_REFERENCE_SIDE} pixels a side."
        )
    if max(width, height) > MAX_REFERENCE_SIDE:
        raise EditorError(
            f"the reference image is {width}x{height}; give one at most {MAX_REFERENCE_SIDE} pixels a side "
            "(the subject is used at 224 pixels)."
        )
    scale = WORK_REFERENCE_SIDE / max(width, height)
    if scale >= 1:
        return image, mask
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = image.resize(size, Image.Resampling.LANCZOS)
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    return small, mask


def subject_box(mask: np.ndarray, where: str) -> Box:
    box = mask_box(mask)
    if box is None:
        raise EditorError(
            f"no subject found in the subject photo ({where} is empty); upload a subject mask or an RGBA cut-out "
            "whose transparency cuts the subject out.",
            cli=f"no subject found in the reference ({where} is empty); give a subject mask (--reference-mask) or an "
            "RGBA reference whose transparency cuts the subject out.",
        )
    y0, y1, x0, x1 = box
    if y1 - y0 < MIN_SUBJECT_SIDE or x1 - x0 < MIN_SUBJECT_SIDE:
        raise EditorError(
            f"the subject in the reference is only {x1 - x0}x{y1 - y0} pixels ({where}); give a larger photo of the "
            "subject or a better subject mask."
        )
    return box


def sobel_map(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The subject's high-frequency map (data_utils.sobel): edges above 50, weighting the colours, on an eroded mask."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (SOBEL_SIZE, SOBEL_SIZE))
    small_mask = (cv2.resize(mask.astype(np.float32), (SOBEL_SIZE, SOBEL_SIZE)) > 0.5).astype(np.uint8)
    small_mask = cv2.erode(small_mask, np.ones((5, 5), np.uint8), iterations=2)
    grad_x = cv2.convertScaleAbs(cv2.Sobel(small, cv2.CV_64F, 1, 0, ksize=3))
    grad_y = cv2.convertScaleAbs(cv2.Sobel(small, cv2.CV_64F, 0, 1, ksize=3))
    edges = np.max(cv2.addWeighted(grad_x, 0.5, grad_y, 0.5, 0), axis=-1) * small_mask
    edges[edges < SOBEL_THRESHOLD] = 0
    weighted = (edges[..., None].astype(np.float32) / 255 * small.astype(np.float32)).astype(np.uint8)
    return cv2.resize(weighted, (width, height))


def cut_out_subject(reference: np.ndarray, mask: np.ndarray, encoder_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The subject on white, padded and squared at `encoder_size`, and its mask there (0..255)."""
    y0, y1, x0, x1 = subject_box(mask, "its mask")
    keep = mask[..., None]
    on_white = np.where(keep, reference, 255).astype(np.uint8)[y0:y1, x0:x1]
    subject_mask = mask[y0:y1, x0:x1].astype(np.uint8) * 255
    height, width = on_white.shape[:2]
    grow_h, grow_w = int(height * REFERENCE_EXPAND), int(width * REFERENCE_EXPAND)
    top, left = (grow_h - height) // 2, (grow_w - width) // 2
    grown = np.full((grow_h, grow_w, 3), 255, np.uint8)
    grown[top : top + height, left : left + width] = on_white
    grown_mask = np.zeros((grow_h, grow_w), np.uint8)
    grown_mask[top : top + height, left : left + width] = subject_mask
    square, _ = pad_to_square(grown, 255)
    square_mask, _ = pad_to_square(grown_mask, 0)
    size = (encoder_size, encoder_size)
    return cv2.resize(square, size), cv2.resize(square_mask, size)


def prepare_pair(
    frame: Image.Image,
    region: np.ndarray,
    reference: Image.Image,
    reference_mask: np.ndarray,
    crop_size: int,
    encoder_size: int,
    shape_control: bool = False,
) -> AnyDoorPair:
    """The model inputs for putting the masked subject of `reference` into `region` (bool HxW) of `frame`.

    `shape_control` False (default, as in the official demo): the mask channel is the region's (grown) bounding
    box; True (the demo's "Enable Shape Control"): it is the painted region's own shape."""
    target = np.asarray(frame.convert("RGB"))
    height, width = target.shape[:2]
    if region.shape != (height, width):
        raise EditorError(
            f"the target region is {region.shape[1]}x{region.shape[0]} but the frame is {width}x{height}."
        )
    region_box = target_region(region)

    subject, subject_mask = cut_out_subject(np.asarray(reference.convert("RGB")), reference_mask, encoder_size)
    edges = sobel_map(subject, subject_mask.astype(np.float32) / 255)

    crop_box = square_box(expand_box(region_box, CROP_EXPAND, height, width), height, width)
    cy0, cy1, cx0, cx1 = crop_box
    ry0, ry1, rx0, rx1 = region_box[0] - cy0, region_box[1] - cy0, region_box[2] - cx0, region_box[3] - cx0
    crop = target[cy0:cy1, cx0:cx1]
    collage = crop.copy()
    collage[ry0:ry1, rx0:rx1] = cv2.resize(edges, (rx1 - rx0, ry1 - ry0))
    if shape_control:
        # run_gradio_demo.py with "Enable Shape Control": the channel is the painted region itself, so the subject
        # takes its outline and pose.
        shape = region
    else:
        # The default of both official scripts: the channel marks the box the collage fills (the region's box grown
        # 1.1x), and the model places the subject in it in its own pose and proportions.
        shape = box_mask(region_box, (width, height))
    mask_channel = shape[cy0:cy1, cx0:cx1].astype(np.float32)

    collage, _ = pad_to_square(collage, 0)
    mask_channel, _ = pad_to_square(mask_channel, -1.0)
    size = (crop_size, crop_size)
    collage = cv2.resize(collage, size).astype(np.float32) / 127.5 - 1.0
    mask_channel = cv2.resize(mask_channel, size, interpolation=cv2.INTER_NEAREST)
    hint = np.concatenate([collage, mask_channel[..., None]], axis=-1).astype(np.float32)
    return AnyDoorPair(
        hint=hint,
        reference=subject.astype(np.float32) / 255,
        reference_image=subject,
        sobel_map=edges,
        crop_box=crop_box,
        region_box=region_box,
        frame_size=(width, height),
    )


def paste_back(generated: np.ndarray, frame: Image.Image, pair: AnyDoorPair) -> Image.Image:
    """`frame` with the region's box replaced by the generated crop's pixels there (crop_back, box only)."""
    target = np.asarray(frame.convert("RGB")).copy()
    cy0, cy1, cx0, cx1 = pair.crop_box
    crop_h, crop_w = cy1 - cy0, cx1 - cx0
    side = max(crop_h, crop_w)
    shrinking = side < generated.shape[0]
    restored = cv2.resize(generated, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    top, left = (side - crop_h) // 2, (side - crop_w) // 2
    restored = restored[top : top + crop_h, left : left + crop_w]
    ry0, ry1, rx0, rx1 = pair.region_box
    target[ry0:ry1, rx0:rx1] = restored[ry0 - cy0 : ry1 - cy0, rx0 - cx0 : rx1 - cx0]
    return Image.fromarray(target)
