"""The first-frame editor interface: what an editor declares, how its inputs are checked, where models are cached.

An editor module defines a subclass of `Editor`, a module-level `EDITOR` instance and an `ORDER` int; the
package discovers it (see `editors/__init__.py`). Subclasses implement `_edit`; the public `edit` does the
checking common to all editors (inputs, candidate count, device, out-of-memory) and guarantees the result:
`candidates` RGB images of exactly the input frame's size.
"""

from __future__ import annotations

import abc
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from anyv2v.device import oom_guard, resolve_device
from anyv2v.errors import AnyV2VError, ModelLoadError, quoted
from anyv2v.files import atomic_folder
from anyv2v.video import load_image

Progress = Callable[[float, str], None]

# "mask": a region of the frame being edited (painted in the app, a mask image file from the CLI and the API);
# it reaches `_edit` as a mode "L" image with values 0 or 255 (see `as_mask`). "choice": one of `choices`.
INPUT_KINDS = ("text", "image", "mask", "int", "float", "seed", "choice")
# Video settings an editor may suggest for the propagation step (`Editor.video_settings`).
VIDEO_SETTING_NAMES = ("tau_conv", "tau_sa", "tau_ta", "start_index")
MAX_CANDIDATES = 8
MAX_SEED = 2**32 - 1
MIN_FRAME_SIDE = 16
MAX_FRAME_SIDE = 4096


class EditorError(AnyV2VError):
    """An editor's input or setting cannot be used; the message says what to change.

    `str(exc)` is the message for whoever uses the editor (a web visitor included): no server paths, no commands.
    `operator` holds what only the server's operator can act on (paths, pip commands, downloads); the CLI prints
    it after the message (its user is the operator), the app writes it to the server log only. `cli`, when given,
    is the message in command-line terms (e.g. `--box` where the page says "a box").
    """

    def __init__(self, message: str, operator: str = "", cli: str = "") -> None:
        super().__init__(message)
        self.operator = operator.strip()
        self.cli = cli.strip()  # the message in command-line terms (flags), where it differs

    def cli_text(self) -> str:
        """What a command line prints: `cli` when given (complete on its own), else the message and the operator's
        details."""
        return self.cli or f"{self} {self.operator}".strip()


class EditorModelError(EditorError, ModelLoadError):
    """An editor's model cannot be loaded on this server: a sentence for the user, the loader's details (paths,
    what to download) for the operator and the command line."""


def model_load_failure(title: str, exc: ModelLoadError) -> EditorModelError:
    """`exc` (a loader's ModelLoadError, paths and all) as the user's sentence plus the operator's details."""
    detail = " ".join(str(exc).split())
    return EditorModelError(
        f"the {title} model cannot be loaded on this server; the server's operator can fix it (the details are in "
        "the server log).",
        operator=detail,
        cli=detail,
    )


