"""Neural style transfer (Gatys, Ecker, Bethge 2015): repaint the frame in the style of another image.

The frame's pixels are optimised so that VGG-19's conv4_2 features stay close to the frame's own (content)
while the Gram matrices of conv1_1, conv2_1, conv3_1, conv4_1 and conv5_1 match the style image's (style).

VGG-19 is defined here in plain torch with torchvision's layer numbering (`features.{i}.weight/bias`), so the
ImageNet weights published by torchvision and timm load as they are. The default is the hub repo
`timm/vgg19.tv_in1k` (torchvision's weights converted by timm; file `model.safetensors`, keys
`features.*`, `pre_logits.*`, `head.*`); classifier keys are ignored and any module prefix before
`features.` is stripped. The channel widths are read from the weight shapes, so the same loader loads the
real network and the width-reduced tiny one the tests use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from anyv2v.backbone import looks_like_path
from anyv2v.errors import ModelLoadError

from .base import (
    Editor,
    EditorError,
    EditorInput,
    Progress,
    empty_target_dir,
    missing_model_message,
    resolve_torch_device,
    save_dir_atomically,
)

ORDER = 20
DEFAULT_MODEL = "timm/vgg19.tv_in1k"
MODEL_ENV = "ANYV2V_VGG19"
HUB_FILENAME = "model.safetensors"
LOCAL_FILENAMES = ("model.safetensors", "vgg19.safetensors")

# torchvision's VGG-19 "E" configuration: channel widths, "M" = 2x2 pooling.
VGG19_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
VGG19_WIDTHS: tuple[int, ...] = tuple(v for v in VGG19_CONFIG if v != "M")  # type: ignore[misc]


def _conv_indices() -> dict[str, int]:
    """'conv{block}_{n}' -> index in `features` (conv1_1 = 0, conv4_2 = 21, conv5_1 = 28, ...)."""
    names: dict[str, int] = {}
    index, block, n = 0, 1, 1
    for value in VGG19_CONFIG:
        if value == "M":
            index += 1
            block, n = block + 1, 1
        else:
            names[f"conv{block}_{n}"] = index
            index += 2  # conv, relu
            n += 1
    return names


CONV_INDEX = _conv_indices()
CONTENT_LAYER = "conv4_2"
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_RESOLUTION, MAX_RESOLUTION = 32, 2048


class VGG19(nn.Module):
    """VGG-19's convolutional part with torchvision's module indices; `widths` may be reduced (tiny models)."""

    def __init__(self, widths: Sequence[int] = VGG19_WIDTHS, pool: str = "max") -> None:
        super().__init__()
        if len(widths) != len(VGG19_WIDTHS):
            raise ValueError(f"VGG-19 has {len(VGG19_WIDTHS)} conv layers, got {len(widths)} widths")
        self.widths = tuple(int(w) for w in widths)
        layers: list[nn.Module] = []
        channels, conv = 3, 0
        for value in VGG19_CONFIG:
            if value == "M":
                # Gatys et al. found average pooling gives smoother results; it has no weights, so either loads.
                layers.append(nn.AvgPool2d(2, 2) if pool == "avg" else nn.MaxPool2d(2, 2))
            else:
                width = self.widths[conv]
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                channels, conv = width, conv + 1
        self.features = nn.Sequential(*layers)
        for module in self.features:
            if isinstance(module, nn.Conv2d):  # torchvision's init, so random (tiny) models behave like VGGs
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def extract(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Rectified responses of the named conv layers (running only as deep as the deepest one)."""
        wanted = {CONV_INDEX[name] + 1: name for name in layers}  # +1: after the ReLU
        out: dict[str, torch.Tensor] = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                out[wanted[index]] = x
                if len(out) == len(wanted):
                    break
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], pool: str = "max") -> VGG19:
        """Build the network with the widths the weights have and load them (strict)."""
        features = vgg_feature_weights(state)
        widths = [features[f"features.{CONV_INDEX[name]}.weight"].shape[0] for name in _conv_names()]
        model = cls(widths, pool=pool)
        expected = model.state_dict()
        for key, tensor in features.items():
            if tensor.shape != expected[key].shape:
                raise ModelLoadError(
                    f"VGG-19 weight {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}; "
                    "the file is not a VGG-19 (without batch norm)."
                )
        model.load_state_dict({k: v.float() for k, v in features.items()}, strict=True)
        return model


def _conv_names() -> list[str]:
    return sorted(CONV_INDEX, key=CONV_INDEX.get)


_FEATURE_KEY = re.compile(r"(?:^|\.)(features\.(\d+)\.(\w+))$")


