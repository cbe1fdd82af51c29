"""Images uploaded to the app, normalised at our boundary before anything else sees them.

Gradio 6.31's `gr.Image` preprocessing ignores the component's `format` for uploaded files: it converts the
image to `image_mode` and saves it again in the *upload's* format, so an RGB JPEG in an `image_mode="RGBA"`
input fails with "cannot write mode RGBA as JPEG" (and a file already in `image_mode` is passed on untouched,
EXIF orientation unapplied). The app decodes uploads itself instead: EXIF orientation applied, CMYK, grey,
palette and 16-bit images turned into 8-bit RGB (RGBA where the file has transparency, or where the input asks
for RGBA), written as a PNG that every later step reads the same way.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from anyv2v.files import atomic_output, safe_stem, unique_path

TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def has_transparency(image: Image.Image) -> bool:
    return image.mode in TRANSPARENT_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info)


def normalized_image(image: Image.Image, mode: str | None = None) -> Image.Image:
    """`image` upright (EXIF orientation applied) as 8-bit RGB, or RGBA when it has transparency or `mode` is
    "RGBA". CMYK (Adobe-inverted ones too: Pillow undoes that while decoding), grey, palette and 16-bit or
    float images are converted; the result is a new, loaded image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
            upright = image
        upright = upright if upright is not None else image
        if upright.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float grey: scale to 8 bits
            values = np.asarray(upright, dtype=np.float64)
            top = 65535.0 if upright.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
            upright = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
        alpha = mode == "RGBA" or has_transparency(upright)
        target = "RGBA" if alpha else "RGB"
        if upright.mode == "CMYK" and alpha:
            upright = upright.convert("RGB")  # CMYK has no direct route to RGBA in every Pillow version
        converted = upright.convert(target)
    if converted is image:
        converted = converted.copy()
    return converted


def normalize_upload(path: str | os.PathLike, directory: str | os.PathLike, name: str | None = None,
                     mode: str | None = None) -> str:
    """Decode the image file at `path` (checked beforehand), normalise it (see `normalized_image`) and write it
    as a new PNG named after `name` in `directory`; that PNG's path."""
    with Image.open(path) as image:
        image.load()
        upright = normalized_image(image, mode)
    target = unique_path(directory, safe_stem(name or os.path.basename(str(path)), 60), ".png", digits=8)
    with atomic_output(target, overwrite=False) as tmp:
        upright.save(tmp, format="PNG")
    return str(target)
