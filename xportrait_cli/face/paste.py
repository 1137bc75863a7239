"""Paste square frames (an animated crop) back into the original full frame, with a feathered edge.

The inverse of :mod:`xportrait_cli.face.crop` for ``animate --paste-back``; not in the official code
(official ``core/test_xportrait.py`` writes the 512² frames as they are).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from xportrait_cli.face.crop_info import CropInfo, CropResult

__all__ = ["DEFAULT_FEATHER", "paste_back"]

#: Width in crop pixels (at ``size``) of the mask's ramp in :func:`paste_back`.
DEFAULT_FEATHER = 32.0


def _ramp(n: int, width: float) -> np.ndarray:
    """(n,) float32 in [0, 1]: 0 at both ends rising over ``width`` samples (smoothstep)."""
    if width <= 0:
        return np.ones(n, dtype=np.float32)
    pos = np.arange(n, dtype=np.float64) + 0.5
    t = np.clip(np.minimum(pos, n - pos) / width, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _as_info(crop_info: CropInfo | CropResult | dict | str | os.PathLike[str]) -> CropInfo:
    if isinstance(crop_info, CropResult):
        return crop_info.info
    if isinstance(crop_info, CropInfo):
        return crop_info
    if isinstance(crop_info, dict):
        return CropInfo.from_json(crop_info)
    return CropInfo.load(crop_info)


def paste_back(
    frames: Iterable[np.ndarray],
    crop_info: CropInfo | CropResult | dict | str | os.PathLike[str],
    original_image: np.ndarray,
    feather: float = DEFAULT_FEATHER,
) -> Iterator[np.ndarray]:
    """Compose square frames (e.g. an animated crop) back into the original full frame.

    Args:
        frames: iterable of (h, w, 3) uint8 RGB squares (any side; resized to the box, ``INTER_AREA``
            when shrinking, ``INTER_CUBIC`` when enlarging).
        crop_info: the crop's :class:`~xportrait_cli.face.crop_info.CropInfo`, a
            :class:`~xportrait_cli.face.crop_info.CropResult`, its JSON dict, or the path
            of its ``.crop.json``.
        original_image: (H, W, 3) uint8 RGB, the frame the crop was taken from (its size must be
            ``crop_info.source_size``).
        feather: width of the mask's soft edge in crop pixels (at ``crop_info.size``); 0 pastes
            the whole square with a hard edge.

    Yields (H, W, 3) uint8 frames, lazily: the original outside the box, each frame inside it,
    blended with the mask ``ramp(x) · ramp(y)`` (smoothstep from 0 at the box edge to 1 at
    ``feather`` inside). Raises ``ValueError`` for a size mismatch or a non-uint8 frame.
    """
    info = _as_info(crop_info)
    orig = np.asarray(original_image)
    if orig.dtype != np.uint8 or orig.ndim != 3 or orig.shape[2] < 3:
        raise ValueError(f"original_image must be (H, W, 3) uint8, got {orig.dtype} {orig.shape}")
    orig = np.ascontiguousarray(orig[..., :3])
    h, w = orig.shape[:2]
    if (w, h) != tuple(info.source_size):
        raise ValueError(f"original image is {w}x{h}, the crop was taken from {info.source_size}")
    x0, y0, x1, y1 = (int(v) for v in info.box)
    side = x1 - x0
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx0 >= cx1 or cy0 >= cy1:  # the box misses the frame: nothing to paste
        for _ in frames:
            yield orig.copy()
        return
    ramp = _ramp(side, feather * side / info.size)
    alpha = (ramp[cy0 - y0 : cy1 - y0, None] * ramp[None, cx0 - x0 : cx1 - x0])[..., None]
    under = orig[cy0:cy1, cx0:cx1].astype(np.float32) * (1.0 - alpha)
    for frame in frames:
        f = np.asarray(frame)
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] < 3:
            raise ValueError(f"frames must be (h, w, 3) uint8, got {f.dtype} {f.shape}")
        f = np.ascontiguousarray(f[..., :3])
        if f.shape[:2] != (side, side):
            interp = cv2.INTER_AREA if f.shape[0] > side else cv2.INTER_CUBIC
            f = cv2.resize(f, (side, side), interpolation=interp)
        region = f[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].astype(np.float32)
        out = orig.copy()
        out[cy0:cy1, cx0:cx1] = np.clip(np.rint(region * alpha + under), 0, 255).astype(np.uint8)
        yield out
