"""The prepared driving video on disk: aligned frames, landmarks and patch boxes, read by index.

:func:`~xportrait_cli.jobs.prepare_driving.prepare_driving` (the write side) decodes the driving
video in batches, finds landmarks, aligns every frame to the portrait (official X-Portrait
preprocessing) and writes the result once into a folder.
:class:`FrameStore` (this module, the read side) opens that folder without decoding anything and
serves any window of frames by index as the pipeline's hints; memory stays flat in the video's
length because the frames are a numpy memmap. A finished store is what a resumed job reuses
instead of decoding again.

Folder layout (``store.json`` is written last, by :func:`os.replace`, and is the completion mark)::

    frames.npy     (n, S, S, 3) uint8   aligned frames, RGB
    landmarks.npy  (n, 68, 2) float32   landmarks in pixels of the aligned S×S frames
    boxes.npy      (n, 3, 4) int32      eye/eye/mouth patch boxes [x0, y0, x1, y1) at S px
    found.npy      (n,) bool            False where no face was found and landmarks were interpolated
    store.json     count, size, fps, audio source, best frame, affine, key, completion

The ``key`` in ``store.json`` is what the store was prepared from: the driving video's content
(SHA-256, as the job fingerprint counts it), the frame selection, size, best frame, landmark backend
and the portrait's landmarks; a store with the same key is reused as it is.

Official behaviour copied (official ``core/test_xportrait.py``, snapshot ``be4d60b``: the frame loop
and ``adjust_driving_video_to_src_image`` L99-141, ``extract_local_feature_from_single_img``
L33-71): frames resized to S×S
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
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from xportrait_cli.errors import InputError
from xportrait_cli.face.patches import local_hints

__all__ = ["ARRAYS", "META", "STORE_VERSION", "FrameStore"]

STORE_VERSION = 1
#: The completion mark, written last.
META = "store.json"
#: The arrays, each in ``<name>.npy``.
ARRAYS = ("frames", "landmarks", "boxes", "found")


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

    @property
    def filled_warning(self) -> str | None:
        """The warning for frames without a face (``None`` when every frame has one); the job
        reports it once, as a :class:`~xportrait_cli.events.Log` event."""
        if not self.num_filled:
            return None
        return (
            f"no face in {self.num_filled} of {len(self)} driving frames: landmarks "
            "interpolated from their neighbours"
        )

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
