"""Files on disk: results older than the retention time or beyond the size budget are deleted (oldest first),
and partial or empty files a failed write left behind are swept at start."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from anyv2v.files import PART_SUFFIX

from . import app_outputs


def _files(directory: Path) -> list[tuple[Path, os.stat_result]]:
    """Only the files the app wrote (its names, in its folders); links are never followed or listed."""
    return app_outputs.owned_files(directory)


def sweep_stale(directory: str | os.PathLike, min_age_s: float = 0.0, now: float | None = None) -> list[Path]:
    """Delete `.part` files and empty files that a failed or killed write left behind (older than `min_age_s`)."""
    now = time.time() if now is None else now
    removed = []
    for path, stat in _files(Path(directory)):
        if (path.name.endswith(PART_SUFFIX) or stat.st_size == 0) and now - stat.st_mtime >= min_age_s:
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def prune_outputs(
    directory: str | os.PathLike, max_age_s: float, max_bytes: int, keep: Sequence[str | os.PathLike] = (),
    now: float | None = None,
) -> list[Path]:
    """Delete files older than `max_age_s`, then the oldest until the folder holds at most `max_bytes`.

    `keep` (the result just made) is never deleted. Returns the deleted paths.
    """
    now = time.time() if now is None else now
    keep_set = {os.path.realpath(p) for p in keep}
    files = sorted(_files(Path(directory)), key=lambda item: item[1].st_mtime)
    removed: list[Path] = []
    total = sum(stat.st_size for _, stat in files)
    for path, stat in files:
        if os.path.realpath(path) in keep_set or path.name.endswith(PART_SUFFIX):
            continue
        if now - stat.st_mtime > max_age_s or total > max_bytes:
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
            total -= stat.st_size
    return removed
