"""On-disk cache of DDIM inversions: safetensors files keyed by everything the inversion depends on.

Writes are atomic (temp file + rename), the total size is bounded with least-recently-used eviction, and a
lock file serialises writers and eviction across processes; readers never see a partial file. An entry holds
the latents at the timesteps the edits it serves read (see `pipeline.get_inversion`); on load its timesteps,
shapes and dtype are checked, and an entry that does not match is a miss (a corrupt or mis-shaped one is
deleted; the new inversion replaces it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import AnyV2VError
from .files import FILE_MODE, PART_SUFFIX, atomic_output

CACHE_FORMAT = 1
SPACE_MARGIN = 64 << 20  # bytes kept free beyond an entry, for the safetensors header and other writers


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MB" if nbytes < 10 * 2**20 else f"{nbytes / 2**20:.0f} MB"


@dataclass
class Inversion:
    """Inverted latents of one clip, one per inversion timestep (ascending)."""

    latents: dict[int, torch.Tensor]  # timestep -> [1, C, F, h, w]
    key: str

    def at(self, timestep: int) -> torch.Tensor:
        return self.latents[int(timestep)]

    @property
    def timesteps(self) -> list[int]:
        return sorted(self.latents)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.latents.values())


def inversion_key(frames: list[Image.Image], model_fingerprint: str, settings: dict) -> str:
    """Content hash of the prepared frames plus every setting the inversion depends on."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "model": model_fingerprint, **settings}, sort_keys=True).encode())
    for frame in frames:
        array = np.asarray(frame.convert("RGB"))
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:32]


def _touch(path: Path) -> None:
    """Mark as just used. An explicit nanosecond time: the kernel's own clock tick can be coarser than uses."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


class InversionCache:
    """Bounded LRU store of inversions in `directory`. `max_bytes` 0 disables the cache."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symlink planted at .lock is refused (ELOOP) instead of opening (and creating) its target.
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        with os.fdopen(fd, "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(
        self,
        key: str,
        timesteps: "set[int] | list[int] | None" = None,
        shape: "tuple[int, ...] | None" = None,
        dtype: torch.dtype | None = None,
    ) -> Inversion | None:
        """The stored inversion, or None (a miss) when absent, unreadable, or not what the caller needs: a
        timestep of `timesteps` missing, a latent not of `shape` / `dtype`. Unreadable or mis-shaped entries are
        deleted."""
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            tensors = load_file(str(path))
        except FileNotFoundError:
            return None  # absent or evicted meanwhile
        except (SafetensorError, OSError):
            self._discard(path)  # unreadable: invert again and store anew
            return None
        try:
            latents = {int(name.removeprefix("t")): tensor for name, tensor in tensors.items() if name.startswith("t")}
        except ValueError:
            latents = {}
        wrong = not latents or len(latents) != len(tensors) or any(
            (shape is not None and tuple(t.shape) != tuple(shape)) or (dtype is not None and t.dtype != dtype)
            for t in latents.values()
        )
        if wrong:
            self._discard(path)
            return None
        if timesteps is not None and not set(int(t) for t in timesteps) <= set(latents):
            return None  # serves other step counts; the new inversion's entry will hold both
        _touch(path)
        return Inversion(latents=dict(sorted(latents.items())), key=key)

    def stored_timesteps(self, key: str) -> set[int]:
        """Timesteps held by the entry `key` (empty when absent or unreadable), read from its header only."""
        if not self.enabled:
            return set()
        try:
            with safe_open(str(self._path(key)), framework="pt") as handle:
                return {int(name.removeprefix("t")) for name in handle.keys() if name.startswith("t")}
        except (FileNotFoundError, SafetensorError, OSError, ValueError):
            return set()

    def _discard(self, path: Path) -> None:
        with self._locked(), contextlib.suppress(FileNotFoundError):
            path.unlink()

    def check_space(self, nbytes: int) -> None:
        """Fail before a long inversion when its result could not be stored."""
        if not self.enabled:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.directory).free
        except OSError as exc:
            raise AnyV2VError(
                f"cannot use the inversion cache folder {self.directory}: {exc.strerror or exc}. Choose another "
                "--cache-dir, or pass --cache-max-gb 0 to run without the cache."
            ) from None
        margin = SPACE_MARGIN
        if free < nbytes + margin:
            raise AnyV2VError(
                f"not enough disk space for the inversion cache in {self.directory}: this inversion needs "
                f"{_mb(nbytes)} plus a {_mb(margin)} safety margin ({_mb(nbytes + margin)} in all) and "
                f"{_mb(free)} are free. Free some space, choose another --cache-dir, or pass --cache-max-gb 0 "
                "to run without the cache."
            )

    def put(self, inversion: Inversion, metadata: dict | None = None) -> bool:
        """Store an inversion; returns False when it is larger than the whole cache budget."""
        if not self.enabled or inversion.nbytes > self.max_bytes:
            return False
        tensors = {f"t{t}": latent.contiguous().cpu() for t, latent in inversion.latents.items()}
        meta = {"format": str(CACHE_FORMAT), "created": str(time.time()), "timesteps": json.dumps(inversion.timesteps)}
        meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
        with self._locked():
            with atomic_output(self._path(inversion.key)) as tmp:
                save_file(tensors, tmp, metadata=meta)
            _touch(self._path(inversion.key))
            self._evict(keep=inversion.key)
        return True

    def entries(self) -> list[tuple[Path, int, int]]:
        """(path, size, last use) of every stored inversion, oldest first."""
        if not self.directory.exists():
            return []
        found = []
        for path in self.directory.glob("*.safetensors"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                found.append((path, stat.st_size, stat.st_mtime_ns))
        return sorted(found, key=lambda entry: entry[2])

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def _evict(self, keep: str) -> None:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            if path.stem == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
        # Temp files of writers that died are garbage after a while.
        for stale in self.directory.glob(f".*{PART_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - stale.stat().st_mtime > 3600:  # seconds
                    stale.unlink()
