"""Output files: written beside their final name and published in one step, never half-written, never replacing
a file by accident; modes follow the process umask; names derived from the source, sanitised and unique."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

PART_SUFFIX = ".part"


def _read_umask() -> int:
    """The process umask. Linux reports it in /proc without changing it, which is safe with threads running;
    elsewhere it is read by setting and restoring it, once, at import (before a server starts its threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()
# Mode of every published output and cache file: what open() would give, so a private folder stays private.
FILE_MODE = 0o666 & ~UMASK


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[str]:
    """Yield a temp file name beside `path`; when the block succeeds, publish it as `path`.

    On any failure the temp file is removed and `path` is untouched. Without `overwrite` the publish is a hard
    link (then the temp name is removed), which raises FileExistsError if the name was taken meanwhile, even
    by another process, so an existing file is never replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix + PART_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file private (0600); an output gets the mode the umask gives new files.
        os.chmod(tmp, FILE_MODE)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: check, then rename
                if path.exists():
                    raise FileExistsError(path) from None
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp folder beside `path`; when the block succeeds, rename it into place as `path`: a model folder
    complete or not at all. An existing `path` is removed first when `replace`, else it must be empty (the
    caller checked; a folder filled meanwhile makes the rename fail). `mode`: the folder's mode (mkdtemp's 0700
    otherwise). On any failure the temp folder is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.part-", dir=path.parent))
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        if path.exists():
            if replace:
                shutil.rmtree(path)
            else:
                path.rmdir()  # empty: the rename needs the name free
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_dir(directory: str | os.PathLike) -> Path:
    """Create `directory` if needed and prove a file can be written there, before any long work starts."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"cannot write outputs to {directory}: it is a file, not a folder.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", suffix=PART_SUFFIX, dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"cannot write outputs to {directory}: {exc.strerror or exc}; choose a folder you can write to."
        ) from None
    return directory


def safe_stem(name: str | os.PathLike, max_length: int = 40) -> str:
    """A file name's stem reduced to ASCII letters, digits, '-' and '_' (runs of anything else become '-')."""
    stem = Path(str(name)).stem
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:max_length].strip("-_")
    return cleaned or "video"


def unique_path(directory: str | os.PathLike, stem: str, suffix: str, digits: int = 10) -> Path:
    """A new file name in `directory` (created if needed) that no existing file has: `<stem>-<hex><suffix>`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{stem}-{uuid.uuid4().hex[:digits]}{suffix}"


def derived_output_path(directory: str | os.PathLike, source: str | os.PathLike, tag: str = "edit", suffix: str = ".mp4") -> Path:
    """`<directory>/<sanitised source stem>-<tag>-<8 hex>.<suffix>`, e.g. outputs/kitten-edit-1a2b3c4d.mp4."""
    return unique_path(directory, f"{safe_stem(source)}-{tag}", suffix, digits=8)
