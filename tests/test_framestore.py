"""FrameStore: preparing a driving video into a disk-backed store and reading windows by index."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from xportrait_cli.errors import InputError, NoFaceError
from xportrait_cli.face.alignment import warp_frame
from xportrait_cli.face.landmarks import DlibDetector, detect_portrait
from xportrait_cli.face.patches import local_hint_np
from xportrait_cli.image import load_image, resize_official, unit_to_uint8
from xportrait_cli.jobs.fingerprint import file_digest
from xportrait_cli.jobs.framestore import FrameStore
from xportrait_cli.jobs.prepare_driving import prepare_driving
from xportrait_cli.video.reader import VideoReader


class FixedDetector:
    """A real LandmarkDetector that returns fixed landmarks (scaled to the image) — and no face on
    every ``miss_every``-th call, to exercise filling."""

    name = "fixed"

    def __init__(self, landmarks256: np.ndarray, miss_every: int = 0) -> None:
        self.landmarks256 = np.asarray(landmarks256, np.float32)
        self.miss_every = miss_every
        self.calls = 0

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        self.calls += 1
        if self.miss_every and self.calls % self.miss_every == 0:
            return None
        return self.landmarks256 * np.float32(image.shape[1] / 256)


class NoFace:
    name = "none"

    def detect(self, image):
        return None


@pytest.fixture(scope="module")
def golden_landmarks(golden):
    z = np.load(golden / "preprocess.npz")
    return z["align/src_landmarks256"], z["align/drv_landmarks256"]


@pytest.fixture(scope="module")
def long_video(media, tmp_path_factory):
    """1000 frames at 128×128 and 12000/1001 fps: the official driving clip looped, made with PyAV."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    with av.open(str(media / "xportrait_driving.mp4")) as src:
        frames = [f.to_ndarray(format="rgb24", width=128, height=128) for f in src.decode(video=0)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(12000, 1001))
        stream.width = stream.height = 128
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(1000):
            for pkt in stream.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


@pytest.fixture(scope="module")
def long_store(long_video, golden_landmarks, tmp_path_factory):
    src, drv = golden_landmarks
    det = FixedDetector(drv[3], miss_every=97)
    calls = []
    work = tmp_path_factory.mktemp("work")
    store = prepare_driving(
        long_video, src, work, size=64, detector=det, on_progress=lambda d, t: calls.append((d, t))
    )
    return store, det, calls, work


def test_long_store_behaviour(long_store, long_video):
    store, det, calls, work = long_store
    assert len(store) == 1000 and store.size == 64
    assert store.fps == Fraction(12000, 1001) and store.audio_source is None
    assert isinstance(store._frames, np.memmap)  # disk-backed, not loaded
    assert det.calls == 1000
    assert store.num_filled == 1000 // 97 and (~store.found).sum() == store.num_filled
    assert calls[-1] == (2000, 2000) and all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))
    # nothing half-written left, store.json last
    names = sorted(p.name for p in work.iterdir())
    assert names == ["boxes.npy", "found.npy", "frames.npy", "landmarks.npy", "store.json"]
    meta = json.loads((work / "store.json").read_text())
    assert meta["complete"] and meta["count"] == 1000


def test_long_store_windows(long_store):
    store, *_ = long_store
    reopened = FrameStore.open(store.path)
    for window in ([0, 1, 2], list(range(500, 516)), [998, 999, 0, 1], [7, 7]):
        g = reopened.global_hints(window)
        loc = reopened.local_hints(window)
        u8 = reopened.frames_u8(window)
        assert g.shape == loc.shape == (len(window), 3, 64, 64) and g.dtype == loc.dtype == torch.float32
        assert u8.shape == (len(window), 64, 64, 3) and u8.dtype == np.uint8
        assert torch.equal(g, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255 * 2 - 1)
        assert g.min() >= -1 and g.max() <= 1
        boxes = reopened.boxes(window)
        for k in range(len(window)):
            np.testing.assert_array_equal(loc[k].numpy(), local_hint_np(u8[k], boxes[k]))
            mask = np.zeros((64, 64), bool)
            for x0, y0, x1, y1 in boxes[k]:
                assert x1 - x0 == 16 and y1 - y0 == 16  # half size = size // 8
                mask[y0:y1, x0:x1] = True
            assert (loc[k].numpy()[:, ~mask] == -1).all()
        assert reopened.landmarks(window).shape == (len(window), 68, 2)
    with pytest.raises(IndexError):
        reopened.global_hints([1000])
    with pytest.raises(IndexError):
        reopened.landmarks([-1])


