"""Faces for the identity editor: a `FaceAnalyzer` interface, the InsightFace antelopev2 backend, face picking
and InstantID's keypoint image.

A face analyzer finds faces in an RGB image and gives, per face, its box, the 5 facial keypoints (left eye,
right eye, nose, left and right mouth corner, image pixels) and a 512-d ArcFace identity embedding. InstantID
was trained with InsightFace's antelopev2 pack (SCRFD-10G detector + glintr100 ArcFace, ONNX), so that is the
backend users run. The backend is chosen by `ANYV2V_FACE_ANALYZER`:

- `insightface` (default): antelopev2 from a local folder (`ANYV2V_FACE_MODELS`, default
  `~/.insightface/models/antelopev2`), never downloaded.
- `package.module:factory`: any other implementation; `factory(models_dir)` returns a `FaceAnalyzer`
  (the tests plug in a deterministic one this way; a user can plug in another detector).
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..base import EditorError

ANALYZER_ENV = "ANYV2V_FACE_ANALYZER"
MODELS_ENV = "ANYV2V_FACE_MODELS"
DEFAULT_ANALYZER = "insightface"
DEFAULT_MODELS_DIR = "~/.insightface/models/antelopev2"
# The two files of antelopev2 the editor uses (the pack also holds 1k3d68, 2d106det and genderage, unused).
DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
EMBEDDING_SIZE = 512
# Below this (shorter box side, pixels of the analysed image) the keypoints and identity are too unreliable.
MIN_FACE_SIDE = 24
# Several faces and no choice: the largest is used only when it is clearly the largest (next one's area
# below this fraction of it); otherwise the user must pick.
CLEARLY_LARGEST = 0.7

INSIGHTFACE_HELP = (
    "Install InsightFace with `pip install insightface onnxruntime` (onnxruntime-gpu on a GPU machine; keep one "
    "OpenCV in the environment, the headless one: if `pip list` shows opencv-python, run "
    "`pip uninstall -y opencv-python && pip install --force-reinstall opencv-python-headless`). "
    "Download InsightFace's antelopev2 pack (https://github.com/deepinsight/insightface/tree/master/python-package, "
    f"model zoo) and unzip it so that {DETECTOR_FILE} and {RECOGNIZER_FILE} are in {{folder}} (or point "
    f"{MODELS_ENV} at the folder that holds them). The antelopev2 models are for non-commercial research use "
    "only (InsightFace licence)."
)


def face_analysis_unavailable(detail: str) -> EditorError:
    """The user's sentence for face analysis that cannot run here; `detail` (paths, installs) is the operator's."""
    return EditorError(
        "face analysis (InsightFace antelopev2) is not set up on this server; the server's operator can enable it.",
        operator=detail,
        cli=detail,
    )


@dataclass(frozen=True)
class Face:
    """One detected face in image pixels."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    keypoints: np.ndarray  # (5, 2) float32: left eye, right eye, nose, left mouth corner, right mouth corner
    embedding: np.ndarray  # (512,) float32 ArcFace embedding, not normalised (what InstantID was trained on)
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def describe(self) -> str:
        x1, y1, x2, y2 = (round(v) for v in self.box)
        return f"{x2 - x1}x{y2 - y1} px at ({x1}, {y1})"


class FaceAnalyzer(abc.ABC):
    """Finds faces in an image: box, 5 keypoints and a 512-d identity embedding each."""

    @abc.abstractmethod
    def detect(self, image: Image.Image) -> list[Face]:
        """Every face in the RGB `image` (any order)."""


class InsightFaceAnalyzer(FaceAnalyzer):
    """InsightFace's antelopev2 (SCRFD-10G + glintr100) loaded from explicit ONNX files, never downloaded."""

    def __init__(self, models_dir: str | os.PathLike, det_size: int = 640, providers: list[str] | None = None) -> None:
        reason = insightface_unavailable_reason(models_dir)
        if reason:
            raise face_analysis_unavailable(reason)
        from insightface.model_zoo import get_model

        folder = Path(models_dir).expanduser()
        providers = providers or _onnx_providers()
        # InsightFace prints the providers it applied; keep stdout for results (the CLI prints output paths).
        with contextlib.redirect_stdout(sys.stderr):
            self.detector = get_model(str(folder / DETECTOR_FILE), providers=providers)
            self.recognizer = get_model(str(folder / RECOGNIZER_FILE), providers=providers)
        if self.detector is None or self.recognizer is None:
            raise face_analysis_unavailable(
                f"the ONNX files in {folder} are not InsightFace's SCRFD detector and ArcFace model."
            )
        context = 0 if "CUDAExecutionProvider" in providers else -1
        self.detector.prepare(context, input_size=(det_size, det_size), det_thresh=0.5)
        self.recognizer.prepare(context)

    def detect(self, image: Image.Image) -> list[Face]:
        from insightface.utils import face_align

        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        boxes, keypoints = self.detector.detect(bgr, max_num=0, metric="default")
        faces = []
        for box, kps in zip(boxes, keypoints if keypoints is not None else [], strict=False):
            aligned = face_align.norm_crop(bgr, landmark=kps, image_size=self.recognizer.input_size[0])
            embedding = np.asarray(self.recognizer.get_feat(aligned), dtype=np.float32).reshape(-1)
            faces.append(Face(tuple(float(v) for v in box[:4]), kps.astype(np.float32), embedding, float(box[4])))
        return faces


