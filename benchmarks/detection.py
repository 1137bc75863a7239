"""Offline landmarks (dlib): per-clip face detection rates on the shared media and made variants.

For each clip of ``../shared/media`` (every ``--stride``-th frame, at most ``--frames``) and each
variant made from its frames in memory, prints the share of frames where a face is found by

- ``official``: HOG + 68 points on the squashed 256² copy only (what the official code sees);
- ``+own aspect``: then the frame at its own aspect (:meth:`DlibDetector.detect_missed`, no CNN);
- ``+cnn``: then dlib's CNN detector (``mmod_human_face_detector.dat``);
- ``+track``: then the predictor in the previous frame's box (what ``prepare_driving`` uses);

and the seconds per frame of the full search. Variants: ``original``; ``pad 9:16`` (edge-padded
above and below to a 9:16 portrait frame, as a phone clip); ``scale 0.5``, ``scale 0.3`` (shrunk, centred
on black at the original size: a small face); ``rotate 20``, ``rotate 30`` (in-plane, edges replicated);
``darken`` (×0.35 brightness, gamma 1.5).

Usage: ``python benchmarks/detection.py [--frames 60] [--stride 2]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

from xportrait_cli.face.landmarks import DlibDetector, find_landmarks
from xportrait_cli.image import landmark_input
from xportrait_cli.video.reader import VideoReader, select_frames

SHARED = Path(os.environ.get("XPORTRAIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CLIPS = ("xportrait_driving.mp4", "talking_aac.mp4", "carphone.mp4")


def pad_9_16(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    extra = max(0, round(w * 16 / 9) - h)
    return cv2.copyMakeBorder(frame, extra // 3, extra - extra // 3, 0, 0, cv2.BORDER_REPLICATE)


def scale(frame: np.ndarray, k: float) -> np.ndarray:
    h, w = frame.shape[:2]
    sw, sh = round(w * k), round(h * k)
    small = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA)
    out = np.zeros_like(frame)
    y, x = (h - sh) // 2, (w - sw) // 2
    out[y : y + sh, x : x + sw] = small
    return out


def rotate(frame: np.ndarray, degrees: float = 20.0) -> np.ndarray:
    h, w = frame.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(frame, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def darken(frame: np.ndarray) -> np.ndarray:
    return np.clip(255 * 0.35 * (frame / 255.0) ** 1.5, 0, 255).astype(np.uint8)


VARIANTS = {
    "original": lambda f: f,
    "pad 9:16": pad_9_16,
    "scale 0.5": lambda f: scale(f, 0.5),
    "scale 0.3": lambda f: scale(f, 0.3),
    "rotate 20": rotate,
    "rotate 30": lambda f: rotate(f, 30.0),
    "darken": darken,
}


def rates(frames: list[np.ndarray], det: DlibDetector) -> tuple[list[float], float]:
    """Shares of frames found by each stage (cumulative) and seconds per frame of the full search."""
    hits = np.zeros((len(frames), 4), dtype=bool)
    near = None
    t0 = time.perf_counter()
    for i, frame in enumerate(frames):
        official = det.detect(landmark_input(frame)) is not None
        lmk, _ = find_landmarks(frame, det, near)
        near = lmk if lmk is not None else near
        hits[i, 3] = lmk is not None
        if official:
            hits[i] = True
        elif hits[i, 3]:
            own = det.detect_missed(frame, None, cnn=False) is not None
            cnn = own or det.detect_missed(frame, None, cnn=True) is not None
            hits[i, 1:3] = own, cnn
    seconds = (time.perf_counter() - t0) / len(frames)
    return [float(v) for v in hits.mean(axis=0)], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--stride", type=int, default=2)
    args = parser.parse_args()
    det = DlibDetector()
    columns = ("official", "+own", "+cnn", "+track", "s/frame")
    print(f"{'clip':24} {'variant':10} {'size':>9} " + " ".join(f"{c:>8}" for c in columns))
    for clip in CLIPS:
        with VideoReader(SHARED / "media" / clip) as reader:
            idx = select_frames(len(reader), 0, args.frames, args.stride)
            frames = list(reader.read(idx))
        for name, make in VARIANTS.items():
            made = [make(f) for f in frames]
            (official, own, cnn, track), sec = rates(made, det)
            size = f"{made[0].shape[1]}x{made[0].shape[0]}"
            shares = " ".join(f"{v:8.1%}" for v in (official, own, cnn, track))
            print(f"{clip:24} {name:10} {size:>9} {shares} {sec:8.2f}", flush=True)


if __name__ == "__main__":
    main()