@dataclass
class EditorInput:
    """One input an editor needs: the app turns it into a widget, the CLI into a flag."""

    name: str
    kind: str  # "text" | "image" | "mask" | "int" | "float" | "seed" | "choice"
    label: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    required: bool = False
    help: str = ""
    choices: tuple[str, ...] = ()  # kind "choice": the allowed values (lower case)

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input {self.name}: kind {self.kind!r} is not one of {INPUT_KINDS}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"input {self.name}: choices go with kind 'choice' and only with it")

    def describe_range(self) -> str:
        """'1..500' style range text for help and errors ('' when unbounded)."""
        if self.minimum is None and self.maximum is None:
            return ""
        low = "" if self.minimum is None else _fmt(self.minimum)
        high = "" if self.maximum is None else _fmt(self.maximum)
        return f"{low}..{high}"

    def coerce(self, value: Any) -> Any:
        """The checked value for this input (the default when `value` is None or blank)."""
        if isinstance(value, str) and self.kind != "text" and not value.strip():
            value = None
        if value is None:
            if self.required:
                what = {"image": "an image", "mask": "a painted region or a mask image"}.get(self.kind, "a value")
                raise EditorError(f"{self.label} is required: give {what}. {self.help}".strip())
            return self.default
        if self.kind == "text":
            text = str(value).strip()
            if self.required and not text:
                raise EditorError(f"{self.label} is empty. {self.help}".strip())
            return text
        if self.kind == "choice":
            choice = str(value).strip().lower()
            if choice not in self.choices:
                raise EditorError(f"{self.label} {quoted(str(value))} is not one of: {', '.join(self.choices)}.")
            return choice
        if self.kind == "image":
            return as_image(value, self.label)
        if self.kind == "mask":
            mask = as_mask(value, self.label)
            if mask is None and self.required:
                raise EditorError(f"{self.label} is empty: paint the region or give a mask image. {self.help}".strip())
            return mask
        return self._number(value)

    def _number(self, value: Any) -> int | float:
        if isinstance(value, bool):
            raise EditorError(f"{self.label} must be a number, got {quoted(value)}.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise EditorError(f"{self.label} must be a number, got {quoted(value)}.") from None
        except OverflowError:  # an int beyond float's range
            raise EditorError(f"{self.label} must be a finite number, got {quoted(value)}.") from None
        if not math.isfinite(number):
            raise EditorError(f"{self.label} must be a finite number, got {quoted(value)}.")
        if self.kind in ("int", "seed"):
            if number != int(number):
                raise EditorError(f"{self.label} must be a whole number, got {quoted(value)}.")
            number = int(number)
        low = self.minimum if self.minimum is not None else (0 if self.kind == "seed" else None)
        high = self.maximum if self.maximum is not None else (MAX_SEED if self.kind == "seed" else None)
        if (low is not None and number < low) or (high is not None and number > high):
            raise EditorError(
                f"{self.label} = {_fmt(number)} is outside {_fmt(low) if low is not None else ''}.."
                f"{_fmt(high) if high is not None else ''}; pick a value in that range."
            )
        return number


def _fmt(value: float | int) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 80 else text[:80] + "…"  # a user's 300-digit number is not echoed whole


def as_image(value: Any, label: str) -> Image.Image:
    """An image input given as a PIL image, a file path, an HxWxC uint8 array, or a Gradio ImageEditor value."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("composite") is not None:
        return as_image(value["composite"], label)  # gr.ImageEditor: the flattened edit
    if isinstance(value, (str, os.PathLike)):
        return load_image(value)  # raises VideoError with one line for missing/unreadable files
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3):
            raise EditorError(f"{label} must be an 8-bit image array, got {value.dtype} with shape {value.shape}.")
        return Image.fromarray(value)
    raise EditorError(f"{label} must be an image or an image file path, got {type(value).__name__}.")


def as_mask(value: Any, label: str) -> Image.Image | None:
    """A region as a mode "L" image of 0 and 255, or None when nothing is marked.

    Accepted: a Gradio ImageEditor value (the union of its painted layers' opaque pixels; the background is
    the frame itself and never counts), an image or image file with transparency (opaque pixels), or a
    plain black-and-white image or file (pixels brighter than mid-grey).
    """
    if isinstance(value, dict) and ("layers" in value or "background" in value):
        layers = [layer for layer in value.get("layers") or [] if layer is not None]
        if not layers:
            return None
        union: np.ndarray | None = None
        for layer in layers:
            alpha = np.asarray(as_image(layer, label).convert("RGBA").getchannel("A")) > 127
            union = alpha if union is None else (union | alpha if union.shape == alpha.shape else union)
        assert union is not None
        return Image.fromarray(np.where(union, 255, 0).astype(np.uint8), mode="L") if union.any() else None
    image = as_image(value, label)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            marked = alpha > 127
        else:
            marked = np.asarray(image.convert("L")) > 127
    else:
        marked = np.asarray(image.convert("L")) > 127
    if not marked.any():
        return None
    return Image.fromarray(np.where(marked, 255, 0).astype(np.uint8), mode="L")


class ModelCache:
    """Loaded models keyed by (editor, model id or folder, device, dtype); bounded LRU, thread-safe.

    Bounded because each entry can hold gigabytes of GPU memory: the oldest is dropped before a new one loads.
    """

    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            while self._entries and len(self._entries) >= self.max_entries:
                self._entries.popitem(last=False)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            value = load()  # under the lock so two threads never load the same weights twice
            self._entries[key] = value
            return value

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# Shared by every editor: at most two loaded models in the process (e.g. InstructPix2Pix and VGG-19).
MODEL_CACHE = ModelCache(max_entries=2)


def model_key(model: str) -> str:
    """Cache key part for a model: folders by absolute path (two spellings, one entry), hub ids as given."""
    return os.path.abspath(model) if os.path.exists(model) else model


def resolve_torch_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """`anyv2v.device.resolve_device` with bad names and missing CUDA turned into one-line errors."""
    if dtype is not None and dtype not in ("float16", "bfloat16", "float32"):
        raise EditorError(f"dtype {quoted(dtype)} must be float16, bfloat16 or float32.")
    try:
        torch_device, torch_dtype = resolve_device(device, dtype)
    except RuntimeError:
        raise EditorError(f"device {quoted(device)} is not a device name; use cpu, cuda or cuda:N.") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise EditorError(
            "the editors are set to run on a CUDA GPU but this server has none; the server's operator can set them "
            "to the CPU.",
            operator="device cuda was requested but no CUDA GPU is available; set ANYV2V_DEVICE=cpu.",
            cli="device cuda was requested but no CUDA GPU is available; use --device cpu.",
        )
    return torch_device, torch_dtype


class Editor(abc.ABC):
    """A first-frame editor. Subclasses set the class attributes and implement `_edit`."""

    name: str  # short id: "instruct_pix2pix", "nst", "manual"
    title: str  # tab label
    description: str  # one line
    inputs: tuple[EditorInput, ...] = ()
    model_ids: dict[str, str] = {}  # role -> default hub id
    model_env: str | None = None  # environment variable that overrides the default model
    supports_candidates: bool = True
    oom_advice: str = "lower the resolution or the number of candidates."
    # Suggested video settings for edits made with this editor (names from VIDEO_SETTING_NAMES), e.g. the
    # AnyV2V paper's settings for its kind of edit; the app offers them when this editor's frame is used.
    video_settings: dict[str, float] = {}

    def __init__(self) -> None:
        # Pipelines keep per-call state (scheduler timesteps), so one edit at a time per editor.
        self._run_lock = threading.Lock()

    # ---- declared interface -------------------------------------------------------------------------

    def input(self, name: str) -> EditorInput:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def default_model(self) -> str | None:
        """The model an edit uses when none is given: the env override, else the first of `model_ids`."""
        if self.model_env and os.environ.get(self.model_env, "").strip():
            return os.environ[self.model_env].strip()
        return next(iter(self.model_ids.values()), None)

    def resolve_model(self, model: str | None) -> str:
        chosen = (model or "").strip() or self.default_model()
        if not chosen:
            raise EditorError(f"the {self.name} editor uses no model.")
        return chosen

    # Inputs a click on the first frame can set (e.g. which face to edit); see `values_at`.
    click_inputs: tuple[str, ...] = ()

    def values_at(self, frame: Image.Image, x: float, y: float) -> dict[str, Any]:
        """Values of `click_inputs` for a click at pixel (x, y) of `frame` (the app wires clicks to this)."""
        return {}

    def unavailable(self, model: str | None = None) -> EditorError | None:
        """Why this editor cannot run here (a missing optional package or model file) as an EditorError whose
        message is one sentence for a user (what is missing; that the operator can enable it) and whose
        `operator` part says what to install or download where; None when it can run. Cheap: never loads a
        model. Subclasses with optional parts override this."""
        return None

    def unavailable_reason(self, model: str | None = None) -> str | None:
        """The user's sentence of `unavailable` (what the app's tab shows), None when the editor can run."""
        problem = self.unavailable(model)
        return str(problem) if problem is not None else None

    def check_available(self, model: str | None = None) -> None:
        """Raise `unavailable`'s EditorError (message and operator details) when the editor cannot run here."""
        problem = self.unavailable(model)
        if problem is not None:
            raise problem

    def validate_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """Checked values for every declared input, defaults filled in.

        Keys that are not declared inputs are ignored, so one dict of widget values can feed any editor.
        """
        given = dict(inputs or {})
        return {spec.name: spec.coerce(given.get(spec.name)) for spec in self.inputs}

    @classmethod
    def make_tiny_model(cls, directory: str | os.PathLike) -> Path:
        """Save a tiny random model of this editor's real classes to `directory` (for tests and offline demos)."""
        raise EditorError(f"the {cls.name} editor uses no model, so there is no tiny model to make.")

    # ---- running --------------------------------------------------------------------------------------

    def edit(
        self,
        frame: Image.Image,
        inputs: Mapping[str, Any] | None,
        candidates: int = 1,
        progress: Progress | None = None,
        model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> list[Image.Image]:
        """Edit `frame`; return `candidates` RGB images of exactly `frame.size` (candidate i uses seed + i).

        Editors with `supports_candidates = False` return exactly one image whatever `candidates` is.
        `progress(fraction, message)` is called as work proceeds; an exception raised from it (e.g. a
        cancel) stops the edit.
        """
        frame = check_frame(frame)
        values = self.validate_inputs(inputs)
        count = check_candidates(candidates) if self.supports_candidates else 1
        report = progress or _no_progress
        with self._run_lock, oom_guard(self.oom_advice):
            try:
                images = self._edit(frame, values, count, report, model, device, dtype)
            except ModelLoadError as exc:
                if isinstance(exc, EditorError):  # already worded for the user and the operator
                    raise
                raise model_load_failure(self.title, exc) from None
        if len(images) != count:
            raise RuntimeError(f"{self.name} returned {len(images)} images for {count} candidates")
        return [finish_image(image, frame.size) for image in images]

    @abc.abstractmethod
    def _edit(
        self,
        frame: Image.Image,
        values: dict[str, Any],
        candidates: int,
        progress: Progress,
        model: str | None,
        device: str | None,
        dtype: str | None,
    ) -> list[Image.Image]:
        """Do the edit on a checked RGB frame with checked `values`; return `candidates` images."""

    def load_model(self, model: str, device: str | None, dtype: str | None, load: Callable[[], Any]) -> Any:
        """The cached model for (this editor, model, device, dtype), loading it with `load` on first use."""
        torch_device, torch_dtype = resolve_torch_device(device, dtype)
        key = (self.name, model_key(model), str(torch_device), str(torch_dtype))
        return MODEL_CACHE.get(key, load)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _no_progress(fraction: float, message: str) -> None:
    return None


def check_frame(frame: Any) -> Image.Image:
    """The frame as RGB, refusing things that are not images or have absurd sizes."""
    if not isinstance(frame, Image.Image):
        raise EditorError(f"the frame to edit must be a PIL image, got {type(frame).__name__}.")
    width, height = frame.size
    if min(width, height) < MIN_FRAME_SIDE or max(width, height) > MAX_FRAME_SIDE:
        raise EditorError(
            f"the frame is {width}x{height}; editors take frames of {MIN_FRAME_SIDE} to {MAX_FRAME_SIDE} pixels a side."
        )
    return frame if frame.mode == "RGB" else frame.convert("RGB")


def check_candidates(candidates: Any) -> int:
    if (
        isinstance(candidates, bool)
        or not isinstance(candidates, (int, np.integer, float))
        or (isinstance(candidates, float) and not math.isfinite(candidates))
        or candidates != int(candidates)
    ):
        raise EditorError(f"candidates must be a whole number, got {quoted(candidates)}.")
    count = int(candidates)
    if not 1 <= count <= MAX_CANDIDATES:
        raise EditorError(f"candidates = {_fmt(count)} is outside 1..{MAX_CANDIDATES}.")
    return count


def finish_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """RGB at exactly `size` (pipelines may round sizes to multiples of 8)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.LANCZOS)
    return image


def empty_target_dir(directory: str | os.PathLike, what: str = "the tiny model") -> Path:
    """`directory` as a Path, refusing one that exists with content (a model folder never overwrites files);
    `what` names what the folder is for in the message (a converter says "the converted AnyDoor model")."""
    out = Path(directory).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EditorError(f"{out} already exists and is not an empty folder; give a new folder for {what}.")
    return out


def first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of a library's message (its first line, up to the first '. '), whitespace collapsed;
    at most `limit` characters, cut at a word with an ellipsis, so a quoted cause never stops mid-word."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    sentence = " ".join(lines[0].split()) if lines else ""
    end = sentence.find(". ")
    if end >= 0:
        sentence = sentence[: end + 1]
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return sentence.rstrip(".")


def load_tensors_only(path: Path, what: str, advice: str) -> Any:
    """`torch.load(path, weights_only=True)` for a converter: tensors and plain containers only, torch's own
    warnings kept off the user's terminal, and every refusal one line that says nothing in the file ran.

    `what` names the file ("the AnyDoor checkpoint"), `advice` is the sentence that says what to give instead."""
    import pickle
    import re
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. torch's "Detected pickle protocol 4" UserWarning
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
        except pickle.UnpicklingError as exc:
            refused = "safe loading (torch.load with weights_only=True) refused it and nothing in it ran"
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            if found is not None:
                raise EditorError(f"{path} holds a pickled {found.group(1)} object, not only tensors; {refused}. {advice}") from None
            with open(path, "rb") as handle:
                is_pickle = handle.read(1) == b"\x80"  # pickle protocol 2+ (torch.save's legacy format too)
            if is_pickle:
                raise EditorError(f"{path} is a plain pickle, not {what} of tensors; {refused}. {advice}") from None
            raise EditorError(f"{path} is not a readable PyTorch checkpoint (not torch.save's format). {advice}") from None
        except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as exc:
            cause = first_sentence(str(exc), 160) or type(exc).__name__
            raise EditorError(f"{path} is not a readable PyTorch checkpoint ({cause}). {advice}") from None


def save_dir_atomically(out: Path, save: Callable[[Path], Any]) -> Path:
    """Run `save(tmp)` into a temp folder beside `out`, then rename it into place: no half-written model folders.
    `out` is empty or absent (checked by empty_target_dir)."""
    # 0o755: mkdtemp makes it private; a model folder is ordinary shared data
    with atomic_folder(out, mode=0o755) as tmp:
        save(tmp)
    return out


def missing_model_message(model: str, what: str, exc: BaseException) -> str:
    """One line for a model that cannot be loaded: the cause's first line and what to check."""
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    where = "folder" if os.path.isdir(model) else "file" if os.path.isfile(model) else "hub id"
    return f"cannot load {what} from {model} ({where}): {first}"


__all__ = [
    "Editor",
    "EditorError",
    "EditorInput",
    "EditorModelError",
    "MAX_CANDIDATES",
    "MODEL_CACHE",
    "ModelCache",
    "Progress",
    "quoted",
    "check_candidates",
    "as_image",
    "as_mask",
    "VIDEO_SETTING_NAMES",
    "check_frame",
    "empty_target_dir",
    "first_sentence",
    "load_tensors_only",
    "save_dir_atomically",
    "finish_image",
    "model_key",
    "resolve_torch_device",
]
