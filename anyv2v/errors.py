"""User-facing errors: one clear line that says what went wrong and what to do."""

from typing import Any

MAX_ECHO = 80  # characters of a user's own text quoted back in a message


def quoted(value: Any, limit: int = MAX_ECHO) -> str:
    """`value` quoted for a message (repr style) in at most about `limit` characters: longer text is cut with an
    ellipsis, so a 100 KB string never comes back whole. Every message that echoes a user's text uses this."""
    text = repr(value)
    if len(text) <= limit + 2:
        return text
    if isinstance(value, str):  # keep the closing quote: 'abc…'
        return text[: limit + 1] + "…" + text[0]
    return text[:limit] + "…"


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of a library's error message (its class name when the message is empty), at most `limit`
    characters: what our one-line messages quote of it."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class AnyV2VError(Exception):
    """An error caused by the user's input or environment, shown as one line without a traceback."""


class VideoError(AnyV2VError):
    """The video (or image) file cannot be used."""


class ConfigError(AnyV2VError):
    """A setting is out of range or inconsistent with another one."""


class ModelLoadError(AnyV2VError):
    """Model weights cannot be found or loaded."""


class OutOfMemoryError(AnyV2VError):
    """The device ran out of memory; the message says which settings to lower."""


# What to do when an edit or an inversion runs out of memory (engine, CLI and app alike).
OOM_ADVICE = "lower the frame count or the size, or turn on CPU offload (CLI: --frames, --size, --cpu-offload), then try again."


class CancelledError(AnyV2VError):
    """The user cancelled a running job."""


class OutputError(AnyV2VError):
    """An output cannot be written: the folder is not writable, or the name is taken."""