def _onnx_providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


def face_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """The antelopev2 folder: the argument, else `ANYV2V_FACE_MODELS`, else ~/.insightface/models/antelopev2."""
    chosen = str(models_dir or "").strip() or os.environ.get(MODELS_ENV, "").strip() or DEFAULT_MODELS_DIR
    return Path(chosen).expanduser()


def analyzer_spec() -> str:
    return os.environ.get(ANALYZER_ENV, "").strip() or DEFAULT_ANALYZER


def insightface_unavailable_reason(models_dir: str | os.PathLike | None = None) -> str | None:
    """What is missing for the InsightFace backend (package or model files), or None. Cheap: loads nothing."""
    folder = face_models_dir(models_dir)
    missing_packages = [name for name in ("insightface", "onnxruntime", "cv2") if importlib.util.find_spec(name) is None]
    missing_files = [name for name in (DETECTOR_FILE, RECOGNIZER_FILE) if not (folder / name).is_file()]
    if not missing_packages and not missing_files:
        return None
    what = []
    if missing_packages:
        names = {"cv2": "opencv-python-headless"}
        what.append("the package(s) " + ", ".join(names.get(n, n) for n in missing_packages) + " are not installed")
    if missing_files:
        what.append(f"{' and '.join(missing_files)} not found in {folder}")
    return "face analysis needs InsightFace antelopev2: " + "; ".join(what) + ". " + INSIGHTFACE_HELP.format(folder=folder)


def analyzer_unavailable_reason(models_dir: str | os.PathLike | None = None) -> str | None:
    """Why the configured face analyzer cannot run here, or None (cheap: imports no model library)."""
    spec = analyzer_spec()
    if spec == DEFAULT_ANALYZER:
        return insightface_unavailable_reason(models_dir)
    module_name, _, factory = spec.partition(":")
    if not module_name or not factory:
        return f"{ANALYZER_ENV}={spec!r} must be 'insightface' or 'package.module:factory'."
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return f"{ANALYZER_ENV}={spec!r}: module {module_name} cannot be found."
    return None


def load_face_analyzer(models_dir: str | os.PathLike | None = None) -> FaceAnalyzer:
    """The face analyzer `ANYV2V_FACE_ANALYZER` names, loaded (EditorError saying what to install if it can't)."""
    reason = analyzer_unavailable_reason(models_dir)
    if reason:
        raise face_analysis_unavailable(reason)
    spec = analyzer_spec()
    folder = face_models_dir(models_dir)
    if spec == DEFAULT_ANALYZER:
        return InsightFaceAnalyzer(folder)
    module_name, _, factory_name = spec.partition(":")
    factory: Callable[[Path], FaceAnalyzer] | None = getattr(importlib.import_module(module_name), factory_name, None)
    if not callable(factory):
        raise face_analysis_unavailable(f"{ANALYZER_ENV}={spec!r}: {module_name} has no callable {factory_name}.")
    analyzer = factory(folder)
    if not isinstance(analyzer, FaceAnalyzer):
        raise face_analysis_unavailable(
            f"{ANALYZER_ENV}={spec!r} returned {type(analyzer).__name__}, not a FaceAnalyzer."
        )
    return analyzer


# ---- which face ----------------------------------------------------------------------------------------------


def faces_left_to_right(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: (face.box[0] + face.box[2]) / 2)


def largest_face(faces: list[Face]) -> Face:
    return max(faces, key=lambda face: face.area)


def face_number_at(faces: list[Face], x: float, y: float) -> int:
    """The `Face` input (1..N, left to right) for a click at (x, y): the face whose box holds the point, else
    the one whose centre is nearest; 0 when there are no faces."""
    ordered = faces_left_to_right(faces)
    if not ordered:
        return 0
    inside = [i for i, f in enumerate(ordered) if f.box[0] <= x <= f.box[2] and f.box[1] <= y <= f.box[3]]
    if inside:  # nested boxes: the smallest holding the point
        return min(inside, key=lambda i: ordered[i].area) + 1
    centres = [((f.box[0] + f.box[2]) / 2 - x) ** 2 + ((f.box[1] + f.box[3]) / 2 - y) ** 2 for f in ordered]
    return int(np.argmin(centres)) + 1


