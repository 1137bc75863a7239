"""The fast official resize (xportrait_cli.image) against skimage itself, on real frames.

``resize_official``/``landmark_input`` promise skimage's values to the last bit; these tests hold
them to it on every video of ``../shared/media`` (and on the same frames squashed to 640×480 and
with an alpha channel), at the pipeline's sizes and at odd ones, and check that the inputs the fast
path does not take still give skimage's result.
"""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
from skimage import img_as_ubyte
from skimage.transform import resize

from xportrait_cli import image
from xportrait_cli.image import landmark_input, resize_official, unit_to_uint8

#: target sizes: the model sizes, the landmark size, and odd ones (carphone 176×144 is upscaled)
SIZES = (512, 256, 64, 333, 97)


def _frames(path, count: int = 3) -> list[np.ndarray]:
    """``count`` RGB frames spread over the video (first, middle, last), decoded with PyAV."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return [frames[i] for i in np.linspace(0, len(frames) - 1, count).astype(int)]


@pytest.fixture(scope="module")
def real_frames(media) -> list[tuple[str, np.ndarray]]:
    videos = sorted(media.glob("*.mp4"))
    assert videos, f"no videos in {media}"
    return [(f"{v.name}[{k}]", f) for v in videos for k, f in enumerate(_frames(v))]


def _official(img: np.ndarray, size: int) -> np.ndarray:
    return resize(img, (size, size))[..., :3]


def _assert_same(img: np.ndarray, size: int, label: str) -> None:
    want, got = _official(img, size), resize_official(img, size)
    assert got.shape == want.shape == (size, size, 3) and got.dtype == want.dtype == np.float64, label
    diff = float(np.abs(got - want).max())
    assert diff <= 1e-9, f"{label} -> {size}: max abs diff {diff}"
    assert np.array_equal(got, want), f"{label} -> {size}: not bit-identical (max abs diff {diff})"
    np.testing.assert_array_equal(unit_to_uint8(got), img_as_ubyte(np.clip(want, 0.0, 1.0)), err_msg=label)


def test_fast_path_is_on_here():
    """The once-per-process self-check passes on this installation (else everything is skimage)."""
    assert image._fast_path_agrees()


def test_resize_matches_skimage_on_real_frames(real_frames, monkeypatch):
    image._fast_path_agrees()  # its own calls are not counted below
    calls = []
    fast = image._resize_exact
    monkeypatch.setattr(
        image, "_resize_exact", lambda img, size, *a: calls.append(size) or fast(img, size, *a)
    )
    for label, frame in real_frames:
        for size in SIZES:
            _assert_same(frame, size, label)
    # every resize but 512→512 (the identity, a plain conversion) took the fast path, upscaling too
    assert len(calls) == len(real_frames) * len(SIZES) - sum(
        f.shape[:2] == (512, 512) for _, f in real_frames
    )


def test_resize_matches_skimage_on_640x480_and_rgba(real_frames):
    """Mixed scaling (640→512 down, 480→512 up), alpha widening the clip range, strided input."""
    rng = np.random.default_rng(0)
    for label, frame in real_frames[::3]:
        vga = cv2.resize(frame, (640, 480), interpolation=cv2.INTER_AREA)
        rgba = np.dstack([vga, rng.integers(0, 256, vga.shape[:2], dtype=np.uint8)])
        for size in (512, 256, 64):
            _assert_same(vga, size, f"{label} 640x480")
            _assert_same(rgba, size, f"{label} 640x480 RGBA")
            _assert_same(vga[1::2, ::3], size, f"{label} 640x480 strided")


def test_landmark_input_matches_skimage_on_real_frames(real_frames):
    for label, frame in real_frames:
        vga = cv2.resize(frame, (640, 480), interpolation=cv2.INTER_AREA)
        for img in (frame, vga, vga / 255.0):
            want = img_as_ubyte(resize(img[..., :3], (256, 256)))
            np.testing.assert_array_equal(
                landmark_input(img), want, err_msg=f"{label} {img.shape} {img.dtype}"
            )


def test_exact_half_ties_round_like_skimage():
    """Flat areas and a factor of 2 put values exactly on k + 0.5 grey levels: a 1-ulp difference
    in the float result would round them the other way."""
    img = np.zeros((512, 512, 3), np.uint8)
    img[:, ::2] = 69
    img[:, 1::2] = 70
    img[200:, :, 1] = 255
    for size in (256, 128):
        _assert_same(img, size, "ties")
    np.testing.assert_array_equal(landmark_input(img), img_as_ubyte(resize(img, (256, 256))))


def test_float64_input_and_identity():
    rng = np.random.default_rng(1)
    img = rng.random((300, 400, 3))
    for size in (512, 256, 64):
        _assert_same(img, size, "float64")
    same = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    out = resize_official(same, 64)
    assert np.array_equal(out, _official(same, 64)) and out.flags.c_contiguous
    as_float = same[..., :3] / 255.0
    assert not np.shares_memory(resize_official(as_float, 64), as_float)  # a new array, as skimage


_rng = np.random.default_rng(2)


@pytest.mark.parametrize(
    ("img", "size"),
    [
        (_rng.random((60, 80, 3), dtype=np.float32), 32),  # skimage keeps float32 arithmetic
        (_rng.integers(0, 256, (60, 80, 2), dtype=np.uint8), 32),  # < 3 channels
        (_rng.integers(0, 256, (60, 80), dtype=np.uint8), 32),  # grayscale (H, W)
        (_rng.integers(0, 256, (60, 1, 3), dtype=np.uint8), 32),  # 1 pixel wide
        (_rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), 1),  # Gaussian radius ≥ image size
        (np.where(np.eye(40, 50, dtype=bool)[..., None], np.nan, 0.5).repeat(3, axis=2), 32),  # NaN
    ],
    ids=["float32", "2-channel", "gray", "1-pixel", "long-kernel", "nan"],
)
def test_fallback_is_skimage(img, size, monkeypatch):
    def no_fast_path(*args):
        raise AssertionError("fast path taken")

    image._fast_path_agrees()  # computed (and cached) before the fast path is replaced
    monkeypatch.setattr(image, "_resize_exact", no_fast_path)
    np.testing.assert_array_equal(resize_official(img, size), _official(img, size))