def vgg_feature_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `features.{i}.weight/bias` tensors of a VGG-19 state dict from torchvision, timm or a wrapper.

    Any prefix before `features.` ('module.', 'model.', 'vgg.') is stripped; classifier / pre_logits / head
    keys are ignored. Raises ModelLoadError when the 16 conv layers are not all there (e.g. VGG-19-BN, VGG-16).
    """
    found: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _FEATURE_KEY.search(key)
        if match:
            if match.group(1) in found:
                raise ModelLoadError(f"VGG-19 weights hold {match.group(1)} twice (under different prefixes).")
            found[match.group(1)] = tensor
    expected = {f"features.{CONV_INDEX[name]}.{part}" for name in CONV_INDEX for part in ("weight", "bias")}
    missing = sorted(expected - set(found), key=_key_order)
    extra = sorted(set(found) - expected, key=_key_order)
    if not found:
        raise ModelLoadError("the weights file has no 'features.*' tensors; it is not a torchvision/timm VGG-19.")
    if missing or extra:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
        raise ModelLoadError(
            f"the weights are not a plain VGG-19 ({detail}); use VGG-19 ImageNet weights without batch norm."
        )
    for name in CONV_INDEX:
        weight = found[f"features.{CONV_INDEX[name]}.weight"]
        if weight.ndim != 4 or weight.shape[2:] != (3, 3):
            raise ModelLoadError(f"VGG-19 {name} weight has shape {tuple(weight.shape)}; expected [out, in, 3, 3].")
    return found


def _key_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return int(parts[1]), parts[2]


def resolve_weights_file(model: str) -> Path:
    """A local .safetensors file for `model`: the file itself, one in a folder, or downloaded from the hub."""
    if os.path.isfile(model):
        return Path(model)
    if os.path.isdir(model):
        for name in LOCAL_FILENAMES:
            if os.path.isfile(os.path.join(model, name)):
                return Path(model, name)
        files = sorted(Path(model).glob("*.safetensors"))
        if len(files) == 1:
            return files[0]
        raise ModelLoadError(
            f"folder {model} has {'no' if not files else 'several'} .safetensors files; "
            f"put the VGG-19 weights there as {LOCAL_FILENAMES[0]}."
        )
    if looks_like_path(model):
        raise ModelLoadError(f"VGG-19 weights {model} do not exist (give a .safetensors file, a folder or a hub id).")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=model, filename=HUB_FILENAME))
    except Exception as exc:  # offline, missing repo/file, bad id, network: all mean "cannot get the weights"
        raise ModelLoadError(
            missing_model_message(model, f"VGG-19 weights ({HUB_FILENAME})", exc)
            + f". Download them once or point --model / {MODEL_ENV} at a local .safetensors file."
        ) from None


def load_vgg19(model: str, device: str | None = None, pool: str = "avg") -> VGG19:
    """VGG-19 features from a .safetensors file, a folder holding one, or a hub id; float32, eval, frozen."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = resolve_weights_file(model)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            missing_model_message(str(path), "VGG-19 weights", exc) + "; use a .safetensors file."
        ) from None
    torch_device, _ = resolve_torch_device(device, "float32")
    vgg = VGG19.from_state_dict(state, pool=pool)
    vgg.requires_grad_(False)
    return vgg.eval().to(torch_device)


def working_resolution(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """`size` scaled so its longer side is `resolution` (aspect kept, at least 16 pixels a side)."""
    width, height = size
    scale = resolution / max(width, height)
    return max(16, round(width * scale)), max(16, round(height * scale))


def _to_tensor(image: Image.Image, device: torch.device) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device)


