"""The write side of the frame store: prepare a driving video once into a folder.

:func:`prepare_driving` runs three named phases, the official preprocessing of official
``core/test_xportrait.py`` (frame loop, ``adjust_driving_video_to_src_image`` L99-141,
``extract_local_feature_from_single_img`` L33-71) with the deviations listed in
:mod:`xportrait_cli.jobs.framestore`:

1. :func:`_detect_frames`: decode in batches, resize each frame to S×S (official skimage resize)
   into ``frames.npy`` and find its landmarks on the official 256² copy (with the second search);
2. :func:`_alignment`: the best frame and the one affine, driving → portrait, at 256 px and at S px;
3. :func:`_write_store`: warp every frame in place, carry the landmarks through the affine, patch
   boxes from them, then the arrays and ``store.json`` (last: the completion mark).

Every file is written through :func:`xportrait_cli.files.atomic_write`. The folder layout and the
reuse key: :mod:`xportrait_cli.jobs.framestore`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xportrait_cli.errors import InputError, NoFaceError
from xportrait_cli.face.alignment import (
    BEST_FRAME_AUTO,
    NO_ALIGNMENT,
    alignment_affine,
    best_frame_l1,
    identity_affine,
    transform_points,
    warp_frame,
)
from xportrait_cli.face.landmarks import LandmarkDetector, fill_missing, find_landmarks
from xportrait_cli.face.patches import check_size, patch_boxes
from xportrait_cli.files import atomic_write, write_text_atomic
from xportrait_cli.image import LANDMARK_RES, resize_official, unit_to_uint8
from xportrait_cli.jobs.fingerprint import file_digest
from xportrait_cli.jobs.framestore import META, STORE_VERSION, FrameStore
from xportrait_cli.video.reader import VideoInfo, VideoReader, select_frames

__all__ = ["SECOND_SEARCH_MISSES", "prepare_driving"]

#: Consecutive frames without a face after which the (slow, ~5 s a frame) second landmark search
#: pauses until the first search finds a face again: a clip without faces fails in minutes, not hours.
SECOND_SEARCH_MISSES = 12

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class _StoreKey:
    """What a store was prepared from (``store.json``'s ``key``): equal keys, same store.

    The driving video counts by content (SHA-256), as the job fingerprint counts it, so a store is
    reused exactly when the job would be.
    """

    driving_sha256: str
    size: int
    best_frame: int
    start: int
    num_frames: int
    stride: int
    detector: str
    portrait_landmarks: list | None


@dataclass(frozen=True)
class _Alignment:
    """The official alignment: ``affine256``/``affine`` (2, 3) float64 driving → portrait at 256 px
    and at S px (identity without alignment); ``best_frame`` the original video index used, or −2."""

    affine256: np.ndarray
    affine: np.ndarray
    best_frame: int


class _FrameFile:
    """Write side of ``frames.npy``: an .npy header, then frames written and read back one at a time
    with plain file I/O (not a memmap, so the pages written do not pile up in the resident set)."""

    def __init__(self, path: Path, n: int, size: int) -> None:
        np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3)).flush()
        self.offset = np.load(path, mmap_mode="r").offset
        self.shape = (size, size, 3)
        self.nbytes = size * size * 3
        self._f = open(path, "r+b")  # noqa: SIM115 - closed by close()

    def __setitem__(self, i: int, frame: np.ndarray) -> None:
        self._f.seek(self.offset + i * self.nbytes)
        self._f.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())

    def __getitem__(self, i: int) -> np.ndarray:
        self._f.seek(self.offset + i * self.nbytes)
        return np.frombuffer(self._f.read(self.nbytes), dtype=np.uint8).reshape(self.shape).copy()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def _reusable(work: Path, key: dict, info: VideoInfo) -> FrameStore | None:
    """The finished store in ``work`` prepared with ``key``, or ``None``. A store of the same video
    found under another path is kept, with ``store.json`` pointing at the current path (its audio)."""
    try:
        store = FrameStore.open(work)
    except InputError:
        return None
    if store.meta.get("key") != key:
        return None
    driving = str(info.path.resolve())
    if store.meta.get("driving") != driving:
        audio = driving if info.has_audio else None
        meta = {**store.meta, "driving": driving, "audio_source": audio}
        write_text_atomic(work / META, json.dumps(meta, indent=1))
        store = FrameStore.open(work)
    return store


def _store_key(
    digest: str, portrait_landmarks: np.ndarray | None, detector: LandmarkDetector, **selection: int
) -> dict:
    """The :class:`_StoreKey` as ``store.json`` holds it (landmarks rounded to 1e-4 px)."""
    lmk = None if portrait_landmarks is None else np.round(portrait_landmarks, 4).tolist()
    return asdict(
        _StoreKey(driving_sha256=digest, detector=detector.name, portrait_landmarks=lmk, **selection)
    )


def _check_portrait_landmarks(portrait_landmarks: np.ndarray | None, best_frame: int, info: VideoInfo):
    if best_frame != NO_ALIGNMENT:
        if portrait_landmarks is None:
            raise ValueError("portrait_landmarks are required unless best_frame == -2")
        portrait_landmarks = np.asarray(portrait_landmarks, dtype=np.float32)
        if portrait_landmarks.shape != (68, 2):
            raise ValueError(f"portrait_landmarks must have shape (68, 2), got {portrait_landmarks.shape}")
    if best_frame < NO_ALIGNMENT or best_frame >= info.num_frames:
        raise ValueError(f"best_frame {best_frame} out of range for {info.path} ({info.num_frames} frames)")
    return portrait_landmarks


def prepare_driving(
    driving_path: str | os.PathLike[str],
    portrait_landmarks: np.ndarray | None,
    work_dir: str | os.PathLike[str],
    *,
    size: int = 512,
    best_frame: int = BEST_FRAME_AUTO,
    start: int = 0,
    num_frames: int = 0,
    stride: int = 1,
    detector: LandmarkDetector,
    on_progress: ProgressFn | None = None,
    batch_size: int = 16,
    driving_digest: str | None = None,
) -> FrameStore:
    """Prepare a driving video into a :class:`~xportrait_cli.jobs.framestore.FrameStore` in
    ``work_dir`` (created if needed).

    Args:
        driving_path: the driving video (anything decord/FFmpeg reads).
        portrait_landmarks: (68, 2) landmarks of the portrait at **256 px** scale, as
            :func:`xportrait_cli.face.landmarks.detect_portrait` returns; may be ``None`` only with
            ``best_frame = -2``.
        work_dir: folder that receives the store (its files are replaced; other files are kept).
        size: side S of the output frames, a multiple of 64 (default 512).
        best_frame: index *in the original video* of the frame whose pose matches the portrait;
            −1 picks the selected frame whose landmarks are closest (L1) to the portrait's; −2 skips
            alignment.
        start, num_frames, stride: official ``start_idx``, ``out_frames`` (0 = all) and ``skip``:
            frames ``start, start + stride, …``, at most ``num_frames`` of them.
        detector: a :class:`~xportrait_cli.face.landmarks.LandmarkDetector`.
        on_progress: optional ``on_progress(done, total)`` with ``total = 2·n`` (n frames decoded and
            searched for landmarks, then n frames warped).
        batch_size: frames decoded per decord call.
        driving_digest: the SHA-256 hex digest of the driving video when the caller has it
            (:func:`xportrait_cli.jobs.fingerprint.file_digest`); computed otherwise.

    Returns the opened store. When ``work_dir`` already holds a complete store prepared from a video
    with the same content, the same options, detector and portrait landmarks, it is returned without
    decoding. Frames without a face get interpolated landmarks (:attr:`FrameStore.filled_warning
    <xportrait_cli.jobs.framestore.FrameStore.filled_warning>` says how many; the caller reports it).
    Memory: one batch of decoded frames plus O(n) landmarks; the frames go straight to the file.

    Raises:
        InputError: unreadable/truncated driving video (one line naming the file).
        NoFaceError: no face in any selected frame, or in the explicitly chosen best frame when it
            lies outside the selection.
        UsageError: bad start / num_frames / stride.
        ValueError: bad ``size`` or ``portrait_landmarks`` shape, or a best frame out of range.
    """
    size = check_size(size)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with VideoReader(driving_path) as reader:
        info = reader.info
        portrait_landmarks = _check_portrait_landmarks(portrait_landmarks, best_frame, info)
        selection = dict(size=size, best_frame=best_frame, start=start, num_frames=num_frames, stride=stride)
        key = _store_key(driving_digest or file_digest(info.path), portrait_landmarks, detector, **selection)
        reused = _reusable(work, key, info)
        if reused is not None:
            log.info("reusing the prepared driving frames in %s (%d frames)", work, len(reused))
            return reused
        indices = select_frames(info.num_frames, start, num_frames, stride)
        n = len(indices)
        (work / META).unlink(missing_ok=True)  # the old store, if any, is no longer complete
        progress = on_progress or (lambda done, total: None)
        with atomic_write(work / "frames.npy") as tmp_frames:
            frames = _FrameFile(tmp_frames, n, size)
            try:  # the three phases (module docstring)
                lmk256, found = _detect_frames(reader, indices, frames, detector, batch_size, progress)
                alignment = _alignment(
                    reader, indices, lmk256, found, portrait_landmarks, best_frame, detector, size
                )
                _write_store(work, frames, lmk256, found, alignment, batch_size, progress)
            finally:
                frames.close()
        meta = _store_meta(key, indices, info, stride, size, alignment, found)
        write_text_atomic(work / META, json.dumps(meta, indent=1))
    log.info(
        "prepared %d driving frames at %dx%d in %s (%d filled)", n, size, size, work, n - int(found.sum())
    )
    return FrameStore.open(work)


def _detect_frames(
    reader: VideoReader,
    indices: list[int],
    frames: _FrameFile,
    detector: LandmarkDetector,
    batch_size: int,
    progress: ProgressFn,
) -> tuple[np.ndarray, np.ndarray]:
    """Phase 1: decode ``indices`` in batches, official resize to S (uint8) into ``frames``; landmarks
    at 256 px (:func:`~xportrait_cli.face.landmarks.find_landmarks`, the second search paused after
    :data:`SECOND_SEARCH_MISSES` misses in a row). Returns ((n, 68, 2) float32 landmarks at 256 px,
    gaps filled by interpolation; (n,) bool found). Raises NoFaceError when no frame has a face."""
    n, size = len(indices), frames.shape[0]
    raw = np.zeros((n, 68, 2), dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    done, second, near, misses = 0, 0, None, 0
    for chunk, batch in reader.iter_batches(indices, batch_size):
        for j, frame in enumerate(batch):
            i = done + j
            frames[i] = (
                frame if frame.shape[:2] == (size, size) else unit_to_uint8(resize_official(frame, size))
            )
            lmk, again = find_landmarks(frame, detector, near, second=misses < SECOND_SEARCH_MISSES)
            misses = 0 if lmk is not None else misses + 1
            if lmk is not None:
                raw[i], found[i], near = lmk, True, lmk
                second += again
        done += len(chunk)
        progress(done, 2 * n)
    if second:
        log.info("face found by the second search in %d of %d driving frames", second, n)
    if not found.any():
        raise NoFaceError(
            f"no face found in any of the {n} selected frames of {reader.info.path} "
            f"(landmarks: {detector.name})",
            "use a driving video of a clearly visible, roughly frontal face",
        )
    return fill_missing(raw, found), found


def _alignment(
    reader: VideoReader,
    indices: list[int],
    lmk256: np.ndarray,
    found: np.ndarray,
    portrait_landmarks: np.ndarray | None,
    best_frame: int,
    detector: LandmarkDetector,
    size: int,
) -> _Alignment:
    """Phase 2: the best frame (−1: closest landmarks by L1 among the selected frames; an index
    outside the selection is decoded and searched on its own) and the official affine from the two
    landmark boxes. Raises NoFaceError when an explicitly chosen frame outside the selection has no face."""
    if best_frame == NO_ALIGNMENT:
        return _Alignment(identity_affine(), identity_affine(), NO_ALIGNMENT)
    if best_frame == BEST_FRAME_AUTO:
        pos, _ = best_frame_l1(portrait_landmarks, lmk256, found)
        best, best_lmk = indices[pos], lmk256[pos]
    elif best_frame in indices:
        best, best_lmk = best_frame, lmk256[indices.index(best_frame)]
    else:
        best = best_frame
        best_lmk, _ = find_landmarks(reader.read([best_frame])[0], detector)
        if best_lmk is None:
            raise NoFaceError(
                f"no face in driving frame {best_frame} of {reader.info.path}, chosen as the best frame",
                "choose another --best-frame, or -1 to pick one automatically",
            )
    log.info("best frame: %d", best)
    return _Alignment(
        alignment_affine(portrait_landmarks, best_lmk, LANDMARK_RES),
        alignment_affine(portrait_landmarks, best_lmk, size),
        best,
    )


def _write_store(
    work: Path,
    frames: _FrameFile,
    lmk256: np.ndarray,
    found: np.ndarray,
    alignment: _Alignment,
    batch_size: int,
    progress: ProgressFn,
) -> None:
    """Phase 3: warp every frame in place (``cv2.warpAffine`` defaults, official); the landmarks
    follow the affine, the patch boxes come from them; ``landmarks.npy`` (at S px), ``boxes.npy``
    and ``found.npy`` are written beside the frames."""
    n, size = len(lmk256), frames.shape[0]
    aligned256 = transform_points(lmk256, alignment.affine256).astype(np.float32)
    boxes = np.stack([patch_boxes(p, size) for p in aligned256]).astype(np.int32)
    if alignment.best_frame != NO_ALIGNMENT:
        for i in range(n):
            frames[i] = warp_frame(frames[i], alignment.affine, size)
            if (i + 1) % batch_size == 0 or i + 1 == n:
                progress(n + i + 1, 2 * n)
    else:
        progress(2 * n, 2 * n)
    arrays = {
        "landmarks": (aligned256 * np.float32(size / LANDMARK_RES)).astype(np.float32),
        "boxes": boxes,
        "found": found,
    }
    for name, array in arrays.items():
        with atomic_write(work / f"{name}.npy") as tmp:
            np.save(tmp, array)


def _store_meta(
    key: dict, indices: list[int], info: VideoInfo, stride: int, size: int, alignment: _Alignment, found
) -> dict:
    """``store.json`` (see :mod:`xportrait_cli.jobs.framestore`)."""
    fps, num_found = info.fps / stride, int(found.sum())
    return {
        "version": STORE_VERSION,
        "complete": True,
        "count": len(indices),
        "size": size,
        "fps": [fps.numerator, fps.denominator],
        "driving_fps": [info.fps.numerator, info.fps.denominator],
        "audio_source": str(info.path.resolve()) if info.has_audio else None,
        "driving": str(info.path.resolve()),
        "source_indices": list(map(int, indices)),
        "best_frame": int(alignment.best_frame),
        "affine": np.asarray(alignment.affine).tolist(),
        "affine256": np.asarray(alignment.affine256).tolist(),
        "detector": key["detector"],
        "num_found": num_found,
        "num_filled": len(indices) - num_found,
        "key": key,
    }
