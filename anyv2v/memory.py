"""Bounded memory for long clips: what to turn on, why, and the plug-ins that do it (same output, less memory).

Options (each gives the plain path's output; tested in fp32 to 1e-5):
- sequential branches: the sampler runs the source branch alone, keeps its injected features for that step
  only, then each edit branch alone, so the largest UNet batch in memory is 1 instead of 3;
- chunked feed-forward: diffusers' per-block `set_chunk_feed_forward`, with a chunk size picked per call so
  each chunk holds at most `FF_CHUNK_TOKENS` tokens (the GEGLU intermediate is the UNet's largest tensor);
- sliced attention: every attention computes at most `ATTENTION_CHUNK_TOKENS` tokens' rows at a time (one
  row when a row is longer; `anyv2v.attention`; the injection processors slice the same way), so Q, K, V and
  the attention output exist for one slice only;
- VAE frame chunks: encode and decode `VAE_FRAMES` frame(s) at a time.
Attention always goes through PyTorch's `scaled_dot_product_attention` (diffusers' AttnProcessor2_0 and our
injection processors), which picks the flash / memory-efficient kernels when they apply.

`plan_memory` estimates an edit's peak from the frame count, size and dtype (`estimate_peak_bytes`, the
formula and its constants below) and turns the options on only when the plain path would not fit in the free
device memory (CUDA: `torch.cuda.mem_get_info`; CPU: MemAvailable of /proc/meminfo).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .attention import SlicedAttnProcessor, slice_rows
from .config import MEMORY_MODES

# Tokens per feed-forward chunk: large enough to keep the matmuls efficient, small enough that the GEGLU
# intermediate (tokens x 8 x width) stays far below the rest of the activations.
FF_CHUNK_TOKENS = 1024
# Tokens per attention slice (rows of dim 0 x sequence length), as for the feed-forward.
ATTENTION_CHUNK_TOKENS = 4096
# Frames per VAE call with the memory options on (the plain path encodes 8 and decodes decode_chunk_size).
VAE_FRAMES = 1

# Peak-activation constants of the formula in `estimate_peak_bytes`, in units of one full-resolution UNet
# feature map (frames x h x w x block_out_channels[0] values) per batch item. Fitted to the CPU peak RSS of the
# mid-size random I2VGen-XL at 64 frames (README "Bounded memory"), minus the RSS of the same run at 2 frames
# (the process, its libraries and the weights): plain 0.84 GB at 128x128 and 2.84 GB at 256x256 at batch 3
# (33 and 28 units per item), options on 0.32 GB and 0.86 GB at batch 1 (38 and 26 units: the source
# features kept for the step are about 8 of them), rounded up.
UNET_PEAK_PLAIN = 35.0
UNET_PEAK_CHUNKED = 40.0
# The VAE decoder's peak per decoded frame, in units of H x W x vae block_out_channels[0] values.
VAE_PEAK_PER_FRAME = 12.0
# Share of the free memory an estimate may use before the options are turned on.
HEADROOM = 0.8


@dataclass(frozen=True)
class MemoryPlan:
    """Which memory options an edit uses, and why."""

    mode: str = "off"  # what was asked: auto, on, off
    sequential_branches: bool = False
    chunk_feed_forward: bool = False
    attention_tokens: int | None = None  # tokens per attention slice; None computes each attention whole
    vae_frames: int | None = None  # frames per VAE call; None keeps the defaults
    reason: str = ""
    estimate: dict[str, Any] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return (
            self.sequential_branches or self.chunk_feed_forward or self.attention_tokens is not None
            or self.vae_frames is not None
        )

    @classmethod
    def on(cls, mode: str = "on", reason: str = "forced on (--memory on)", estimate: dict | None = None) -> "MemoryPlan":
        return cls(mode, True, True, ATTENTION_CHUNK_TOKENS, VAE_FRAMES, reason, estimate or {})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- the feed-forward chunking plug-in ---------------------------------------------------------------------


def feed_forward_chunk(shape: torch.Size, max_tokens: int) -> int | None:
    """Rows of dim 0 per feed-forward chunk for an input of `shape` (N, L, C); None when it fits unchunked."""
    return slice_rows(int(shape[0]), int(shape[1]), max_tokens)


@contextlib.contextmanager
def chunked_feed_forward(unet: torch.nn.Module, max_tokens: int = FF_CHUNK_TOKENS) -> Iterator[None]:
    """Chunk every transformer block's feed-forward (spatial, temporal and `transformer_in`) for the block.

    diffusers' `enable_forward_chunking` needs one chunk size that divides dim 0 of every block; spatial
    blocks see (frames, h*w) and temporal ones (h*w, frames), so a forward pre-hook picks a divisor per call.
    On exit the hooks are removed and chunking is off again (`disable_forward_chunking`).
    """
    handles = []

    def pick_chunk(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        module.set_chunk_feed_forward(feed_forward_chunk(hidden.shape, max_tokens), 0)

    try:
        for module in unet.modules():
            if hasattr(module, "set_chunk_feed_forward") and hasattr(module, "ff"):
                handles.append(module.register_forward_pre_hook(pick_chunk, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        unet.disable_forward_chunking()


@contextlib.contextmanager
def sliced_attention(unet: torch.nn.Module, max_tokens: int = ATTENTION_CHUNK_TOKENS) -> Iterator[None]:
    """Every attention of `unet` that runs diffusers' AttnProcessor2_0 (or a backbone's own processor marked
    `sliceable`, whose module computes `anyv2v.attention.attention` through its `attend_with`) computes at most
    `max_tokens` tokens' rows at a time (one row when a row is longer), for the block; other processors are left
    alone, and the processors in place before are restored on exit (diffusers' `attn_processors` /
    `set_attn_processor`)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    saved = unet.attn_processors
    sliced = SlicedAttnProcessor(max_tokens)
    unet.set_attn_processor(
        {name: sliced if type(p) is AttnProcessor2_0 or getattr(p, "sliceable", False) else p for name, p in saved.items()}
    )
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


