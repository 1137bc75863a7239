"""Golden preprocessing vectors (../shared/golden/preprocess.npz/json): patches, best frame, affine,
warp and resize, against the official X-Portrait functions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xportrait_cli.face.alignment import (
    alignment_affine,
    best_frame_l1,
    landmark_box_corners,
    warp_frame,
)
from xportrait_cli.face.patches import local_hint_np, local_hints, patch_boxes, patch_centres
from xportrait_cli.image import landmark_input, resize_official


@pytest.fixture(scope="module")
def pre(golden):
    return np.load(golden / "preprocess.npz"), json.loads((golden / "preprocess.json").read_text())


@pytest.mark.parametrize("case", ["normal", "clipped"])
def test_patch_centres_boxes_and_hint(pre, case):
    z, meta = pre
    lmk = z[f"local/{case}/landmarks256"]
    want = meta["local"][case]
    np.testing.assert_allclose(
        [np.mean(lmk[s], axis=0) for s in (slice(43, 48), slice(37, 42), slice(49, 68))],
        want["raw_means_256"],
        rtol=1e-6,
    )
    assert patch_centres(lmk, 512).tolist() == want["centres_xy_512"]
    boxes = patch_boxes(lmk, 512)
    assert boxes.tolist() == want["boxes_x0y0x1y1_512"]
    frame = z["local/frame_u8"]
    hint = local_hint_np(frame, boxes)
    np.testing.assert_array_equal(hint, z[f"local/{case}/hint"])
    batched = local_hints(frame[None], boxes[None])[0].numpy()
    assert np.abs(batched - z[f"local/{case}/hint"]).max() <= 1e-6


def test_patch_size_scales_with_output_size(pre):
    z, _ = pre
    lmk = z["local/normal/landmarks256"]
    for size in (64, 128, 256, 512, 768):
        b = patch_boxes(lmk, size)
        assert (b[:, 2] - b[:, 0] == 2 * (size // 8)).all()
        assert (b >= 0).all() and (b <= size).all()
    # the clipped case still fits inside every frame
    for size in (64, 512):
        b = patch_boxes(z["local/clipped/landmarks256"], size)
        assert (b >= 0).all() and (b <= size).all()


def test_best_frame_and_affine(pre):
    z, meta = pre
    src, drv = z["align/src_landmarks256"], z["align/drv_landmarks256"]
    best, l1 = best_frame_l1(src, drv)
    assert best == meta["align"]["best_frame"] == 3
    np.testing.assert_allclose(l1, meta["align"]["l1_diffs"], rtol=1e-5)
    np.testing.assert_allclose(landmark_box_corners(src), meta["align"]["src_points_256"], rtol=1e-6)
    np.testing.assert_allclose(landmark_box_corners(drv[best]), meta["align"]["dst_points_256"], rtol=1e-6)
    np.testing.assert_allclose(alignment_affine(src, drv[best], 256), z["align/affine256"], atol=1e-12)
    np.testing.assert_allclose(alignment_affine(src, drv[best], 512), z["align/affine512"], atol=1e-12)
    # invalid frames (no face) are left out of the search
    best2, _ = best_frame_l1(src, drv, valid=[True, True, True, False, True])
    assert best2 == 4


def test_warp(pre):
    z, _ = pre
    frame = z["align/driving_frame_u8"]
    f512 = resize_official(frame, 512)
    assert np.abs(f512 - frame / 255.0).max() < 1e-12
    w = warp_frame(f512, z["align/affine512"], 512)
    assert np.abs(w - z["align/warped512"]).max() < 1e-6
    w256 = warp_frame(resize_official(frame, 256), z["align/affine256"], 256)
    assert np.abs(w256 - z["align/warped256"]).max() < 1e-6
    # the uint8 path of the store: within half a grey level of the official float warp
    wu8 = warp_frame(frame, z["align/affine512"], 512)
    assert wu8.dtype == np.uint8
    assert np.abs(wu8 / 255.0 - z["align/warped512"]).max() <= 0.5 / 255 + 1e-6


def test_resize(pre):
    z, _ = pre
    rgba = z["resize/input_rgba_u8"]
    out = resize_official(rgba, 512)
    assert out.shape == (512, 512, 3)
    assert np.abs(out - z["resize/out512"]).max() < 1e-6
    u8 = landmark_input(rgba)
    assert np.abs(u8.astype(int) - z["resize/out256_u8"]).max() <= 1
