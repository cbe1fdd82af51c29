"""What the user reads: one actionable line per error (the traceback only in the server log), durations,
and the summaries of a prepared clip and of a finished edit."""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from anyv2v.config import EditConfig
from anyv2v.errors import AnyV2VError, CancelledError, OutOfMemoryError
from anyv2v.pipeline import EditResult, PreparedClip

logger = logging.getLogger("anyv2v.app")


def format_duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{max(round(seconds), 1):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds / 3600:.1f} h"


def edit_status(result: EditResult) -> str:
    """Markdown summary of a finished edit: what was made, how long it took, whether the inversion was reused."""
    seconds = result.seconds or {}
    total = sum(seconds.values())
    width, height = result.size
    lines = [f"**Done in {format_duration(total)}**: {result.frames} frames, {width}×{height}, {result.fps} fps."]
    if result.inversion_from_cache:
        lines.append(
            "Reused the cached inversion of this clip (same video, clip settings, seed and inversion steps), "
            "so only sampling ran."
        )
    else:
        lines.append(
            f"Inverted the source video in {seconds.get('inversion', 0.0):.1f} s; the next edit of this clip with "
            "the same clip settings, seed and inversion steps will reuse it."
        )
    if seconds.get("load", 0.0) >= 1.0:
        lines.append(f"Loaded the model in {seconds['load']:.1f} s; it stays loaded for the next edit.")
    for note in result.notes:
        lines.append(f"Note: {note}.")
    return "\n\n".join(lines)


def candidate_captions(count: int, seed: Any = None) -> list[str]:
    """The candidates' captions: "Candidate 2 (seed 43)" (each candidate uses the next seed)."""
    return [f"Candidate {i + 1}" + (f" (seed {int(seed) + i})" if seed is not None else "") for i in range(count)]


def clip_summary(prepared: PreparedClip, config: EditConfig) -> str:
    clip = prepared.clip
    width, height = prepared.size
    src_w, src_h = clip.source_size
    how = "center-cropped" if config.resize_mode == "crop" else "resized keeping the aspect ratio"
    audio = "has audio (tick 'Keep the source audio' to keep it)" if clip.has_audio else "has no audio"
    text = (
        f"**Prepared clip:** {len(prepared.frames)} frames at {config.fps} fps "
        f"({len(prepared.frames) / config.fps:.1f} s from {clip.start_time:g} s), {width}×{height} "
        f"({how} from {src_w}×{src_h}). The source {audio}."
    )
    for note in clip.notes:
        text += f"\n\nNote: {note}."
    return text


def strip_paths(message: str, paths: Sequence[str | None]) -> str:
    """Replace server paths (upload folders) with file names: users know their file by its name."""
    for path in sorted((str(p) for p in paths if p), key=len, reverse=True):
        message = message.replace(path, os.path.basename(path))
    return message


# An absolute or home-relative path of two or more parts, as a word of its own (not the "//" of a URL).
_SERVER_PATH = re.compile(r"(?<![\w:/.~-])~?/(?:[\w.@+-]+/)+[\w.@+-]*")


def hide_server_paths(message: str) -> str:
    """Server paths (model folders, caches) in a message for a web user become their last part: a visitor cannot
    use them, and they tell strangers about the server."""
    return _SERVER_PATH.sub(lambda m: os.path.basename(m.group(0).rstrip("/")) or "a server folder", message)


def user_message(exc: BaseException, action: str, paths: Sequence[str | None] = ()) -> tuple[str, bool]:
    """(one-line message, expected) for `exc` raised while doing `action` (e.g. 'editing the video').

    Unexpected errors are logged with their traceback and get a generic message (expected=False).
    """
    if isinstance(exc, (OutOfMemoryError, MemoryError)):
        return (
            "Out of memory. Lower the number of frames or the size in step 1 (for example 16 frames at 512×512), "
            "or make fewer candidates, then try again.", True,
        )
    if isinstance(exc, CancelledError):
        return "Cancelled. Nothing was written.", True
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        logger.error("out of disk space while %s: %s", action, exc)
        return "The server is out of disk space, so nothing could be written. Try again later.", True
    if isinstance(exc, AnyV2VError):
        if getattr(exc, "operator", ""):  # an editor's details for the operator (paths, installs): the log only
            logger.warning("while %s: %s", action, exc.operator)
        text = " ".join(str(exc).split())
        first_word = text.split(" ", 1)[0]
        if "." not in first_word and "/" not in first_word:  # a sentence; a file name keeps its case
            text = text[:1].upper() + text[1:] if text else type(exc).__name__
        shown = hide_server_paths(strip_paths(text, paths))
        if shown != strip_paths(text, paths):  # the operator still gets the whole message
            logger.warning("while %s: %s", action, text)
        return shown, True
    logger.error("unexpected error while %s", action, exc_info=(type(exc), exc, exc.__traceback__))
    return (
        f"Something went wrong while {action} ({type(exc).__name__}). The details are in the server log. "
        "Try again; if it keeps failing, lower the frames or the size, or use another video.", False,
    )
