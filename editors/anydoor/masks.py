"""Subject masks with rembg, from a local model file only (rembg would otherwise download its models).

The model is a U^2-Net ONNX file (rembg's `u2net.onnx`) at `ANYV2V_REMBG_MODEL`, default
`$U2NET_HOME/u2net.onnx` with `U2NET_HOME` defaulting to `~/.u2net` (rembg's own folder). It runs through rembg's
custom-model session (`u2net_custom`) with the path given explicitly, so nothing is ever fetched.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ..base import EditorError
from anyv2v.errors import first_line

REMBG_MODEL_ENV = "ANYV2V_REMBG_MODEL"
REMBG_MODEL_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx"


def rembg_model_path() -> Path:
    """The configured rembg model file (it may not exist): `ANYV2V_REMBG_MODEL`, else `$U2NET_HOME/u2net.onnx`
    (`~/.u2net`), else where rembg 2.x keeps its own download (`$REMBG_HOME/models/u2net/u2net.onnx`) if it is
    there."""
    configured = os.environ.get(REMBG_MODEL_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    legacy = Path(os.environ.get("U2NET_HOME", "").strip() or os.path.join("~", ".u2net")).expanduser()
    current = Path(os.environ.get("REMBG_HOME", "").strip() or os.path.join("~", ".rembg")).expanduser()
    primary = legacy / "u2net.onnx"
    rembg_own = current / "models" / "u2net" / "u2net.onnx"
    return rembg_own if not primary.is_file() and rembg_own.is_file() else primary


# What a user can do without rembg (the app's and the API's wording; the CLI names its flags).
NO_REMBG_USER = "upload a subject mask or an RGBA cut-out of the subject (its transparency is the mask) instead"
NO_REMBG_CLI = "give --reference-mask (white where the subject is) or an RGBA reference whose transparency is the mask"


def rembg_problem() -> EditorError | None:
    """Why rembg cannot cut out a subject here (package or model file missing), None if it can: a sentence for the
    user (what they can do instead), the operator's details (what to install or download where)."""
    missing = [name for name in ("rembg", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        operator = (
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: pip install rembg "
            "onnxruntime (automatic subject masks; see docs/editors.md)."
        )
    else:
        path = rembg_model_path()
        if path.is_file():
            return None
        operator = (
            f"the rembg model file {path} is missing: download u2net.onnx from rembg's GitHub releases "
            f"({REMBG_MODEL_URL}) and put it there (or point {REMBG_MODEL_ENV} at it); see docs/editors.md."
        )
    return EditorError(
        f"automatic subject masks are not set up on this server; {NO_REMBG_USER}.",
        operator=operator,
        cli=f"cannot find the subject automatically: {operator} Or {NO_REMBG_CLI}.",
    )


def missing_rembg_reason() -> str | None:
    """`rembg_problem` as command-line text (paths and all), None when rembg can run."""
    problem = rembg_problem()
    return problem.cli_text() if problem is not None else None


class SubjectMasker:
    """Subject masks from rembg on the configured local model file; keeps one loaded session (per file version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, float] | None = None
        self._session: object | None = None

    def __call__(self, image: Image.Image) -> np.ndarray:
        """The subject of `image` as a bool HxW mask (U^2-Net saliency above one half)."""
        problem = rembg_problem()
        if problem is not None:
            raise problem
        with self._lock:
            session = self._load(rembg_model_path())
            with np.errstate(invalid="ignore", divide="ignore"):  # a flat prediction normalises to NaN: no subject
                soft = session.predict(image.convert("RGB"))[0]
        return np.asarray(soft.convert("L")) > 127

    def _load(self, path: Path):
        key = (str(path.resolve()), path.stat().st_mtime)
        if self._key == key and self._session is not None:
            return self._session
        import onnxruntime as ort
        from rembg.sessions.u2net_custom import U2netCustomSession

        class LocalU2netSession(U2netCustomSession):
            # rembg accepts `model_path` only inside its own data folders (its HTTP server takes paths from
            # clients); this path is the administrator's setting, so it is used as given. Nothing is downloaded.
            @classmethod
            def download_models(cls, *args, **kwargs) -> str:
                return str(path)

        options = ort.SessionOptions()
        threads = os.environ.get("OMP_NUM_THREADS", "").strip()
        if threads.isdigit():
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = int(threads)
        try:
            session = LocalU2netSession(
                "u2net_custom", options, model_path=str(path), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            first = first_line(exc)
            operator = f"the rembg model {path} cannot be loaded ({first}); replace it with u2net.onnx from {REMBG_MODEL_URL}."
            raise EditorError(
                f"automatic subject masks do not work on this server; {NO_REMBG_USER}.",
                operator=operator,
                cli=f"{operator} Or {NO_REMBG_CLI}.",
            ) from None
        self._key, self._session = key, session
        return session
