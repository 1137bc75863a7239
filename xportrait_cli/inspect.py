"""``xportrait inspect``: run only the preprocessing stage and show what it found.

:func:`inspect_inputs` finds the portrait's landmarks, prepares the driving video (best frame,
alignment, patches) into a temporary :class:`~xportrait_cli.jobs.framestore.FrameStore`, and returns an
:class:`InspectResult` whose :meth:`~InspectResult.to_json` is the ``--json`` output. With
``output`` it also writes a preview: a PNG (portrait | best aligned frame) or an MP4 (portrait |
every aligned frame), with landmarks, the landmark face box and the eye/mouth patches drawn.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from xportrait_cli.errors import UsageError
from xportrait_cli.events import Log
from xportrait_cli.face.alignment import NO_ALIGNMENT
from xportrait_cli.face.crop_inputs import crop_inputs
from xportrait_cli.face.landmarks import LandmarkDetector, portrait_for_alignment
from xportrait_cli.face.patches import patch_boxes
from xportrait_cli.files import atomic_write
from xportrait_cli.image import LANDMARK_RES, load_image, resize_official, unit_to_uint8
from xportrait_cli.jobs.framestore import FrameStore
from xportrait_cli.jobs.prepare_driving import prepare_driving

log = logging.getLogger(__name__)

PREVIEW_SIZE = 512
_GREEN, _ORANGE, _BLUE, _RED, _MAGENTA = (
    (0, 220, 0),
    (255, 150, 0),
    (60, 120, 255),
    (255, 40, 40),
    (220, 0, 220),
)


@dataclass
class InspectResult:
    """What the preprocessing stage found; coordinates in pixels of the 512×512 frames.

    Attributes:
        portrait_landmarks: (68, 2) float32 at 512 px.
        best_frame: the driving frame used for alignment (original video index), −2 without
            alignment, ``None`` without a driving video.
        affine: (2, 3) float64 driving → portrait at 512 px, ``None`` without a driving video.
        frames: one dict per prepared frame: ``index`` (original video frame), ``face`` (detected),
            ``filled`` (landmarks interpolated), ``landmarks`` (68 × [x, y] at 512 px, aligned).
        preview: the preview file written, if any.
        cropped: the inputs ``--crop`` cropped to the face (``"portrait"``, ``"driving"``).
        warnings: what ``animate`` would warn about (a portrait without a face: no alignment).
    """

    portrait_landmarks: np.ndarray | None
    best_frame: int | None = None
    affine: np.ndarray | None = None
    frames: list[dict] = field(default_factory=list)
    preview: Path | None = None
    cropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The ``--json`` object: ``{"portrait": {"face", "landmarks"}, "best_frame", "affine",
        "frames": [{"index", "face", "filled", "landmarks"}, ...], "cropped": [...],
        "warnings": [...]}``; a portrait without a face has ``"face": false, "landmarks": null``."""
        lmk = self.portrait_landmarks
        return {
            "portrait": {"face": lmk is not None, "landmarks": None if lmk is None else _round(lmk)},
            "best_frame": self.best_frame,
            "affine": None if self.affine is None else np.asarray(self.affine).tolist(),
            "frames": self.frames,
            "cropped": self.cropped,
            "warnings": self.warnings,
        }


def _round(points: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in np.asarray(points)]


def draw_overlay(
    image: np.ndarray, landmarks: np.ndarray | None, boxes: np.ndarray | None, filled: bool = False
):
    """Draw landmarks (green, orange when interpolated), the landmark face box (blue) and the
    patch boxes (red eyes, magenta mouth) on a copy of ``image`` (H, W, 3) uint8 RGB."""
    out = np.ascontiguousarray(image.copy())
    if landmarks is not None:
        pts = np.asarray(landmarks)
        x0, y0 = np.floor(pts.min(0)).astype(int)
        x1, y1 = np.ceil(pts.max(0)).astype(int)
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), _BLUE, 1)
        for x, y in pts:
            cv2.circle(out, (round(float(x)), round(float(y))), 2, _ORANGE if filled else _GREEN, -1)
    if boxes is not None:
        for k, (bx0, by0, bx1, by1) in enumerate(np.asarray(boxes)):
            cv2.rectangle(
                out, (int(bx0), int(by0)), (int(bx1) - 1, int(by1) - 1), _MAGENTA if k == 2 else _RED, 1
            )
    return out


