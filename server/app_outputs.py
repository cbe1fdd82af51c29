"""The web app's own output folder: what it writes there is published whole, and only that is ever pruned.

The CLI's default output folder (`outputs/`) is the app's default too, so the app keeps its files in a subfolder
of its own (`<ANYV2V_OUTPUT_DIR>/anyv2v-app/`) and, inside it, deletes only files whose names it gave: the
edited videos and their JSON (`<source>-edit-<8 hex>.mp4/.json`), previews and first frames (`clip-<10 hex>.mp4`,
`first-frame-<10 hex>.png`), candidates (`first-frame-<editor>-<10 hex>.png`) and the temp files of an
interrupted write (`.<name>-<random>.<ext>.part`). Links are never followed, nor deleted. Files are written under
a temp name and renamed into place (`anyv2v.files.atomic_output`), so a full disk never leaves a cut-off file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from anyv2v.files import PART_SUFFIX, atomic_output, unique_path

APP_SUBDIR = "anyv2v-app"
NOTE_NAME = "README.txt"
NOTE = (
    "This folder belongs to the AnyV2V web app (app.py). It deletes the videos, frames and previews it wrote here\n"
    "(names ending in -<hex digits>.mp4/.png/.json) after ANYV2V_KEEP_HOURS hours or beyond ANYV2V_OUTPUT_MAX_GB.\n"
    "Keep your own files elsewhere; files with other names, and links, are never touched.\n"
)
OWNED_NAME = re.compile(r"^[A-Za-z0-9_-]+-[0-9a-f]{8}(?:[0-9a-f]{2})?\.(?:mp4|png|json)$")
OWNED_PART = re.compile(r"^\.[A-Za-z0-9_-]+-[0-9a-f]{8}(?:[0-9a-f]{2})?-[A-Za-z0-9_]+\.(?:mp4|png|json)"
                        + re.escape(PART_SUFFIX) + "$")
OWNED_SUBDIRS = ("clips", "frames")  # the only folders below the app folder it looks into


def app_output_dir(output_dir: str | os.PathLike) -> Path:
    """The app's own folder inside the configured output folder (created, with a note saying whose it is)."""
    base = Path(output_dir).expanduser().resolve()
    folder = base / APP_SUBDIR
    if folder.is_symlink():
        raise SystemExit(f"error: {folder} is a link; the web app keeps its outputs in a real folder of its own.")
    folder.mkdir(parents=True, exist_ok=True)
    note = folder / NOTE_NAME
    if not note.exists():
        with contextlib.suppress(OSError, FileExistsError), atomic_output(note, overwrite=False) as tmp:
            Path(tmp).write_text(NOTE)
    return folder


def is_owned_name(name: str) -> bool:
    """Whether a file name is one the app gives (a finished output or the temp file of one)."""
    return bool(OWNED_NAME.match(name) or OWNED_PART.match(name))


def owned_files(directory: str | os.PathLike) -> list[tuple[Path, os.stat_result]]:
    """The app's files in `directory` and its `clips/` and `frames/` folders: regular files with app names only,
    read with lstat (a link is neither followed nor listed, not even a link named like an app file)."""
    directory = Path(directory)
    found: list[tuple[Path, os.stat_result]] = []
    folders = [directory]
    for sub in OWNED_SUBDIRS:
        path = directory / sub
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                folders.append(path)
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_symlink() or not entry.is_file(follow_symlinks=False) or not is_owned_name(entry.name):
                    continue
                found.append((Path(entry.path), entry.stat(follow_symlinks=False)))
            except OSError:
                continue
    return found


def publish_png(image: Image.Image, path: str | os.PathLike) -> str:
    """Write `image` as PNG under a temp name beside `path`, then rename it to `path` (never replacing a file)."""
    with atomic_output(path, overwrite=False) as tmp:
        image.save(tmp, format="PNG")
    return str(path)


def publish_pngs(images: Sequence[Image.Image], directory: str | os.PathLike, stem: str) -> list[str]:
    """Each image as a new `<stem>-<10 hex>.png` in `directory`, all or nothing: when one write fails (a full
    disk), the ones already published are removed too and the error is raised."""
    paths: list[str] = []
    try:
        for image in images:
            paths.append(publish_png(image, unique_path(directory, stem, ".png")))
    except BaseException:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return paths
