"""Portrait loading and the official resize.

The official code (official ``core/test_xportrait.py``, its input loading and
``extract_local_feature_from_single_img`` L33-71) reads the portrait with ``imageio.imread`` and
resizes it with ``skimage.transform.resize(img, (512, 512))[..., :3]`` (bilinear, Gaussian
anti-aliasing when downscaling, float64 in [0, 1]); landmarks are found on
``img_as_ubyte(resize(img[..., :3], (256, 256)))``. Non-square images are **squashed**, not
cropped: this module keeps that default and logs it (crop first with ``xportrait crop`` to avoid it).

:func:`resize_official` and :func:`landmark_input` give skimage's resize to the last bit without
calling it in the usual cases: the same float64 operations as skimage and scipy, in their order,
computed only where needed (see the notes above :func:`_resize_rgb`).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import cv2
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
    """``skimage.transform.resize(img, (size, size))[..., :3]``: the official resize, bit for bit.

    ``img``: (H, W, C) uint8 (taken as [0, 1] after ``/255``) or float in [0, 1], any C ≥ 3 (extra
    channels are resized and dropped, as the official code drops alpha after resizing). Bilinear
    (order 1) with Gaussian anti-aliasing when downscaling; non-square inputs are squashed. Returns
    (size, size, 3) float64 in [0, 1]. Matches golden vector (iii) to float64 rounding.

    Fast path (:func:`_fast_resize`): uint8 or float64 images with ≥ 3 channels, shrunk, grown or
    kept on either axis, are resized with numpy doing scipy's float64 operations in scipy's order
    (Gaussian only where the bilinear taps read it, in cache-sized strips). Measured against
    skimage 0.26 / scipy 1.17 on every video of the test media (512→512/256/64/333/97, 176×144
    grown to 512/256/333, the same frames squashed to 640×480, with alpha, strided, float64): max
    abs difference 0.0, uint8 results identical (``tests/test_image.py``). On a 2-core CPU it takes
    4.7 ms instead of 24 ms for 512×512→256 or →64 and 9 ms instead of 36 ms for 640×480→512.
    Everything else (float32, 1–2 channels, NaN/inf, 1-pixel axes, size 1) and any installation
    where a once-per-process check finds a difference (:func:`_fast_path_agrees`) uses skimage.
    """
    return _resize_rgb(img, size)


def landmark_input(img: np.ndarray) -> np.ndarray:
    """The official landmark-detector input: ``img_as_ubyte(resize(img[..., :3], (256, 256)))``.

    ``img``: (H, W, C) uint8 or float in [0, 1]. Returns (256, 256, 3) uint8, identical to the
    official expression: the resize takes the bit-identical fast path of :func:`resize_official`
    (4.8 ms instead of 23 ms from 512×512, 6.3 ms instead of 18 ms from 640×480). When ``img`` is
    already 256×256 uint8 it is returned unchanged (the resize is the identity to 1e-16).
    """
    if img.dtype == np.uint8 and img.shape[:2] == (LANDMARK_RES, LANDMARK_RES):
        return np.ascontiguousarray(img[..., :3])
    return img_as_ubyte(_resize_rgb(img[..., :3], LANDMARK_RES))


def unit_to_uint8(img: np.ndarray) -> np.ndarray:
    """``img_as_ubyte`` of a float image in [0, 1] (×255, round half to even, clip): uint8, any shape.

    The [0, 1] contract of skimage (what :func:`resize_official` returns); the decoded [−1, 1]
    tensors go through :func:`xportrait_cli.pipeline.pipeline_xportrait.to_uint8` instead.

    Float input takes the same steps in place on one copy: the same bytes, 5× faster at 512×512.
    """
    if img.dtype.kind != "f":
        return img_as_ubyte(np.clip(img, 0.0, 1.0))
    out = np.clip(img, 0.0, 1.0)
    out *= 255  # img_as_ubyte multiplies in the input's float dtype, then rounds half to even
    np.rint(out, out=out)
    return out.astype(np.uint8)


# --- skimage's resize, bit-identical and faster ----------------------------------------------------
#
# skimage.transform.resize(img, (s, s)) with its defaults is, for uint8 or float64 (H, W, C) input
# (skimage/transform/_warps.py):
#   x = img_as_float(img)                      uint8: np.multiply(img, 1/255, dtype=float64)
#   if any axis shrinks: x = ndi.gaussian_filter(x, sigma, mode="mirror")  (truncate 4.0)
#       sigma = max(0, (H/s - 1)/2), max(0, (W/s - 1)/2), 0 on channels (σ ≤ 1e-15: axis skipped)
#   out = ndi.zoom(x, ..., order=1, mode="mirror", grid_mode=True)
#   np.clip(out, x.min(), x.max())
# _resize_exact repeats those float64 operations in the order scipy's C code does them
# (ni_filters.c NI_Correlate1D, symmetric kernel branch; ni_interpolation.c NI_ZoomShift and
# map_coordinate, ni_splines.c order-1 weights), so every output is the same double. It evaluates
# the Gaussian only where the zoom reads it, uses slices instead of gathers where taps are evenly
# spaced, and works in strips of output rows whose buffers stay in cache. Checked value for value
# against skimage in tests/test_image.py (real media; down-, up- and mixed scaling; odd sizes).
# OpenCV in float64 was measured first: sepFilter2D sums in another order and resize uses float32
# weights at non-dyadic scales, 1e-16 to 5e-14 away from scipy, and cv2 Gaussian + exact bilinear
# still rounded 100-400 uint8 values per 512×512 frame the other way (values exactly on k + 0.5
# grey levels: flat areas, factor-2 taps). So cv2 only transposes (a copy) here.

#: scipy.ndimage.gaussian_filter's default truncation: kernel radius ``int(4σ + 0.5)``.
_TRUNCATE = 4.0
#: float64 values in the row-stage buffers of one strip (512 KiB).
_STRIP = 65536


def _resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    """``skimage.transform.resize(img, (size, size))[..., :3]``: :func:`_fast_resize` when it
    applies and this numpy/scipy build rounds as it assumes (:func:`_fast_path_agrees`), else
    skimage itself."""
    out = _fast_resize(img, size) if _fast_path_agrees() else None
    return resize(img, (size, size))[..., :3] if out is None else out


def _fast_resize(img: np.ndarray, size: int) -> np.ndarray | None:
    """skimage's resize of ``img[..., :3]`` to (size, size), bit-identical; ``None`` when not handled.

    Handles uint8 and float64 (H, W, C ≥ 3) images with H, W ≥ 2 and finite values, any scale on
    either axis. Not handled (skimage then): other dtypes (float32 keeps float32 arithmetic in
    skimage), 1- and 2-channel or 2-D images, NaN/inf, 1-pixel axes, and a Gaussian kernel longer
    than the image (only when resizing to 1 pixel).
    """
    if img.ndim != 3 or img.shape[2] < 3 or img.dtype not in (np.uint8, np.float64) or size < 1:
        return None
    h, w = img.shape[:2]
    if h < 2 or w < 2:
        return None
    lo, hi = _to_float(np.array([img.min(), img.max()]))  # skimage clips to the range of all channels
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    if (h, w) == (size, size):  # zoom by 1 reads x·1 + x'·0 == x: a new float64 array
        return _to_float(img[..., :3]) if img.dtype == np.uint8 else img[..., :3].copy()
    antialias = h > size or w > size
    rows, cols = _Axis(h, size, antialias), _Axis(w, size, antialias)
    if rows.radius >= h or cols.radius >= w:
        return None
    return _resize_exact(img, size, rows, cols, lo, hi)


@functools.cache
def _fast_path_agrees() -> bool:
    """Once per process: :func:`_fast_resize` equals skimage to the bit on a small random image.

    It relies on scipy's C code rounding each ``+`` and ``·`` separately (true of the x86-64
    wheels it was checked with); a build that fuses them (FMA) or a changed skimage/scipy algorithm
    turns the fast path off here instead of changing results.
    """
    img = np.random.default_rng(0).random((37, 53, 4))
    for size in (16, 40):  # both axes shrunk; one grown, one shrunk
        if not np.array_equal(_fast_resize(img, size), resize(img, (size, size))[..., :3]):
            log.warning("the fast resize differs from skimage on this installation: using skimage")
            return False
    return True


def _to_float(a: np.ndarray) -> np.ndarray:
    """skimage's ``img_as_float`` for uint8 (``a · (1/255)`` in float64) and float64 (``a`` itself)."""
    return np.multiply(a, 1.0 / 255, dtype=np.float64) if a.dtype == np.uint8 else a


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """``scipy.ndimage._filters._gaussian_kernel1d(sigma, 0, int(4σ + 0.5))``, same expression."""
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Integer indices folded into [0, n) by ndimage's ``mirror`` mode (d c b | a b c d | c b a)."""
    period = 2 * n - 2
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def _mirror_coordinate(cc: np.ndarray, n: int) -> np.ndarray:
    """ni_interpolation.c ``map_coordinate`` for ``NI_EXTEND_MIRROR`` (n ≥ 2), elementwise."""
    period = 2 * n - 2
    cc = cc.copy()
    low = cc < 0
    c = period * np.trunc(-cc[low] / period) + cc[low]
    cc[low] = np.where(c <= 1 - n, c + period, -c)
    high = cc > n - 1
    c = cc[high] - period * np.trunc(cc[high] / period)
    cc[high] = np.where(c >= n, period - c, c)
    return cc


