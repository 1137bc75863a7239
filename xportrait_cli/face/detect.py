"""Every face in an image: the landmarks of all faces, their geometry, and the choice of one.

The :class:`~xportrait_cli.face.landmarks.LandmarkDetector` protocol finds one face; cropping needs
them all. :func:`detect_faces` asks the backend's ``detect_all`` (dlib: every HOG rectangle through
the shape predictor, weak ones dropped; FAN: every face of ``get_landmarks_from_image``) on a working
copy whose long side is brought to 640 px when it is above 800 or below 320 px (speed on large
frames; small faces for the HOG detector on small ones), and maps the landmarks back. A backend
without ``detect_all`` gives at most its one face. Not in the official code, which expects a
square, face-centred portrait (official ``core/test_xportrait.py`` reads the inputs as they are).
"""

from __future__ import annotations

import cv2
import numpy as np

from xportrait_cli.errors import UsageError
from xportrait_cli.face.landmarks import LandmarkDetector

__all__ = ["DETECT_RANGE", "DETECT_SIDE", "choose_face", "detect_faces", "face_geometry"]

#: Working resolution of the face search (long side), used when the frame's is outside the range.
DETECT_SIDE = 640
DETECT_RANGE = (320, 800)


def face_geometry(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre ``(x, y)`` (float64, pixels) and size (larger side, pixels) of a landmark bounding box.

    ``landmarks``: (68, 2) (x, y) pixels.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (lo + hi) / 2.0, float((hi - lo).max())


def _detect_scale(height: int, width: int) -> float:
    side = max(height, width)
    lo, hi = DETECT_RANGE
    return 1.0 if lo <= side <= hi else DETECT_SIDE / side


def _all_landmarks(image: np.ndarray, detector: LandmarkDetector, thorough: bool) -> list[np.ndarray]:
    """Every face's (68, 2) float32 landmarks on ``image``: the backend's ``detect_all`` (see
    :meth:`~xportrait_cli.face.landmarks.DlibDetector.detect_all`), else its one ``detect`` face."""
    detect_all = getattr(detector, "detect_all", None)
    if callable(detect_all):
        return [np.asarray(p, dtype=np.float32) for p in detect_all(image, thorough=thorough)]
    one = detector.detect(image)
    return [] if one is None else [np.asarray(one, dtype=np.float32)]


def detect_faces(image: np.ndarray, detector: LandmarkDetector, *, thorough: bool = True) -> list[np.ndarray]:
    """Landmarks of every face in ``image``, sorted left to right.

    ``image``: (H, W, 3) uint8 RGB. Returns a list of (68, 2) float32 (x, y) arrays in pixels of
    ``image`` (pixel-centre convention), ordered by face box centre x; empty when there is no face.
    The search runs on a copy whose long side is 640 px when ``image``'s is above 800 or below 320.
    ``thorough`` (dlib) searches small faces too (~40 px on that copy, 4× the work) even when a
    large one is found; video frames use ``False`` (small faces only when no large one is found).
    """
    img = np.ascontiguousarray(np.asarray(image)[..., :3], dtype=np.uint8)
    h, w = img.shape[:2]
    k = _detect_scale(h, w)
    if k != 1.0:
        size = (max(1, round(w * k)), max(1, round(h * k)))
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        work = cv2.resize(img, size, interpolation=interp)
        kx, ky = size[0] / w, size[1] / h
    else:
        work, kx, ky = img, 1.0, 1.0
    faces = _all_landmarks(work, detector, thorough)
    scale = np.array([kx, ky], dtype=np.float64)
    faces = [((f.astype(np.float64) + 0.5) / scale - 0.5).astype(np.float32) for f in faces]
    return sorted(faces, key=lambda f: face_geometry(f)[0][0])


def choose_face(faces: list[np.ndarray], face: int | None, name: str) -> int:
    """Index of the face to crop: ``face`` (0-based, left to right) or the largest."""
    if face is None:
        return max(range(len(faces)), key=lambda i: face_geometry(faces[i])[1])
    if not 0 <= face < len(faces):
        found = f"{len(faces)} face{'s' if len(faces) != 1 else ''}"
        raise UsageError(
            f"--face {face}: {name} has {found}",
            f"faces are numbered 0 to {len(faces) - 1} from left to right",
        )
    return face
