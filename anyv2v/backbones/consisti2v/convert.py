"""`python -m anyv2v convert-consisti2v SRC OUT_DIR`: a ConsistI2V folder in the hub's layout whose weights are
.bin pickles into the same layout with safetensors, which `anyv2v.backbones.consisti2v` loads.

Each `*.bin` of unet/, vae/, text_encoder/ is read with `torch.load(weights_only=True)` (a pickle holding anything
but tensors and plain containers is refused and nothing in it runs) and written as the safetensors file diffusers /
transformers look for; the UNet's state dict must load into our `ConsistI2VUNet` strictly. Configs, tokenizer and
scheduler files are copied. The folder is written beside OUT_DIR under a temporary name and renamed into place:
complete or not at all.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import torch

from ...errors import ModelLoadError, OutputError, first_line
from ...files import atomic_folder
from . import COMPONENTS, LAYOUT

WEIGHTS = {  # component -> (pickle name, safetensors name)
    "unet": ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"),
    "vae": ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"),
    "text_encoder": ("pytorch_model.bin", "model.safetensors"),
}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .bin pickle, read without running any code from it."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = (str(exc).strip().splitlines() or ["not a plain tensor pickle"])[0][:160]
        raise ModelLoadError(
            f"refused {path}: it holds objects other than tensors (weights_only load: {reason}); nothing from it was run."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = first_line(exc, 160)
        raise ModelLoadError(f"cannot read {path} ({first}).") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in data.items()):
        raise ModelLoadError(f"{path} is not a state dict of tensors; is it a ConsistI2V weight file?")
    return data


def convert_consisti2v(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    from .unet import ConsistI2VUNet

    src, out = Path(source), Path(out_dir)
    if not (src / "model_index.json").is_file() or any(not (src / part).is_dir() for part in COMPONENTS):
        raise ModelLoadError(f"{src} is not a ConsistI2V folder; give {LAYOUT}.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out} exists and is not an empty folder; choose a new OUT_DIR.")
    with atomic_folder(out) as tmp:  # empty or absent (checked above)
        shutil.copy2(src / "model_index.json", tmp / "model_index.json")
        for part in COMPONENTS:
            (tmp / part).mkdir()
            pickled, safe = WEIGHTS.get(part, (None, None))
            for item in (src / part).iterdir():
                if item.is_file() and not item.name.endswith((".bin", ".safetensors", ".ckpt", ".pt")):
                    shutil.copy2(item, tmp / part / item.name)
            if pickled is None:
                continue
            if (src / part / safe).is_file():
                shutil.copy2(src / part / safe, tmp / part / safe)
                continue
            if not (src / part / pickled).is_file():
                raise ModelLoadError(f"{src / part} has neither {safe} nor {pickled}.")
            state = read_state_dict(src / part / pickled)
            if part == "unet":
                try:
                    config = ConsistI2VUNet.load_config(str(src / "unet"))
                    ConsistI2VUNet.from_config(config).load_state_dict(state, strict=True)
                except (ValueError, RuntimeError) as exc:
                    first = first_line(exc)
                    raise ModelLoadError(f"{src / 'unet' / pickled} does not fit the ConsistI2V UNet: {first}") from None
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / part / safe), metadata={"format": "pt"})
    return out
