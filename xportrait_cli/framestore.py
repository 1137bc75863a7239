"""The prepared driving video on disk: aligned frames, landmarks and patch boxes, read by index.

:func:`prepare_driving` decodes the driving video in batches, finds landmarks, aligns every frame to
the portrait (official X-Portrait preprocessing) and writes the result once into a folder.
:class:`FrameStore` opens that folder without decoding anything and serves any window of frames by
index as the pipeline's hints; memory stays flat in the video's length because the frames are a
numpy memmap. A finished store is what a resumed job reuses instead of decoding again.

Folder layout (``store.json`` is written last, by :func:`os.replace`, and is the completion mark)::

    frames.npy     (n, S, S, 3) uint8   aligned frames, RGB
    landmarks.npy  (n, 68, 2) float32   landmarks in pixels of the aligned S×S frames
    boxes.npy      (n, 3, 4) int32      eye/eye/mouth patch boxes [x0, y0, x1, y1) at S px
    found.npy      (n,) bool            False where no face was found and landmarks were interpolated
    store.json     count, size, fps, audio source, best frame, affine, options, completion

Official behaviour copied (``core/test_xportrait.py``, snapshot ``be4d60b``): frames resized to S×S
with skimage (squashed if not square), landmarks found on the 256×256 ``img_as_ubyte`` copy, the best
frame (−1: closest landmarks by L1 to the portrait's; −2: no alignment), one affine from the two
landmark boxes, ``cv2.warpAffine`` defaults, local patches from landmarks 43–47, 37–41, 49–67.

Deviations, on purpose: landmarks are found once per frame on the unaligned frame and carried
through the (scale + translation) affine for the patches, instead of being found again on the
aligned frame; where the official 256² copy shows no face, a second search runs
(:func:`xportrait_cli.face.landmarks.find_landmarks`: dlib on the frame at its own aspect, its CNN
detector, tracking from the previous frame) and its landmarks are mapped into that copy's pixels;
frames still without a face are filled by interpolation (the official code crashed);
``best_frame = -1`` searches the selected frames only; frames are stored as uint8 after the warp
(≤ ½ grey level from the official float64 hint); the official ``out_frames = -1`` quirk (last frame
dropped) is not reproduced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

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
from xportrait_cli.face.patches import check_size, local_hints, patch_boxes
from xportrait_cli.image import LANDMARK_RES, resize_official, to_uint8
from xportrait_cli.video.reader import VideoReader, select_frames

__all__ = ["FrameStore", "prepare_driving", "STORE_VERSION"]

#: Consecutive frames without a face after which the (slow, ~5 s a frame) second landmark search
#: pauses until the first search finds a face again: a clip without faces fails in minutes, not hours.
SECOND_SEARCH_MISSES = 12

log = logging.getLogger(__name__)

STORE_VERSION = 1
META = "store.json"
_ARRAYS = ("frames", "landmarks", "boxes", "found")
ProgressFn = Callable[[int, int], None]


def _as_indices(indices: Sequence[int] | np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
    if idx.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise IndexError(f"frame index {bad} out of range for a store of {n} frames")
    return idx


class FrameStore:
    """Read side of a prepared driving video (see the module docstring for the folder layout).

    Open with :meth:`open` (reads ``store.json`` and memory-maps the arrays; no decoding). All
    ``indices`` arguments are sequences of ints in ``[0, len(store))``, any order, repeats allowed;
    reading n frames touches only those frames on disk.

    Attributes:
        path: the store folder.
        size: side S of the square frames in pixels.
        fps: exact frame rate of the stored frames, a Fraction: the driving rate divided by the
            stride, so that the motion keeps its real speed and stays in sync with the audio (the
            official script kept the driving rate whatever its ``skip``).
        driving_fps: the driving video's own exact rate.
        audio_source: the driving video path when it has an audio track, else ``None``.
        audio_offset: seconds (a Fraction) into the driving audio where stored frame 0 starts
            (``start / driving_fps``); cut the audio from there to keep it in sync.
        best_frame: the driving frame (index in the original video) used for alignment, or −2.
        affine: (2, 3) float64, driving → portrait pixels at S px (identity for −2).
        source_indices: (n,) int64, the original video frame of each stored frame.
        meta: the parsed ``store.json``.
    """

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self._frames = np.load(path / "frames.npy", mmap_mode="r")
        self._landmarks = np.load(path / "landmarks.npy", mmap_mode="r")
        self._boxes = np.load(path / "boxes.npy", mmap_mode="r")
        self._found = np.load(path / "found.npy")
        self.size = int(meta["size"])
        self.fps = Fraction(int(meta["fps"][0]), int(meta["fps"][1]))
        self.driving_fps = Fraction(int(meta["driving_fps"][0]), int(meta["driving_fps"][1]))
        self.audio_source = Path(meta["audio_source"]) if meta.get("audio_source") else None
        self.audio_offset = Fraction(int(meta["source_indices"][0])) / self.driving_fps
        self.best_frame = int(meta["best_frame"])
        self.affine = np.asarray(meta["affine"], dtype=np.float64)
        self.source_indices = np.asarray(meta["source_indices"], dtype=np.int64)
        n = int(meta["count"])
        if self._frames.shape != (n, self.size, self.size, 3) or self._landmarks.shape != (n, 68, 2):
            raise InputError(f"frame store {path} is inconsistent", "delete the folder and prepare again")

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FrameStore:
        """Open a finished store folder (cheap: JSON + memory maps). Raises
        :class:`~xportrait_cli.errors.InputError` if the folder holds no complete store."""
        p = Path(path)
        meta_path = p / META
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(
                f"no complete frame store in {p}", "prepare the driving video again (the store is rebuilt)"
            ) from exc
        if not meta.get("complete") or meta.get("version") != STORE_VERSION:
            raise InputError(f"frame store in {p} is incomplete or of another version", "prepare it again")
        return cls(p, meta)

    def __len__(self) -> int:
        return int(self._frames.shape[0])

    def __repr__(self) -> str:
        return f"FrameStore({str(self.path)!r}, n={len(self)}, size={self.size}, fps={self.fps})"

    @property
    def found(self) -> np.ndarray:
        """(n,) bool: True where a face was detected, False where landmarks were interpolated."""
        return self._found.copy()

    @property
    def num_filled(self) -> int:
        """How many frames had no face and got interpolated landmarks."""
        return int((~self._found).sum())

    def frames_u8(self, indices: Sequence[int]) -> np.ndarray:
        """Aligned frames: (n, S, S, 3) uint8 RGB (a copy, not a view of the memmap)."""
        idx = _as_indices(indices, len(self))
        return np.asarray(self._frames[idx])

    def global_hints(self, indices: Sequence[int]) -> torch.Tensor:
        """Global motion hints: (n, 3, S, S) float32 in [−1, 1], ``frame / 255 · 2 − 1``, RGB."""
        frames = torch.from_numpy(self.frames_u8(indices)).permute(0, 3, 1, 2)
        return (frames.float() / 255 * 2 - 1).contiguous()

    def local_hints(self, indices: Sequence[int]) -> torch.Tensor:
        """Local motion hints: (n, 3, S, S) float32 in [−1, 1]; −1 except the eye/eye/mouth patches,
        which hold the global hint's pixels (official ``extract_local_feature_from_single_img``)."""
        idx = _as_indices(indices, len(self))
        return local_hints(np.asarray(self._frames[idx]), np.asarray(self._boxes[idx]))

    def landmarks(self, indices: Sequence[int]) -> np.ndarray:
        """(n, 68, 2) float32 (x, y) landmarks in pixels of the aligned S×S frames, iBUG order."""
        idx = _as_indices(indices, len(self))
        return np.asarray(self._landmarks[idx], dtype=np.float32)

    def boxes(self, indices: Sequence[int]) -> np.ndarray:
        """(n, 3, 4) int32 patch boxes ``[x0, y0, x1, y1)`` at S px: left eye, right eye, mouth."""
        idx = _as_indices(indices, len(self))
        return np.asarray(self._boxes[idx])


