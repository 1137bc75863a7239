"""Portrait loading and the official resize.

The official code reads the portrait with ``imageio.imread`` and resizes it with
``skimage.transform.resize(img, (512, 512))[..., :3]`` (bilinear, Gaussian anti-aliasing when
downscaling, float64 in [0, 1]); landmarks are found on ``img_as_ubyte(resize(img[..., :3],
(256, 256)))``. Non-square images are **squashed**, not cropped: this module keeps that default and
logs it (crop first with ``xportrait crop`` to avoid it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from skimage import img_as_ubyte
from skimage.transform import resize

from xportrait_cli.errors import InputError

log = logging.getLogger(__name__)

#: Landmark detection resolution of the official pipeline.
LANDMARK_RES = 256


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any image Pillow reads as (H, W, 3) uint8 RGB.

    - EXIF orientation is applied (``ImageOps.exif_transpose``), so the pixels are upright.
    - Palette, grayscale (``L``/``1``), CMYK, YCbCr, LAB … are converted to RGB by Pillow.
    - 16- and 32-bit integer grayscale (``I;16``, ``I``) is scaled to 8 bits (``/257``, clipped);
      float grayscale (``F``) is taken as [0, 1].
    - **Alpha** (``RGBA``, ``LA``, ``PA``, palette transparency) is composited over a **white**
      background: opaque pixels are unchanged (so opaque images match the official pipeline, which
      drops alpha), transparent areas become white instead of whatever colour they stored.

    Raises :class:`~xportrait_cli.errors.InputError` for a missing path, a folder, or a file that
    is not a readable image.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"portrait not found: {p}", "check the path")
    if p.is_dir():
        raise InputError(f"portrait is a folder, not an image: {p}", "pass an image file (PNG, JPEG, WebP…)")
    try:
        with Image.open(p) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"cannot read portrait {p}: {exc}", "pass an image Pillow can open (PNG, JPEG, WebP…)"
        ) from exc


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        g = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        g = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def resize_official(img: np.ndarray, size: int) -> np.ndarray:
    """``skimage.transform.resize(img, (size, size))[..., :3]``: the official resize.

    ``img``: (H, W, C) uint8 (taken as [0, 1] after ``/255``) or float in [0, 1], any C ≥ 3 (extra
    channels are resized and dropped, as the official code drops alpha after resizing). Bilinear
    (order 1) with Gaussian anti-aliasing when downscaling; non-square inputs are squashed. Returns
    (size, size, 3) float64 in [0, 1]. Matches golden vector (iii) to float64 rounding.
    """
    return resize(img, (size, size))[..., :3]


def landmark_input(img: np.ndarray) -> np.ndarray:
    """The official landmark-detector input: ``img_as_ubyte(resize(img[..., :3], (256, 256)))``.

    ``img``: (H, W, C) uint8 or float in [0, 1]. Returns (256, 256, 3) uint8. When ``img`` is
    already 256×256 uint8 it is returned unchanged (the resize is the identity to 1e-16).
    """
    if img.dtype == np.uint8 and img.shape[:2] == (LANDMARK_RES, LANDMARK_RES):
        return np.ascontiguousarray(img[..., :3])
    return img_as_ubyte(resize(img[..., :3], (LANDMARK_RES, LANDMARK_RES)))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """``img_as_ubyte`` of a float image in [0, 1] (×255, round half to even, clip): uint8."""
    return img_as_ubyte(np.clip(img, 0.0, 1.0))


def load_portrait(path: str | os.PathLike[str], size: int = 512) -> np.ndarray:
    """Load a portrait and resize it to ``size``×``size`` exactly as the official code does.

    Returns (size, size, 3) float32 RGB in [0, 1] (the pipeline maps it to [−1, 1] with ``·2 − 1``).
    A non-square portrait is squashed to a square (the official behaviour) and a warning says so;
    crop it first (``xportrait crop``) to keep its proportions. Raises
    :class:`~xportrait_cli.errors.InputError` (see :func:`load_image`).
    """
    rgb = load_image(path)
    h, w = rgb.shape[:2]
    if h != w:
        log.warning(
            "portrait %s is %dx%d, not square: squashing it to %dx%d as the official X-Portrait code does "
            "(crop it first with `xportrait crop` to keep its proportions)",
            path,
            w,
            h,
            size,
            size,
        )
    return resize_official(rgb, size).astype(np.float32)