def _to_image(tensor: torch.Tensor) -> Image.Image:
    array = (tensor.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def gram(features: torch.Tensor) -> torch.Tensor:
    """Per-sample Gram matrices normalised by C*H*W (so their scale does not depend on the image size)."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def stylize(
    content: Image.Image,
    style: Image.Image,
    vgg: VGG19,
    seeds: Sequence[int] = (8888,),
    steps: int = 300,
    content_weight: float = 1.0,
    style_weight: float = 1e6,
    resolution: int = 512,
    learning_rate: float = 0.02,
    noise: float = 0.05,
    progress: Progress | None = None,
) -> tuple[list[Image.Image], list[float]]:
    """Gatys style transfer of `content`, one result per seed; returns (images at `content.size`, losses).

    `losses[k]` is the mean total loss over the candidates at step k (before that step's update). Candidates
    are optimised together in one batch; the loss is a sum of per-candidate losses, so each candidate's
    gradient (and Adam's per-pixel update) is its own.
    """
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise EditorError(f"resolution {resolution} is outside {MIN_RESOLUTION}..{MAX_RESOLUTION}.")
    if steps < 1 or not seeds:
        raise EditorError("style transfer needs at least one step and one seed.")
    device = next(vgg.parameters()).device
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    size = working_resolution(content.size, resolution)
    content_t = _to_tensor(content.resize(size, Image.Resampling.LANCZOS), device)
    # The style keeps its own aspect (Gram matrices are spatial averages); only its scale is matched.
    style_t = _to_tensor(
        style.convert("RGB").resize(working_resolution(style.size, resolution), Image.Resampling.LANCZOS), device
    )

    with torch.no_grad():
        content_target = vgg.extract((content_t - mean) / std, [CONTENT_LAYER])[CONTENT_LAYER]
        style_features = vgg.extract((style_t - mean) / std, STYLE_LAYERS)
        style_targets = {name: gram(style_features[name]) for name in STYLE_LAYERS}

    # Start from the frame plus a little seeded noise: each seed gives its own candidate.
    starts = []
    for seed in seeds:
        generator = torch.Generator("cpu").manual_seed(int(seed))
        starts.append(torch.randn(content_t.shape[1:], generator=generator) * noise)
    pixels = (content_t + torch.stack(starts).to(device)).clamp(0, 1).requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=learning_rate)
    losses: list[float] = []
    layer_weight = 1.0 / len(STYLE_LAYERS)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        features = vgg.extract((pixels - mean) / std, (CONTENT_LAYER, *STYLE_LAYERS))
        content_loss = (features[CONTENT_LAYER] - content_target).pow(2).mean(dim=(1, 2, 3))
        style_loss = sum(
            layer_weight * (gram(features[name]) - style_targets[name]).pow(2).mean(dim=(1, 2)) for name in STYLE_LAYERS
        )
        total = content_weight * content_loss + style_weight * style_loss
        total.sum().backward()
        optimizer.step()
        with torch.no_grad():
            pixels.clamp_(0, 1)
        losses.append(float(total.detach().mean()))
        if progress is not None:
            progress((step + 1) / steps, f"style transfer step {step + 1}/{steps}, loss {losses[-1]:.4g}")
    images = [_to_image(pixels[i]) for i in range(len(seeds))]
    if size != content.size:
        images = [image.resize(content.size, Image.Resampling.LANCZOS) for image in images]
    return images, losses


class StyleTransferEditor(Editor):
    name = "nst"
    title = "Style transfer"
    description = "Repaint the frame in the style of a reference image (neural style transfer, Gatys et al. 2015)."
    inputs = (
        EditorInput(
            "style_image",
            "image",
            "Style image",
            required=True,
            help="A painting or picture whose style to copy; any size.",
        ),
        EditorInput(
            "steps", "int", "Steps", default=300, minimum=1, maximum=5000, step=1, help="Optimisation steps (Adam)."
        ),
        EditorInput(
            "content_weight",
            "float",
            "Content weight",
            default=1.0,
            minimum=0.0,
            maximum=1e6,
            help="How much of the frame's structure to keep.",
        ),
        EditorInput(
            "style_weight",
            "float",
            "Style weight",
            default=1e6,
            minimum=0.0,
            maximum=1e12,
            help="How strongly to impose the style.",
        ),
        EditorInput(
            "resolution",
            "int",
            "Working resolution",
            default=512,
            minimum=MIN_RESOLUTION,
            maximum=MAX_RESOLUTION,
            step=32,
            help="Longer side while optimising; the result is resized back.",
        ),
        EditorInput("seed", "seed", "Seed", default=8888, help="Candidate i uses seed + i (noise added to the start)."),
    )
    model_ids = {"vgg19": DEFAULT_MODEL}
    model_env = MODEL_ENV
    supports_candidates = True
    oom_advice = "lower the working resolution or the number of candidates."

    def __init__(self) -> None:
        super().__init__()
        self.last_losses: list[float] = []  # loss per step of the latest edit (for plots and tests)

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
        progress(0.0, f"loading VGG-19 from {model_id}")
        # Always float32: Gram matrices of deep features overflow float16, and VGG-19 is small.
        vgg = self.load_model(model_id, device, "float32", lambda: load_vgg19(model_id, device))
        images, losses = stylize(
            frame,
            values["style_image"],
            vgg,
            seeds=[values["seed"] + i for i in range(candidates)],
            steps=values["steps"],
            content_weight=values["content_weight"],
            style_weight=values["style_weight"],
            resolution=values["resolution"],
            progress=progress,
        )
        self.last_losses = losses
        return images

    @classmethod
    def make_tiny_model(cls, directory: str | os.PathLike, divisor: int = 16) -> Path:
        """A width-reduced random VGG-19 (same 16 conv layers, channels / `divisor`) as `vgg19.safetensors`."""
        return make_tiny_vgg(directory, divisor)


def make_tiny_vgg(directory: str | os.PathLike, divisor: int = 16, seed: int = 0) -> Path:
    """Save a random VGG-19 with channel widths divided by `divisor` to `directory/vgg19.safetensors`."""
    from safetensors.torch import save_file

    out = empty_target_dir(directory)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        vgg = VGG19([max(1, w // divisor) for w in VGG19_WIDTHS])
    finally:
        torch.random.set_rng_state(generator_state)
    state = {key: tensor.contiguous() for key, tensor in vgg.state_dict().items()}
    return save_dir_atomically(
        out,
        lambda tmp: save_file(
            state, str(tmp / LOCAL_FILENAMES[1]), metadata={"format": "pt", "model": "vgg19-features"}
        ),
    )


EDITOR = StyleTransferEditor()
