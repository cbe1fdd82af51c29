"""User-facing errors: one clear line that says what went wrong and what to do."""


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