def inspect_inputs(
    portrait: str | os.PathLike[str],
    driving: str | os.PathLike[str] | None = None,
    *,
    detector: LandmarkDetector,
    best_frame: int = -1,
    start: int = 0,
    num_frames: int = 0,
    stride: int = 1,
    output: str | os.PathLike[str] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    crop: str = "off",
) -> InspectResult:
    """Run the preprocessing stage only (see the module docstring).

    ``crop`` (``"auto"``, ``"on"``, ``"off"``) crops the inputs to the face as ``animate --crop``
    does (:func:`xportrait_cli.face.crop_inputs.crop_inputs`); the preview shows the crops. A portrait
    without a face is reported as ``animate`` decides: with ``best_frame`` −1 no alignment
    (``best_frame`` −2) and a warning; with an explicit index a NoFaceError naming ``--best-frame -2``.

    ``output`` must end in ``.png`` (portrait and the best aligned frame side by side) or ``.mp4``
    (portrait beside every aligned frame, at the store's frame rate); it needs a driving video for
    ``.mp4``. ``work_dir`` keeps the prepared store there (default: a temporary folder, removed).

    Raises :class:`~xportrait_cli.errors.NoFaceError` (no face in the portrait or in any driving
    frame), :class:`~xportrait_cli.errors.InputError` (unreadable files) and
    :class:`~xportrait_cli.errors.UsageError` (bad output suffix, bad frame options).
    """
    out_path = Path(output) if output is not None else None
    if out_path is not None and out_path.suffix.lower() not in (".png", ".mp4"):
        raise UsageError(f"preview must be a .png or .mp4 file, got {out_path}", "e.g. -o preview.mp4")
    if out_path is not None and out_path.suffix.lower() == ".mp4" and driving is None:
        raise UsageError("an .mp4 preview needs a driving video", "pass DRIVING or use -o preview.png")
    with tempfile.TemporaryDirectory(prefix="xportrait-inspect-") as tmp:
        notes: list[Log] = []
        given = (Path(portrait), None if driving is None else Path(driving))
        *used, _ = crop_inputs(
            *given, Path(tmp), mode=crop, size=PREVIEW_SIZE, detector=detector,
            events=lambda e: notes.append(e) if isinstance(e, Log) else None,
        )  # fmt: skip
        rgb = load_image(used[0])
        lmk256, best_frame, warning = portrait_for_alignment(rgb, detector, best_frame, name=str(portrait))
        k = PREVIEW_SIZE / LANDMARK_RES
        result = InspectResult(portrait_landmarks=None if lmk256 is None else (lmk256 * k).astype(np.float32))
        result.cropped = [n for n, a, b in zip(("portrait", "driving"), given, used, strict=True) if a != b]
        result.warnings = [e.message for e in notes if e.level == "warning"] + ([warning] if warning else [])
        for message in result.warnings:
            log.warning("%s", message)
        portrait_img = unit_to_uint8(resize_official(rgb, PREVIEW_SIZE))
        boxes = None if lmk256 is None else patch_boxes(lmk256, PREVIEW_SIZE)
        portrait_view = draw_overlay(portrait_img, result.portrait_landmarks, boxes)
        if driving is None:
            result.preview = _write_preview(out_path, portrait_view, None)
            return result
        store = prepare_driving(
            used[1],
            lmk256,
            work_dir if work_dir is not None else tmp,
            size=PREVIEW_SIZE,
            best_frame=best_frame,
            start=start,
            num_frames=num_frames,
            stride=stride,
            detector=detector,
            on_progress=on_progress,
        )
        if store.filled_warning:
            log.warning("%s", store.filled_warning)
        result.best_frame, result.affine = store.best_frame, store.affine
        result.frames = _frame_reports(store)
        result.preview = _write_preview(out_path, portrait_view, store)
    return result


def _write_preview(path: Path | None, portrait_view: np.ndarray, store: FrameStore | None) -> Path | None:
    """The preview at ``path`` (none without one): the portrait alone, beside the best aligned frame
    (``.png``) or beside every aligned frame (``.mp4``). Returns ``path``."""
    if path is None:
        return None
    if store is None:
        _write_png(path, portrait_view)
    elif path.suffix.lower() == ".png":
        _write_png(path, np.concatenate([portrait_view, _frame_view(store, _best_position(store))], axis=1))
    else:
        _write_mp4(path, portrait_view, store)
    return path


def _frame_reports(store: FrameStore) -> list[dict]:
    """:attr:`InspectResult.frames` of a prepared store."""
    found, all_lmk = store.found, store.landmarks(range(len(store)))
    return [
        {
            "index": int(src),
            "face": bool(found[i]),
            "filled": not bool(found[i]),
            "landmarks": _round(all_lmk[i]),
        }
        for i, src in enumerate(store.source_indices)
    ]


def _best_position(store: FrameStore) -> int:
    hits = np.flatnonzero(store.source_indices == store.best_frame)
    return int(hits[0]) if store.best_frame != NO_ALIGNMENT and hits.size else 0


def _frame_view(store: FrameStore, i: int) -> np.ndarray:
    return draw_overlay(
        store.frames_u8([i])[0], store.landmarks([i])[0], store.boxes([i])[0], not store.found[i]
    )


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise UsageError(f"cannot write preview {path}", "check that its folder exists and is writable")


def _write_mp4(path: Path, portrait_view: np.ndarray, store: FrameStore) -> None:
    from xportrait_cli.video.writer import VideoWriter

    with VideoWriter(path, store.fps) as writer:
        for i in range(len(store)):
            writer.write(np.concatenate([portrait_view, _frame_view(store, i)], axis=1))
