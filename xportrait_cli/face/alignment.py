"""Driving-to-portrait alignment: best frame, one affine from landmark boxes, the warp.

Copies ``find_best_frame_byheadpose_fa`` and ``adjust_driving_video_to_src_image`` of
``core/test_xportrait.py`` (X-Portrait snapshot ``be4d60b``). All landmarks here are (68, 2) float
(x, y) in pixels at **256 px** scale (the official landmark resolution), iBUG order.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: ``best_frame`` values with a special meaning (official): search automatically / no alignment.
BEST_FRAME_AUTO = -1
NO_ALIGNMENT = -2


def best_frame_l1(
    portrait_landmarks: np.ndarray,
    driving_landmarks: np.ndarray,
    valid: Sequence[bool] | np.ndarray | None = None,
) -> tuple[int, np.ndarray]:
    """The driving frame whose landmarks are closest to the portrait's (``best_frame = -1``).

    Official rule: the sum of absolute differences between the raw (68, 2) arrays, 256 px scale;
    the first minimum wins. ``driving_landmarks``: (n, 68, 2). ``valid``: optional (n,) mask; frames
    where no face was detected are left out of the search (the official code compared them as zeros,
    which in practice never wins). Returns ``(index, l1)`` with ``l1`` (n,) float64 (``inf`` for
    invalid frames). Raises ``ValueError`` if no frame is valid.
    """
    src = np.asarray(portrait_landmarks, dtype=np.float64)
    drv = np.asarray(driving_landmarks, dtype=np.float64)
    l1 = np.abs(drv - src[None]).sum(axis=(1, 2))
    if valid is not None:
        l1 = np.where(np.asarray(valid, dtype=bool), l1, np.inf)
    if not np.isfinite(l1).any():
        raise ValueError("no valid driving frame to choose the best frame from")
    return int(np.argmin(l1)), l1


def landmark_box_corners(landmarks: np.ndarray) -> np.ndarray:
    """The official alignment box of one face: (4, 2) float32 corners TL, TR, BL, BR.

    The box is the landmark **centroid** (mean of the 68 points, not the bbox centre) ± half the
    landmark bbox extent on each axis, in the same pixels as ``landmarks``.
    """
    lmk = np.asarray(landmarks)
    c = np.mean(lmk, axis=0)
    e = (np.max(lmk, axis=0) - np.min(lmk, axis=0)) * 0.5
    return np.array(
        [
            [c[0] - e[0], c[1] - e[1]],
            [c[0] + e[0], c[1] - e[1]],
            [c[0] - e[0], c[1] + e[1]],
            [c[0] + e[0], c[1] + e[1]],
        ]
    ).astype(np.float32)


def alignment_affine(
    portrait_landmarks: np.ndarray, driving_landmarks: np.ndarray, size: int = 512
) -> np.ndarray:
    """The affine that maps the best driving frame's face box onto the portrait's, at ``size`` px.

    Both inputs: (68, 2) at 256 px scale. Official: ``cv2.getAffineTransform(drv_corners[:3]·k,
    src_corners[:3]·k)`` from the TL, TR and BL corners (float32), with ``k = size/256`` (the
    official code doubles the points for 512). Anisotropic scale plus translation, no rotation.
    Returns (2, 3) float64, driving → portrait pixels.
    """
    src = landmark_box_corners(portrait_landmarks)
    dst = landmark_box_corners(driving_landmarks)
    k = size / 256
    if k != 1:
        src, dst = src * np.float32(k), dst * np.float32(k)
    return cv2.getAffineTransform(dst[:3], src[:3])


def identity_affine() -> np.ndarray:
    """The (2, 3) float64 identity (``best_frame = -2``: no alignment)."""
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def warp_frame(frame: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Warp one ``size``×``size`` frame with the official flags.

    ``cv2.warpAffine(frame, M, (size, size))`` with OpenCV defaults: INTER_LINEAR, BORDER_CONSTANT,
    border 0 (black). ``frame``: (size, size, 3) — the official code warps float64 in [0, 1]; a
    uint8 frame is converted to float64 ``/255`` first and the result rounded back to uint8 (≤ ½
    grey level from the official float). Returns the same dtype as the input. OpenCV quantises
    sub-pixel positions to 1/32 px; use this function (not an exact bilinear warp) to match.
    """
    if frame.dtype == np.uint8:
        warped = cv2.warpAffine(frame.astype(np.float64) / 255.0, affine, (size, size))
        return np.clip(np.rint(warped * 255.0), 0, 255).astype(np.uint8)
    return cv2.warpAffine(frame, affine, (size, size))


def transform_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to points (..., 2) (x, y); returns float64 of the same shape."""
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(affine, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]