@contextlib.contextmanager
def memory_plugins(unet: torch.nn.Module, plan: MemoryPlan | None) -> Iterator[None]:
    """Install the UNet-side options of `plan` (feed-forward chunking, sliced attention) for the block."""
    with contextlib.ExitStack() as stack:
        if plan is not None and plan.chunk_feed_forward:
            stack.enter_context(chunked_feed_forward(unet))
        if plan is not None and plan.attention_tokens is not None:
            stack.enter_context(sliced_attention(unet, plan.attention_tokens))
        yield


# ---- estimate and choice ---------------------------------------------------------------------------------


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory where the edit runs: CUDA free bytes, or the CPU's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_peak_bytes(
    unet_config: dict,
    vae_config: dict,
    frames: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    batch: int,
    chunked: bool,
    vae_frames: int,
    vae_scale: int = 8,
) -> int:
    """Peak memory of the activations of an edit beyond the loaded weights (bytes).

    peak = max(UNet, VAE decode), with
      UNet = K x batch x frames x (H/8) x (W/8) x C0 x itemsize   (K = UNET_PEAK_PLAIN or UNET_PEAK_CHUNKED;
             C0 = the UNet's first block width, 320 for I2VGen-XL)
      VAE  = VAE_PEAK_PER_FRAME x vae_frames x H x W x c0 x itemsize   (c0 = the VAE's first width, 128)
    plus the latents kept for the edit (inversion and conditioning, a few latent-sized tensors).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    h, w = height // vae_scale, width // vae_scale
    c0 = int(unet_config["block_out_channels"][0])
    k = UNET_PEAK_CHUNKED if chunked else UNET_PEAK_PLAIN
    unet = k * batch * frames * h * w * c0 * itemsize
    vae = VAE_PEAK_PER_FRAME * vae_frames * height * width * int(vae_config["block_out_channels"][0]) * itemsize
    latents = 16 * frames * h * w * int(unet_config.get("in_channels", 4)) * itemsize
    return int(max(unet, vae) + latents)


def plan_memory(
    mode: str,
    unet_config: dict,
    vae_config: dict,
    frames: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    device: torch.device,
    decode_frames: int = 4,
    plain_batch: int = 3,
    free_bytes: int | None = None,
) -> MemoryPlan:
    """Choose the memory options: `off` and `on` as asked; `auto` turns them on only when the plain path's
    estimated peak exceeds HEADROOM of the free memory (`free_bytes`, measured when not given)."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory mode {mode!r} is not one of {MEMORY_MODES}")
    common = dict(unet_config=unet_config, vae_config=vae_config, frames=frames, height=height, width=width, dtype=dtype)
    plain = estimate_peak_bytes(**common, batch=plain_batch, chunked=False, vae_frames=decode_frames)
    bounded = estimate_peak_bytes(**common, batch=1, chunked=True, vae_frames=VAE_FRAMES)
    if free_bytes is None:
        free_bytes = free_memory_bytes(device)
    estimate = {"plain_bytes": plain, "bounded_bytes": bounded, "free_bytes": free_bytes, "device": str(device)}
    if mode == "off":
        return MemoryPlan("off", reason="turned off (--memory off)", estimate=estimate)
    if mode == "on":
        return MemoryPlan.on(estimate=estimate)
    gib = 2**30
    if free_bytes is None:
        return MemoryPlan("auto", reason="free memory unknown: plain path", estimate=estimate)
    if plain <= HEADROOM * free_bytes:
        return MemoryPlan(
            "auto",
            reason=f"estimated peak {plain / gib:.2f} GiB fits in {free_bytes / gib:.2f} GiB free: plain path",
            estimate=estimate,
        )
    return MemoryPlan.on(
        "auto",
        f"estimated peak {plain / gib:.2f} GiB exceeds {HEADROOM:.0%} of {free_bytes / gib:.2f} GiB free: "
        f"memory options on (estimated {bounded / gib:.2f} GiB)",
        estimate,
    )