def test_reuse_and_rebuild(long_store, long_video, golden_landmarks):
    store, det, _, work = long_store
    src, drv = golden_landmarks
    again = prepare_driving(long_video, src, work, size=64, detector=det)
    assert det.calls == 1000  # reused: no decoding, no detection
    assert len(again) == 1000
    # different options -> rebuilt in place
    small = prepare_driving(
        long_video, src, work, size=64, num_frames=20, stride=3, detector=FixedDetector(drv[3])
    )
    assert len(small) == 20 and small.fps == Fraction(12000, 1001) / 3
    assert list(small.source_indices) == list(range(0, 60, 3))


def test_open_incomplete(tmp_path):
    with pytest.raises(InputError):
        FrameStore.open(tmp_path)


def test_no_face_anywhere(media, tmp_path):
    with pytest.raises(NoFaceError) as err:
        prepare_driving(
            media / "carphone.mp4", np.zeros((68, 2)), tmp_path, size=64, num_frames=3, detector=NoFace()
        )
    assert "carphone.mp4" in err.value.one_line()
    assert not (tmp_path / "store.json").exists()
    assert not list(tmp_path.glob("*.incomplete*"))


@pytest.fixture(scope="module")
def dlib_detector():
    return DlibDetector()


def test_real_driving_official_chain(media, tmp_path, dlib_detector):
    """Real faces, dlib: best frame search, the official resize→warp chain, patches on the face."""
    portrait = detect_portrait(load_image(media / "xportrait_source.png"), dlib_detector)
    store = prepare_driving(
        media / "xportrait_driving.mp4", portrait, tmp_path, size=128, stride=6, detector=dlib_detector
    )
    assert len(store) == 10 and store.best_frame in store.source_indices
    assert store.num_filled == 0
    a = store.affine
    assert abs(a[0, 1]) < 1e-9 and abs(a[1, 0]) < 1e-9 and 0.5 < a[0, 0] < 2 and 0.5 < a[1, 1] < 2
    raw = VideoReader(media / "xportrait_driving.mp4").read(store.source_indices[:3].tolist())
    for k in range(3):
        official = warp_frame(resize_official(raw[k], 128), a, 128)  # float64 chain
        ours = store.frames_u8([k])[0]
        np.testing.assert_array_equal(ours, warp_frame(unit_to_uint8(resize_official(raw[k], 128)), a, 128))
        assert np.abs(ours / 255.0 - official).max() <= 1 / 255 + 1e-9
    # the patches sit on the eyes and mouth of the aligned landmarks
    lmk = store.landmarks(range(len(store)))
    boxes = store.boxes(range(len(store)))
    for frame_lmk, frame_boxes in zip(lmk, boxes, strict=True):
        le, re_, mo = frame_lmk[43:48].mean(0), frame_lmk[37:42].mean(0), frame_lmk[49:68].mean(0)
        for (x0, y0, x1, y1), c in zip(frame_boxes, (le, re_, mo), strict=True):
            assert x0 - 1 <= c[0] <= x1 + 1 and y0 - 1 <= c[1] <= y1 + 1
        assert frame_boxes[2, 1] > frame_boxes[0, 1]  # mouth below the eyes


def test_audio_source_and_offset(media, tmp_path, dlib_detector):
    store = prepare_driving(
        media / "talking_aac.mp4",
        None,
        tmp_path,
        size=64,
        best_frame=-2,
        start=50,
        num_frames=4,
        stride=5,
        detector=dlib_detector,
    )
    assert store.audio_source == (media / "talking_aac.mp4").resolve()
    assert store.fps == Fraction(5) and store.audio_offset == Fraction(2)
    np.testing.assert_array_equal(store.affine, np.eye(2, 3))


def test_store_is_keyed_on_the_driving_content_not_its_path_or_mtime(media, tmp_path, golden_landmarks):
    src, drv = golden_landmarks
    det = FixedDetector(drv[3])
    first, moved = tmp_path / "a.mp4", tmp_path / "moved" / "b.mp4"
    shutil.copyfile(media / "talking_aac.mp4", first)
    options = dict(size=64, num_frames=4, stride=5, detector=det)
    store = prepare_driving(first, src, tmp_path / "work", **options)
    assert det.calls == 4 and store.audio_source == first.resolve()
    moved.parent.mkdir()
    shutil.copyfile(first, moved)  # same content, another path and mtime: reused, audio from the new path
    first.unlink()
    again = prepare_driving(moved, src, tmp_path / "work", **options)
    assert det.calls == 4 and again.audio_source == moved.resolve()
    assert again.meta["key"]["driving_sha256"] == file_digest(moved)
    np.testing.assert_array_equal(again.frames_u8(range(4)), store.frames_u8(range(4)))
    shutil.copyfile(media / "xportrait_driving.mp4", moved)  # new content at the same path: rebuilt
    rebuilt = prepare_driving(moved, src, tmp_path / "work", **options)
    assert det.calls == 8 and rebuilt.audio_source is None
