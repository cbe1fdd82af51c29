"""Device and dtype choice, and turning out-of-memory into an actionable message."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import OutOfMemoryError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with float16 when present, else CPU with float32; either can be overridden."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype is None:
        torch_dtype = torch.float16 if dev.type == "cuda" else torch.float32
    else:
        torch_dtype = _DTYPES[dtype]
    return dev, torch_dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def oom_guard(advice: str) -> Iterator[None]:
    """Re-raise a device out-of-memory error as OutOfMemoryError carrying `advice` (what to lower)."""
    try:
        yield
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemoryError(f"out of GPU memory; {advice}") from None
    except RuntimeError as exc:  # CPU allocators and older CUDA paths raise plain RuntimeError
        text = str(exc).lower()
        if "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text:
            raise OutOfMemoryError(f"out of memory; {advice}") from None
        raise
