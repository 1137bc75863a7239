"""Cropping a video around its face with one steady box for the whole clip.

One box for the whole clip, so the crop does not jitter. Landmarks are found on at most
``detect_frames`` frames spread evenly over the clip (default 32; all frames when the clip is
shorter): the chosen face is picked on the first sampled frame that shows the most faces and
followed to the nearest face in the other sampled frames. Its per-frame centres and sizes are
smoothed by a running median over 5 samples; the clip box is centred on the midpoint of the
smoothed centres' range, sized ``scale ×`` the median face size, and enlarged only if a face
(with a 20 % margin) would otherwise leave it. Then every frame is decoded a batch at a time
(:class:`~xportrait_cli.video.reader.VideoReader`), cropped (:func:`~xportrait_cli.face.crop.crop_frame`)
and streamed into the atomic H.264 writer with the source's exact frame rate and audio; no more than
one batch of frames is in memory. Geometry and options: :mod:`xportrait_cli.face.crop`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xportrait_cli.errors import NoFaceError, UsageError
from xportrait_cli.events import EventSink, FramesWritten, null_sink, stage
from xportrait_cli.face.crop import box_for_face, crop_frame, detector_or_default, prepare_output
from xportrait_cli.face.crop_info import CropInfo, sidecar_path
from xportrait_cli.face.crop_options import CropOptions
from xportrait_cli.face.detect import choose_face, detect_faces, face_geometry
from xportrait_cli.face.landmarks import LandmarkDetector

__all__ = ["crop_video"]

_SMOOTH_WINDOW = 5
_COVER_MARGIN = 0.6  # half-side of the face square that must stay inside the clip box, in face sizes
_BATCH = 16


def _running_median(values: np.ndarray, window: int = _SMOOTH_WINDOW) -> np.ndarray:
    """Running median of (n, d) values over ``window`` samples (shrinking at the ends)."""
    half = window // 2
    n = len(values)
    return np.stack([np.median(values[max(0, i - half) : i + half + 1], axis=0) for i in range(n)])


def _track(per_frame: list[list[np.ndarray]], face: int | None, name: str) -> tuple[list, int, int, int]:
    """Follow one face through the sampled frames.

    Returns (chosen landmarks or ``None`` per sampled frame, most faces in one frame, reference
    sample, face index there). The face is chosen on the first sample with the most faces, then
    each neighbouring sample takes the face nearest to the previous choice (within one face size).
    """
    counts = [len(f) for f in per_frame]
    most = max(counts)
    ref = counts.index(most)
    index = choose_face(per_frame[ref], face, f"{name} (sampled frame with the most faces)")
    chosen: list[np.ndarray | None] = [None] * len(per_frame)
    chosen[ref] = per_frame[ref][index]
    for order in (range(ref + 1, len(per_frame)), range(ref - 1, -1, -1)):
        last_c, last_f = face_geometry(chosen[ref])
        for i in order:
            if not per_frame[i]:
                continue
            geo = [face_geometry(f) for f in per_frame[i]]
            j = min(range(len(geo)), key=lambda k: float(np.linalg.norm(geo[k][0] - last_c)))
            if np.linalg.norm(geo[j][0] - last_c) <= max(last_f, geo[j][1]):
                chosen[i] = per_frame[i][j]
                last_c, last_f = geo[j]
    return chosen, most, ref, index


def _clip_box(chosen: list[np.ndarray], scale: float, vy: float) -> tuple[np.ndarray, np.ndarray]:
    """One box for the clip from the tracked faces (see the module docstring); and the median face box."""
    geo = [face_geometry(c) for c in chosen]
    series = np.array([[c[0], c[1], f] for c, f in geo], dtype=np.float64)
    smooth = _running_median(series)
    centers, sizes = smooth[:, :2], smooth[:, 2]
    mid = (centers.min(axis=0) + centers.max(axis=0)) / 2.0
    side = scale * float(np.median(sizes))
    # enlarge until every face square (half-side _COVER_MARGIN · f) fits: |d − vy·S| + m·f ≤ S/2
    dx = np.abs(centers[:, 0] - mid[0])
    dy = centers[:, 1] - mid[1]
    m = _COVER_MARGIN * sizes
    need = max(
        float(np.max((dx + m) / 0.5)),
        float(np.max((dy + m) / (0.5 + vy))),
        float(np.max((m - dy) / (0.5 - vy))),
    )
    side = max(side, need)
    box = box_for_face(mid, side / scale, scale, vy)
    boxes = np.array([np.concatenate([c.min(axis=0), c.max(axis=0)]) for c in chosen], dtype=np.float64)
    return box, np.median(boxes, axis=0)


def crop_video(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: CropOptions | None = None,
    *,
    detector: LandmarkDetector | None = None,
    events: EventSink = null_sink,
) -> CropInfo:
    """Crop a video around its face with one steady box; write the MP4 and its JSON sidecar.

    Args:
        path: the video (anything decord and PyAV read).
        out_path: the ``.mp4`` to write (H.264, ``size × size``, the source's exact frame rate, its
            audio copied or transcoded to AAC); written atomically by
            :class:`~xportrait_cli.video.writer.VideoWriter`, then the
            :func:`~xportrait_cli.face.crop_info.sidecar_path` JSON.
        options: a :class:`~xportrait_cli.face.crop_options.CropOptions`; ``face`` counts in the reference
            frame (the first sampled frame with the most faces), at most ``detect_frames`` frames,
            spread evenly, are searched for faces.
        detector: a landmark backend (default ``make_detector("auto")``).
        events: receives ``StageStarted/StageProgress/StageFinished`` for ``landmarks`` (sampled
            frames) and ``encode`` (with :class:`~xportrait_cli.events.FramesWritten`).

    Memory: one batch of 16 decoded frames at a time. Returns the
    :class:`~xportrait_cli.face.crop_info.CropInfo`. Raises
    :class:`~xportrait_cli.errors.NoFaceError` when no sampled frame has a face,
    :class:`~xportrait_cli.errors.InputError` for an unreadable video,
    :class:`~xportrait_cli.errors.UsageError` for a non-``.mp4`` output.
    """
    from xportrait_cli.video.reader import VideoReader
    from xportrait_cli.video.writer import VideoWriter

    opts = options or CropOptions()
    src, out = Path(path), Path(out_path)
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"a video crop is written as MP4, not {out.name!r}", "use an .mp4 output")
    prepare_output(src, out)
    det = detector_or_default(detector)
    with VideoReader(src) as reader:
        info = reader.info
        n = len(reader)
        samples = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, opts.detect_frames))})
        # 1. faces on the sampled frames
        per_frame: list[list[np.ndarray]] = []
        with stage(events, "landmarks", total=len(samples)) as progress:
            for _, frames in reader.iter_batches(samples, _BATCH):
                per_frame += [detect_faces(f, det, thorough=False) for f in frames]
                progress(len(per_frame), len(samples))
        if not any(per_frame):
            raise NoFaceError(
                f"no face found in {src} ({len(samples)} frames searched, landmarks: {det.name})",
                "use a video with a clearly visible, roughly frontal face",
            )
        # 2. one box for the clip
        chosen, most, ref, index = _track(per_frame, opts.face, str(src))
        tracked = [c for c in chosen if c is not None]
        box, face_box = _clip_box(tracked, opts.scale, opts.vy)
        # 3. stream every frame through the crop into the writer
        with stage(events, "encode", total=n):
            audio = src if info.has_audio else None
            with VideoWriter(out, info.fps, audio_source=audio) as writer:
                for _, frames in reader.iter_batches(range(n), _BATCH):
                    writer.write(np.stack([crop_frame(f, box, opts.size, opts.pad) for f in frames]))
                    events(FramesWritten(count=writer.frames_written, total=n))
    video = {
        "fps": f"{info.fps.numerator}/{info.fps.denominator}",
        "frames": n,
        "frames_sampled": len(samples),
        "frames_with_face": len(tracked),
        "reference_frame": samples[ref],
        "audio": bool(info.has_audio),
    }
    crop_info = CropInfo(
        "video", (info.width, info.height), opts.size, box, most, index, face_box, opts.scale, opts.vy,
        opts.pad, det.name, input=str(src), output=str(out), video=video,
    )  # fmt: skip
    crop_info.save(sidecar_path(out))
    return crop_info