@dataclass
class _Options:
    driving: str
    driving_size_bytes: int
    driving_mtime_ns: int
    size: int
    best_frame: int
    start: int
    num_frames: int
    stride: int
    detector: str
    portrait_landmarks: list | None


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


def _reusable(work_dir: Path, key: dict) -> FrameStore | None:
    try:
        store = FrameStore.open(work_dir)
    except InputError:
        return None
    return store if store.meta.get("key") == key else None


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
) -> FrameStore:
    """Prepare a driving video into a :class:`FrameStore` in ``work_dir`` (created if needed).

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

    Returns the opened store. When ``work_dir`` already holds a complete store prepared from the
    same file (path, size, mtime) with the same options, detector and portrait landmarks, it is
    returned without decoding. Memory: one batch of decoded frames plus O(n) landmarks; the frames
    go straight to a memmap. Files are written under ``*.incomplete`` names, renamed, and
    ``store.json`` is written last.

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
    reader = VideoReader(driving_path)
    info = reader.info
    st = info.path.stat()
    if best_frame != NO_ALIGNMENT:
        if portrait_landmarks is None:
            raise ValueError("portrait_landmarks are required unless best_frame == -2")
        portrait_landmarks = np.asarray(portrait_landmarks, dtype=np.float32)
        if portrait_landmarks.shape != (68, 2):
            raise ValueError(f"portrait_landmarks must have shape (68, 2), got {portrait_landmarks.shape}")
    if best_frame < NO_ALIGNMENT or best_frame >= info.num_frames:
        raise ValueError(f"best_frame {best_frame} out of range for {info.path} ({info.num_frames} frames)")
    key = _Options(
        driving=str(info.path.resolve()),
        driving_size_bytes=st.st_size,
        driving_mtime_ns=st.st_mtime_ns,
        size=size,
        best_frame=best_frame,
        start=start,
        num_frames=num_frames,
        stride=stride,
        detector=detector.name,
        portrait_landmarks=None if portrait_landmarks is None else np.round(portrait_landmarks, 4).tolist(),
    ).__dict__
    reused = _reusable(work, key)
    if reused is not None:
        log.info("reusing the prepared driving frames in %s (%d frames)", work, len(reused))
        return reused

    indices = select_frames(info.num_frames, start, num_frames, stride)
    n = len(indices)
    (work / META).unlink(missing_ok=True)  # the old store, if any, is no longer complete
    tmp = {name: work / f"{name}.incomplete.npy" for name in _ARRAYS}
    frames = _FrameFile(tmp["frames"], n, size)
    raw = np.zeros((n, 68, 2), dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    total = 2 * n
    try:
        # 1. decode in batches -> official resize to S (uint8) into the memmap; landmarks at 256 px
        done, second, near, misses = 0, 0, None, 0
        for chunk, batch in reader.iter_batches(indices, batch_size):
            for j, frame in enumerate(batch):
                i = done + j
                frames[i] = (
                    frame if frame.shape[:2] == (size, size) else to_uint8(resize_official(frame, size))
                )
                lmk, again = find_landmarks(frame, detector, near, second=misses < SECOND_SEARCH_MISSES)
                misses = 0 if lmk is not None else misses + 1
                if lmk is not None:
                    raw[i], found[i], near = lmk, True, lmk
                    second += again
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
        num_found = int(found.sum())
        if second:
            log.info("face found by the second search in %d of %d driving frames", second, n)
        if num_found == 0:
            raise NoFaceError(
                f"no face found in any of the {n} selected frames of {info.path} "
                f"(landmarks: {detector.name})",
                "use a driving video of a clearly visible, roughly frontal face",
            )
        if num_found < n:
            log.warning(
                "no face in %d of %d driving frames; their landmarks were interpolated from neighbours",
                n - num_found,
                n,
            )
        lmk256 = fill_missing(raw, found)

        # 2. best frame and the one affine (official), at 256 px and at S px
        if best_frame == NO_ALIGNMENT:
            affine256, affine, best_abs = identity_affine(), identity_affine(), NO_ALIGNMENT
        else:
            if best_frame == BEST_FRAME_AUTO:
                pos, _ = best_frame_l1(portrait_landmarks, lmk256, found)
                best_abs, best_lmk = indices[pos], lmk256[pos]
            elif best_frame in indices:
                best_abs, best_lmk = best_frame, lmk256[indices.index(best_frame)]
            else:
                best_abs = best_frame
                best_lmk, _ = find_landmarks(reader.read([best_frame])[0], detector)
                if best_lmk is None:
                    raise NoFaceError(
                        f"no face in driving frame {best_frame} of {info.path}, chosen as the best frame",
                        "choose another --best-frame, or -1 to pick one automatically",
                    )
            log.info("best frame: %d", best_abs)
            affine256 = alignment_affine(portrait_landmarks, best_lmk, LANDMARK_RES)
            affine = alignment_affine(portrait_landmarks, best_lmk, size)

        # 3. warp every frame in place; landmarks follow the affine; patch boxes from them
        aligned256 = transform_points(lmk256, affine256).astype(np.float32)
        boxes = np.stack([patch_boxes(p, size) for p in aligned256]).astype(np.int32)
        if best_frame != NO_ALIGNMENT:
            for i in range(n):
                frames[i] = warp_frame(frames[i], affine, size)
                if on_progress is not None and ((i + 1) % batch_size == 0 or i + 1 == n):
                    on_progress(n + i + 1, total)
        elif on_progress is not None:
            on_progress(total, total)
        frames.close()
        np.save(tmp["landmarks"], (aligned256 * np.float32(size / LANDMARK_RES)).astype(np.float32))
        np.save(tmp["boxes"], boxes)
        np.save(tmp["found"], found)
        for name, p in tmp.items():
            os.replace(p, work / f"{name}.npy")
        meta = {
            "version": STORE_VERSION,
            "complete": True,
            "count": n,
            "size": size,
            "fps": [(info.fps / stride).numerator, (info.fps / stride).denominator],
            "driving_fps": [info.fps.numerator, info.fps.denominator],
            "audio_source": str(info.path.resolve()) if info.has_audio else None,
            "driving": str(info.path.resolve()),
            "source_indices": list(map(int, indices)),
            "best_frame": int(best_abs),
            "affine": np.asarray(affine).tolist(),
            "affine256": np.asarray(affine256).tolist(),
            "detector": detector.name,
            "num_found": num_found,
            "num_filled": n - num_found,
            "key": key,
        }
        tmp_meta = work / f"{META}.incomplete"
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, work / META)
    except BaseException:
        frames.close()
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    finally:
        reader.close()
    log.info("prepared %d driving frames at %dx%d in %s (%d filled)", n, size, size, work, n - num_found)
    return FrameStore.open(work)


def clear_store(work_dir: str | os.PathLike[str]) -> None:
    """Delete a store's files from ``work_dir`` (leaves other files and the folder)."""
    work = Path(work_dir)
    for name in (*(f"{a}.npy" for a in _ARRAYS), *(f"{a}.incomplete.npy" for a in _ARRAYS), META):
        p = work / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