class _Axis:
    """One image axis of the resize: its anti-aliasing kernel and its order-1 zoom taps.

    ``taps``: one or two ``(index, weight)`` arrays: output ``k`` reads input ``index[k]`` with
    weight ``weight[k]``, first tap first. The second tap is left out when all its weights are 0
    (kept axis, odd integer factor): scipy adds ``+0.0`` there, which changes nothing.
    """

    def __init__(self, n_in: int, n_out: int, antialias: bool) -> None:
        sigma = max(0.0, (n_in / n_out - 1) / 2) if antialias else 0.0
        kernel = _gaussian_kernel(sigma) if sigma > 1e-15 else np.ones(1)
        self.radius = len(kernel) // 2
        self.kernel = kernel if self.radius else None  # a 1-tap kernel is [1.0]: x · 1.0 == x
        # NI_ZoomShift with grid_mode: cc = (k + 0.5) · zoom - 0.5, mirrored into [0, n - 1]
        cc = _mirror_coordinate((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, n_in)
        start = np.floor(cc)
        w0 = 1.0 - (cc - start)  # ni_splines.c, order 1: w0 = 1 - t, w1 = 1 - w0
        w1 = 1.0 - w0
        i0 = start.astype(np.intp)
        self.taps = [(_mirror(i0, n_in), w0)]
        if w1.any():
            self.taps.append((_mirror(i0 + 1, n_in), w1))


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as an equal slice when evenly spaced and increasing (a view instead of a gather)."""
    step = int(index[1] - index[0]) if len(index) > 1 else 1
    if step > 0 and (np.diff(index) == step).all():
        return slice(int(index[0]), int(index[-1]) + 1, step)
    return index


def _rows(src: np.ndarray, index: slice | np.ndarray, offset: int = 0) -> np.ndarray:
    """``src[index + offset]`` along axis 0: a view for a slice, a gather otherwise."""
    if isinstance(index, slice):
        return src[index.start + offset : index.stop + offset : index.step]
    return np.take(src, index + offset, axis=0)


def _correlate(src: np.ndarray, index: slice | np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``ndimage.correlate1d(src, kernel, axis=0)`` at rows ``index`` only, rounded as scipy does.

    Rows ``index ± radius`` must exist in ``src``. scipy's symmetric branch computes
    ``x[i]·k[0]``, then adds ``(x[i-j] + x[i+j])·k[j]`` for j = radius … 1.
    """
    r = len(kernel) // 2
    out = np.multiply(_rows(src, index), kernel[r])
    pair = np.empty_like(out)
    for j in range(r, 0, -1):
        np.add(_rows(src, index, -j), _rows(src, index, j), out=pair)
        pair *= kernel[r + j]
        out += pair
    return out


def _filtered_taps(src: np.ndarray, axis: _Axis, indices: list[np.ndarray]) -> list[np.ndarray]:
    """The axis's Gaussian along axis 0 of ``src`` at each of ``indices`` (rows of ``src``).

    Filters every inner row of ``src`` once (then picks the taps' rows) or only the taps' rows,
    whichever moves fewer rows: a kernel of radius r costs 1 + 3r row operations per filtered row
    and, at unevenly spaced taps, 2r + 1 row gathers more.
    """
    slices = [_as_slice(index) for index in indices]
    if axis.kernel is None:
        return [_rows(src, index) for index in slices]
    r = axis.radius
    inner = src.shape[0] - 2 * r
    gathers = [not isinstance(index, slice) for index in slices]
    dense_cost = inner * (1 + 3 * r) + sum(len(i) for i, g in zip(indices, gathers, strict=True) if g)
    sparse_cost = sum(len(i) * (1 + 3 * r + (2 * r + 1) * g) for i, g in zip(indices, gathers, strict=True))
    if dense_cost <= sparse_cost:
        every = _correlate(src, slice(r, r + inner, 1), axis.kernel)
        return [_rows(every, index, -r) for index in slices]
    return [_correlate(src, index, axis.kernel) for index in slices]


def _transpose(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = src.transpose(1, 0, 2)`` for (a, b, 3) float64; cv2 is several times faster."""
    if cv2.transpose(src, dst=dst) is not dst:  # cv2 reallocates a dst it cannot write into
        dst[...] = src.transpose(1, 0, 2)


def _resize_exact(img: np.ndarray, size: int, ay: _Axis, ax: _Axis, lo: float, hi: float) -> np.ndarray:
    """skimage's resize of uint8/float64 ``img`` (H, W, ≥3) to (size, size), channels 0–2 only.

    Per strip of output rows: the image rows the strip reads (mirrored at the edges) as float64,
    the row Gaussian at the row taps, a transpose so columns lie along axis 0 (mirror-padded by the
    column radius), the column Gaussian at the column taps, then ``value · w_row · w_col`` summed in
    scipy's tap order; finally the clip to the input's range ``[lo, hi]``.
    """
    h, w = img.shape[:2]
    rx = ax.radius
    out = np.empty((size, size, 3))
    step = max(1, _STRIP // (3 * w))
    for a in range(0, size, step):
        b = min(a + step, size)
        m = b - a
        taps = [(index[a:b], weight[a:b]) for index, weight in ay.taps]
        first = min(int(index.min()) for index, _ in taps) - ay.radius
        last = max(int(index.max()) for index, _ in taps) + ay.radius
        if first >= 0 and last < h:
            band = img[first : last + 1, :, :3]
        else:
            band = np.take(img, _mirror(np.arange(first, last + 1), h), axis=0)[..., :3]
        band = np.ascontiguousarray(_to_float(band)).reshape(-1, 3 * w)
        acc = None
        for rows, (_, wy) in zip(_filtered_taps(band, ay, [i - first for i, _ in taps]), taps, strict=True):
            cols = np.empty((w + 2 * rx, m, 3))
            _transpose(rows.reshape(m, w, 3), cols[rx : rx + w])
            for j in range(1, rx + 1):
                cols[rx - j] = cols[rx + j]
                cols[rx + w - 1 + j] = cols[rx + w - 1 - j]
            cols = cols.reshape(w + 2 * rx, 3 * m)
            wy3 = np.repeat(wy, 3)
            values = _filtered_taps(cols, ax, [i + rx for i, _ in ax.taps])
            for value, (_, wx) in zip(values, ax.taps, strict=True):
                term = np.multiply(value, wy3)
                term *= wx[:, None]
                if acc is None:
                    acc = term
                else:
                    acc += term
        _transpose(acc.reshape(size, m, 3), out[a:b])
    np.clip(out, lo, hi, out=out)
    return out


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
