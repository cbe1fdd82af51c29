"""Atomic output files: written beside their final name and published in one step, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PART_SUFFIX = ".part"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[str]:
    """Yield a temp file name beside `path`; when the block succeeds, publish it as `path`.

    On any failure the temp file is removed and `path` is untouched. Without `overwrite` the publish is a hard
    link, which raises FileExistsError if the name was taken meanwhile, so an existing file is never replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix + PART_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file private; an output is an ordinary file. A fixed mode (not the umask, which
        # can only be read by changing it) keeps this safe in a threaded server.
        os.chmod(tmp, 0o644)
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
