"""Device and dtype choice, and turning out-of-memory into an actionable message."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import ConfigError, OutOfMemoryError, quoted

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with float16 when present, else CPU with float32; either can be overridden.

    A device that is not a name, not supported, or not present raises ConfigError saying what is available.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {quoted(device)} is not a device name; use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device} was requested but no CUDA GPU is available to this torch build "
                f"({torch.__version__}); use --device cpu."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}."
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device mps was requested but Apple's MPS is not available here; use --device cpu.")
    elif dev.type != "cpu":
        raise ConfigError(f"device {quoted(device)} is not supported; use cpu, cuda or cuda:N.")
    if dtype is None:
        torch_dtype = torch.float16 if dev.type == "cuda" else torch.float32
    elif dtype in _DTYPES:
        torch_dtype = _DTYPES[dtype]
    else:
        raise ConfigError(f"dtype {quoted(dtype)} must be float16, bfloat16 or float32.")
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
