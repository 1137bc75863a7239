"""Local motion hints: the eye and mouth patches of the official pipeline.

Copies ``extract_local_feature_from_single_img`` of ``core/test_xportrait.py`` (X-Portrait snapshot
``be4d60b``): three square patches centred on the landmark means of iBUG points 43–47, 37–41 and 49–67
(the official slices ``[43:48]``, ``[37:42]``, ``[49:68]``, off by one from the iBUG eye/mouth ranges
36–41, 42–47, 48–67 — replicated on purpose), everything else −1.
"""

from __future__ import annotations

import numpy as np
import torch

#: Landmark slices of the three patches, in the official order: "left eye" (the image's right),
#: "right eye", mouth. Off by one from iBUG, exactly as the official code.
PATCH_SLICES: tuple[slice, slice, slice] = (slice(43, 48), slice(37, 42), slice(49, 68))
PATCH_NAMES: tuple[str, str, str] = ("left_eye", "right_eye", "mouth")
#: Landmarks are detected on 256×256 images; centres are clipped to [HALF_EDGE, 255 − HALF_EDGE].
LANDMARK_RES = 256
HALF_EDGE = 32


def check_size(size: int) -> int:
    """Validate an output side ``size``: a positive multiple of 64 (the latent is size/8, UNet /8 again).

    Raises ``ValueError`` naming the value otherwise; returns ``size``.
    """
    if not isinstance(size, int | np.integer) or size < 64 or size % 64:
        raise ValueError(f"size must be a positive multiple of 64, got {size!r}")
    return int(size)


def patch_centres(landmarks256: np.ndarray, size: int = 512) -> np.ndarray:
    """Patch centres (x, y) in pixels of the ``size``×``size`` frame, official rounding.

    ``landmarks256``: (68, 2) float (x, y) in pixels at **256 px** scale, iBUG order. For each of
    :data:`PATCH_SLICES`: mean → ``np.round`` (half to even) → clip to [32, 223] → ×size/256 →
    truncate to int32. Returns (3, 2) int32, ordered left eye (43–47), right eye (37–41), mouth (49–67).
    """
    lmk = np.asarray(landmarks256)
    if lmk.shape != (68, 2):
        raise ValueError(f"landmarks must have shape (68, 2), got {lmk.shape}")
    out = np.empty((3, 2), dtype=np.int32)
    for k, sl in enumerate(PATCH_SLICES):
        c = np.clip(np.round(np.mean(lmk[sl], axis=0)), HALF_EDGE, LANDMARK_RES - 1 - HALF_EDGE)
        out[k] = (c * (size / LANDMARK_RES)).astype(np.int32)
    return out


def patch_boxes(landmarks256: np.ndarray, size: int = 512) -> np.ndarray:
    """Patch boxes ``[x0, y0, x1, y1]`` (x1, y1 exclusive) in pixels of the ``size``×``size`` frame.

    Each box is ``[cx − h, cy − h, cx + h, cy + h]`` with ``h = size // 8`` (64 at 512 px) and the
    centres of :func:`patch_centres`. Thanks to the clipping, boxes always lie inside the frame.
    Returns (3, 2·2) int32.
    """
    c = patch_centres(landmarks256, size)
    h = size // 8
    return np.concatenate([c - h, c + h], axis=1).astype(np.int32)


def local_hint_np(frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Local hint of one frame as the official function builds it, channels first.

    ``frame``: (S, S, 3), uint8 in [0, 255] or float in [0, 1]. ``boxes``: (3, 4) from
    :func:`patch_boxes`. Returns (3, S, S) float32 in [−1, 1]: −1 outside the boxes, ``2·frame − 1``
    inside (overlapping boxes copy the same pixels).
    """
    f = np.asarray(frame)
    f = f.astype(np.float32) / 255.0 if f.dtype == np.uint8 else f.astype(np.float32)
    out = np.zeros_like(f)
    for x0, y0, x1, y1 in np.asarray(boxes):
        out[y0:y1, x0:x1] = f[y0:y1, x0:x1]
    return np.ascontiguousarray((out * 2 - 1).transpose(2, 0, 1))


def local_hints(frames_u8: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
    """Batched local hints: ``frames_u8`` (n, S, S, 3) uint8, ``boxes`` (n, 3, 4) int.

    Returns a (n, 3, S, S) float32 tensor in [−1, 1] (−1 except the three patches, which hold
    ``frame·2/255 − 1``).
    """
    frames = torch.from_numpy(np.ascontiguousarray(frames_u8)).permute(0, 3, 1, 2)
    out = torch.full(frames.shape, -1.0, dtype=torch.float32)
    for i, frame_boxes in enumerate(np.asarray(boxes)):
        for x0, y0, x1, y1 in frame_boxes:
            out[i, :, y0:y1, x0:x1] = frames[i, :, y0:y1, x0:x1].float() / 255 * 2 - 1
    return out