def choose_face(faces: list[Face], index: int, what: str, how_to_pick: str | None = None) -> tuple[Face, str]:
    """The face to use and a note saying which: `index` 0 = the largest, 1..N = the N-th from the left.

    With several faces of similar size and index 0 the choice would be a guess, so it is an error that says
    how many faces there are and how to pick one (`how_to_pick`, default: set Face to 1..N).
    """
    if not faces:
        raise EditorError(
            f"no face found in {what}; use a picture where one face is clearly visible, frontal or three-quarter, "
            "not covered."
        )
    ordered = faces_left_to_right(faces)
    if index > 0:
        if index > len(ordered):
            raise EditorError(f"Face = {index}, but {what} has {_count(len(ordered))}; pick 0 (largest) to {len(ordered)}.")
        face = ordered[index - 1]
        note = f"{what}: face {index} of {len(ordered)} from the left ({face.describe()})"
    else:
        face = largest_face(ordered)
        position = ordered.index(face) + 1
        if len(ordered) > 1:
            runner_up = max(f.area for f in ordered if f is not face)
            if runner_up >= CLEARLY_LARGEST * face.area:
                pick = how_to_pick or (
                    f"set Face to 1..{len(ordered)} (counted from the left) to say which one gets the new identity"
                )
                raise EditorError(f"{what} has {_count(len(ordered))} of similar size; {pick}.")
            note = f"{what}: {_count(len(ordered))}, using the largest (face {position} from the left)"
        else:
            note = f"{what}: one face ({face.describe()})"
    if min(face.width, face.height) < MIN_FACE_SIDE:
        raise EditorError(
            f"the face in {what} is too small ({face.describe()}; at least {MIN_FACE_SIDE} px a side is needed); "
            "use a larger picture or a closer shot."
        )
    return face, note


def _count(n: int) -> str:
    return f"{n} face{'s' if n != 1 else ''}"


# ---- keypoint image ------------------------------------------------------------------------------------------

KEYPOINT_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
# Limbs from each eye and each mouth corner to the nose (keypoint 2), as in InstantID's `draw_kps`.
KEYPOINT_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
LIMB_HALF_WIDTH = 4
LIMB_BRIGHTNESS = 0.6
KEYPOINT_RADIUS = 10


def draw_keypoints(size: tuple[int, int], keypoints: np.ndarray) -> Image.Image:
    """IdentityNet's condition image: on black, an ellipse from each of 4 keypoints to the nose (colour of the
    outer keypoint, at 60 %), then a filled circle of radius 10 at each keypoint in its own colour."""
    import cv2

    width, height = size
    points = np.asarray(keypoints, dtype=np.float64).reshape(5, 2)
    canvas = np.zeros((height, width, 3), dtype=np.float64)
    for start, end in KEYPOINT_LIMBS:
        (x0, y0), (x1, y1) = points[start], points[end]
        length = math.hypot(x0 - x1, y0 - y1)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        polygon = cv2.ellipse2Poly(
            (int((x0 + x1) / 2), int((y0 + y1) / 2)), (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1
        )
        canvas = cv2.fillConvexPoly(canvas, polygon, KEYPOINT_COLORS[start])
    canvas = (canvas * LIMB_BRIGHTNESS).astype(np.uint8)
    for color, (x, y) in zip(KEYPOINT_COLORS, points, strict=True):
        canvas = cv2.circle(canvas, (int(x), int(y)), KEYPOINT_RADIUS, color, -1)
    return Image.fromarray(canvas)


# ---- photos ---------------------------------------------------------------------------------------------------


def as_rgb_photo(image: Image.Image) -> tuple[Image.Image, str | None]:
    """An RGB copy of a reference photo and a note when it was converted (transparency onto white, grey to RGB)."""
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), "the face photo's transparent parts were filled white"
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        span = float(values.max() - values.min()) or 1.0
        grey = ((values - values.min()) / span * 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB"), "the face photo is greyscale (high bit depth)"
    if mode in ("L", "1"):
        return image.convert("RGB"), "the face photo is greyscale"
    return image.convert("RGB"), None


__all__ = [
    "Face",
    "FaceAnalyzer",
    "InsightFaceAnalyzer",
    "analyzer_unavailable_reason",
    "as_rgb_photo",
    "choose_face",
    "draw_keypoints",
    "face_analysis_unavailable",
    "face_number_at",
    "face_models_dir",
    "load_face_analyzer",
]
