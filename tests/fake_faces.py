"""A deterministic face analyzer for tests, plugged in the way users plug in theirs:
`ANYV2V_FACE_ANALYZER=tests.fake_faces:make_analyzer`.

A "face" is a bright region (every channel >= 200) of at least 4x4 pixels. Its keypoints sit at fixed
fractions of its box (eyes above the nose above the mouth corners) and its 512-d embedding is the region's
grey pixels resized to 16x32, so different photos give different identities and the same photo the same one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from editors.instantid.faces import Face, FaceAnalyzer

KEYPOINT_FRACTIONS = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.78], [0.65, 0.78]], dtype=np.float32)
BRIGHT = 200
MIN_SIDE = 4


def face_keypoints(box: tuple[float, float, float, float]) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([x1, y1], dtype=np.float32) + KEYPOINT_FRACTIONS * np.array([x2 - x1, y2 - y1], dtype=np.float32)


class BrightRegionFaces(FaceAnalyzer):
    def detect(self, image: Image.Image) -> list[Face]:
        import cv2

        rgb = np.asarray(image.convert("RGB"))
        mask = (rgb.min(axis=2) >= BRIGHT).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        faces = []
        for label in range(1, count):
            x, y, w, h, _ = stats[label]
            if min(w, h) < MIN_SIDE:
                continue
            box = (float(x), float(y), float(x + w), float(y + h))
            crop = Image.fromarray(grey[y : y + h, x : x + w]).resize((32, 16), Image.Resampling.BILINEAR)
            embedding = np.asarray(crop, dtype=np.float32).reshape(-1) * 4 - 2
            faces.append(Face(box, face_keypoints(box), embedding, 0.99))
        return faces


def make_analyzer(models_dir) -> FaceAnalyzer:
    return BrightRegionFaces()
