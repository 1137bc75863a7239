"""``xportrait crop``: a square, face-centred crop of a portrait or a video, and the paste back.

Geometry
    The face box is the bounding box of the chosen face's 68 landmarks (brows to chin, jaw to jaw);
    the **face size** ``f`` is its larger side. The crop is the square of side ``round(scale · f)``
    centred on the face box centre moved down by ``vy · side`` (``vy < 0`` moves the box up, so the
    face sits below the middle and the forehead and hair fit in; LivePortrait's ``scale``/``vy_ratio``
    with the same meaning). The box is snapped to whole pixels, may leave the frame (the outside is
    filled by ``pad``: ``"edge"`` replication or ``"black"``), and is resized to ``size × size``
    (``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when enlarging). In the result the face box centre
    is at ``(size / 2, size / 2 − vy · size)`` and the face size is ``size / scale``.

Coordinates
    Pixel-centre convention (pixel ``(i, j)`` is centred on ``x = i, y = j``; OpenCV's). ``box`` is
    ``[x0, y0, x1, y1]`` in original pixels (``x1``, ``y1`` exclusive; ``x1 − x0 == y1 − y0``).
    ``affine`` (2×3) maps original → crop pixels, so ``cv2.warpAffine(original, affine, (size,
    size))`` reproduces the crop up to resampling; ``inverse`` maps crop → original. Both are
    written beside the output as JSON (:func:`sidecar_path`, schema in :meth:`CropInfo.to_json`).

Several faces
    Faces are sorted **left to right** by their box centre and numbered from 0; by default the
    largest is taken, ``face=N`` takes the N-th from the left. The count is reported (``faces``).

Video
    One box for the whole clip, so the crop does not jitter. Landmarks are found on at most
    ``detect_frames`` frames spread evenly over the clip (default 32; all frames when the clip is
    shorter): the chosen face is picked on the first sampled frame that shows the most faces and
    followed to the nearest face in the other sampled frames. Its per-frame centres and sizes are
    smoothed by a running median over 5 samples; the clip box is centred on the midpoint of the
    smoothed centres' range, sized ``scale ×`` the median face size, and enlarged only if a face
    (with a 20 % margin) would otherwise leave it. Then every frame is decoded a batch at a time
    (:class:`~xportrait_cli.video.reader.VideoReader`), cropped and streamed into the atomic
    H.264 writer with the source's exact frame rate and audio; no more than one batch of frames is
    in memory.

Faces are searched on a working copy whose long side is brought to 640 px when it is above 800 or
below 320 px (speed on large frames; small faces for the HOG detector on small ones). All faces are
listed through the backends' own detectors (:func:`detect_faces`); with dlib, images are searched
down to ~40 px faces and weak HOG detections (score < :data:`DLIB_MIN_SCORE`: badges, textures) are
dropped when a stronger one exists.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from xportrait_cli.errors import InputError, NoFaceError, UsageError
from xportrait_cli.events import (
    EventSink,
    FramesWritten,
    StageFinished,
    StageProgress,
    StageStarted,
    null_sink,
)
from xportrait_cli.face.landmarks import LandmarkDetector

__all__ = [
    "DEFAULT_DETECT_FRAMES",
    "DEFAULT_FEATHER",
    "DEFAULT_SCALE",
    "DEFAULT_SIZE",
    "DEFAULT_VY",
    "PAD_MODES",
    "VIDEO_SUFFIXES",
    "CropInfo",
    "CropResult",
    "box_for_face",
    "crop_file",
    "crop_frame",
    "crop_image",
    "crop_inputs",
    "crop_portrait",
    "crop_video",
    "default_output",
    "detect_faces",
    "face_geometry",
    "input_kind",
    "paste_back",
    "sidecar_path",
]

DEFAULT_SIZE = 512
#: Crop side / face size (LivePortrait uses 2.2–2.3).
DEFAULT_SCALE = 2.2
#: Vertical offset of the box centre from the face centre, as a fraction of the crop side (down > 0).
DEFAULT_VY = -0.1
#: Width in crop pixels (at ``size``) of the mask's ramp in :func:`paste_back`.
DEFAULT_FEATHER = 32.0
#: Video frames searched for faces at most (spread evenly over the clip).
DEFAULT_DETECT_FRAMES = 32
PAD_MODES = ("edge", "black")
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp"}
)
#: Working resolution of the face search (long side), used when the frame's is outside the range.
DETECT_SIDE = 640
DETECT_RANGE = (320, 800)
#: dlib HOG detections scoring below this are taken as false positives (real faces score ~0.5–1.6,
#: shirt patches and textures ~0–0.15) unless no detection scores higher.
DLIB_MIN_SCORE = 0.3
_SMOOTH_WINDOW = 5
_COVER_MARGIN = 0.6  # half-side of the face square that must stay inside the clip box, in face sizes
_BATCH = 16

Pad = Literal["edge", "black"]


# -- faces ----------------------------------------------------------------------------------------
def face_geometry(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre ``(x, y)`` (float64, pixels) and size (larger side, pixels) of a landmark bounding box.

    ``landmarks``: (68, 2) (x, y) pixels.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (lo + hi) / 2.0, float((hi - lo).max())


def _detect_scale(height: int, width: int) -> float:
    side = max(height, width)
    lo, hi = DETECT_RANGE
    return 1.0 if lo <= side <= hi else DETECT_SIDE / side


def _all_landmarks(image: np.ndarray, detector: LandmarkDetector, thorough: bool) -> list[np.ndarray]:
    """Every face's landmarks on ``image`` with the backends' own detectors.

    The :class:`LandmarkDetector` protocol returns one face, so the two built-in backends are asked
    for all their faces here (dlib: HOG rectangles at upsample 1 when ``thorough``, else at 0 and
    at 1 only if 0 found none, each through the shape predictor; rectangles scoring below
    :data:`DLIB_MIN_SCORE` are dropped unless none scores above it, then the best one is kept; FAN:
    every face of ``get_landmarks_from_image``). A backend with a ``detect_all``
    method is used as is; any other gives at most its one face. When no upright face is found the
    backend's ``detect`` runs (dlib's rotated retries for tilted heads).
    """
    from xportrait_cli.face.landmarks import DlibDetector, FanDetector

    detect_all = getattr(detector, "detect_all", None)
    if callable(detect_all):
        return [np.asarray(p, dtype=np.float32) for p in detect_all(image)]
    if isinstance(detector, DlibDetector):
        for upsample in (1,) if thorough else (0, 1):
            rects, scores, _ = detector._detector.run(image, upsample, 0.0)
            if len(rects):
                best = max(range(len(rects)), key=lambda i: scores[i])
                keep = [r for r, sc in zip(rects, scores, strict=True) if sc >= DLIB_MIN_SCORE] or [
                    rects[best]
                ]
                return [detector._shape(image, r) for r in keep]
    elif isinstance(detector, FanDetector):
        preds = detector._fa.get_landmarks_from_image(image)
        if preds:
            return [np.asarray(p[:, :2], dtype=np.float32) for p in preds]
    one = detector.detect(image)
    return [] if one is None else [np.asarray(one, dtype=np.float32)]


def detect_faces(image: np.ndarray, detector: LandmarkDetector, *, thorough: bool = True) -> list[np.ndarray]:
    """Landmarks of every face in ``image``, sorted left to right.

    ``image``: (H, W, 3) uint8 RGB. Returns a list of (68, 2) float32 (x, y) arrays in pixels of
    ``image`` (pixel-centre convention), ordered by face box centre x; empty when there is no face.
    The search runs on a copy whose long side is 640 px when ``image``'s is above 800 or below 320.
    ``thorough`` (dlib) searches small faces too (~40 px on that copy, 4× the work) even when a
    large one is found; video frames use ``False`` (small faces only when no large one is found).
    """
    img = np.ascontiguousarray(np.asarray(image)[..., :3], dtype=np.uint8)
    h, w = img.shape[:2]
    k = _detect_scale(h, w)
    if k != 1.0:
        size = (max(1, round(w * k)), max(1, round(h * k)))
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        work = cv2.resize(img, size, interpolation=interp)
        kx, ky = size[0] / w, size[1] / h
    else:
        work, kx, ky = img, 1.0, 1.0
    faces = _all_landmarks(work, detector, thorough)
    scale = np.array([kx, ky], dtype=np.float64)
    faces = [((f.astype(np.float64) + 0.5) / scale - 0.5).astype(np.float32) for f in faces]
    return sorted(faces, key=lambda f: face_geometry(f)[0][0])


def _choose(faces: list[np.ndarray], face: int | None, name: str) -> int:
    """Index of the face to crop: ``face`` (0-based, left to right) or the largest."""
    if face is None:
        return max(range(len(faces)), key=lambda i: face_geometry(faces[i])[1])
    if not 0 <= face < len(faces):
        found = f"{len(faces)} face{'s' if len(faces) != 1 else ''}"
        raise UsageError(
            f"--face {face}: {name} has {found}",
            f"faces are numbered 0 to {len(faces) - 1} from left to right",
        )
    return face


# -- boxes ----------------------------------------------------------------------------------------
def box_for_face(center: Iterable[float], face_size: float, scale: float, vy: float) -> np.ndarray:
    """The square crop box ``[x0, y0, x1, y1]`` (int64, original pixels, ``x1``/``y1`` exclusive).

    ``center``: face box centre ``(x, y)`` in pixels; ``face_size``: its larger side in pixels.
    The box has side ``max(2, round(scale · face_size))`` and its centre is ``center + (0, vy · side)``.
    """
    cx, cy = (float(v) for v in center)
    side = max(2, int(round(scale * face_size)))
    cy += vy * side
    x0 = int(round(cx - (side - 1) / 2.0))
    y0 = int(round(cy - (side - 1) / 2.0))
    return np.array([x0, y0, x0 + side, y0 + side], dtype=np.int64)


def _affine(box: np.ndarray, size: int) -> np.ndarray:
    """Original → crop pixels (pixel-centre convention, as ``cv2.resize`` maps them)."""
    x0, y0, x1, _ = (int(v) for v in box)
    k = size / (x1 - x0)
    return np.array([[k, 0.0, k * (0.5 - x0) - 0.5], [0.0, k, k * (0.5 - y0) - 0.5]], dtype=np.float64)


def crop_frame(image: np.ndarray, box: np.ndarray, size: int, pad: Pad = "edge") -> np.ndarray:
    """Cut ``box`` out of ``image`` and resize it to ``size × size``.

    ``image``: (H, W, 3) uint8; ``box``: ``[x0, y0, x1, y1]`` integer square, possibly leaving the
    frame; the outside is filled by ``pad`` (``"edge"``: replicate the border pixels, ``"black"``:
    zeros). Returns (size, size, 3) uint8.
    """
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    side = x1 - x0
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    border = cv2.BORDER_REPLICATE if pad == "edge" else cv2.BORDER_CONSTANT
    if cx0 >= cx1 or cy0 >= cy1:  # entirely outside: only the warp can replicate the nearest edge
        m = _affine(np.asarray(box), size)
        return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    patch = np.ascontiguousarray(image[cy0:cy1, cx0:cx1, :3])
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        patch = cv2.copyMakeBorder(patch, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1, border, value=(0, 0, 0))
    if side == size:
        return patch
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)


# -- results --------------------------------------------------------------------------------------
@dataclass
class CropInfo:
    """Where a crop came from: everything needed to paste a result back (the JSON sidecar).

    Attributes:
        kind: ``"image"`` or ``"video"``.
        source_size: ``(width, height)`` of the original image or frames, pixels.
        size: side of the crop, pixels.
        box: ``[x0, y0, x1, y1]`` int64, the square in original pixels (exclusive ends; may leave
            the frame).
        faces: faces found (video: most in one sampled frame).
        face: index of the cropped face, 0-based from the left (video: in the reference frame).
        face_box: ``[x0, y0, x1, y1]`` float, the cropped face's landmark box in original pixels
            (video: the median over the sampled frames).
        scale, vy, pad: the options used.
        landmarks: the landmark backend's name.
        input, output: paths (``None`` when the crop was not read from / written to a file).
        video: for videos, ``{"fps": "num/den", "frames", "frames_sampled", "frames_with_face",
            "reference_frame", "audio"}``; ``None`` for images.
    """

    kind: Literal["image", "video"]
    source_size: tuple[int, int]
    size: int
    box: np.ndarray
    faces: int
    face: int
    face_box: np.ndarray
    scale: float
    vy: float
    pad: str
    landmarks: str
    input: str | None = None
    output: str | None = None
    video: dict[str, Any] | None = field(default=None)

    @property
    def affine(self) -> np.ndarray:
        """(2, 3) float64 original → crop pixels (pixel-centre convention)."""
        return _affine(self.box, self.size)

    @property
    def inverse(self) -> np.ndarray:
        """(2, 3) float64 crop → original pixels."""
        return cv2.invertAffineTransform(self.affine)

    @property
    def fps(self) -> Fraction | None:
        """A video's exact frame rate (``None`` for an image)."""
        return Fraction(self.video["fps"]) if self.video else None

    def to_json(self) -> dict[str, Any]:
        """The sidecar / ``--json`` object::

        {"kind": "image"|"video", "input": str|null, "output": str|null,
         "source_size": [W, H], "size": S, "box": [x0, y0, x1, y1],
         "affine": [[a, b, c], [d, e, f]], "inverse": [[...], [...]],
         "faces": n, "face": i, "face_box": [x0, y0, x1, y1],
         "scale": s, "vy": v, "pad": "edge"|"black", "landmarks": "dlib"|"fan"|...,
         "video": null | {"fps": "30000/1001", "frames": n, "frames_sampled": k,
                          "frames_with_face": m, "reference_frame": r, "audio": bool}}
        """
        return {
            "kind": self.kind,
            "input": self.input,
            "output": self.output,
            "source_size": [int(v) for v in self.source_size],
            "size": int(self.size),
            "box": [int(v) for v in self.box],
            "affine": self.affine.tolist(),
            "inverse": self.inverse.tolist(),
            "faces": int(self.faces),
            "face": int(self.face),
            "face_box": [round(float(v), 2) for v in self.face_box],
            "scale": float(self.scale),
            "vy": float(self.vy),
            "pad": self.pad,
            "landmarks": self.landmarks,
            "video": self.video,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CropInfo:
        """Rebuild from :meth:`to_json`'s object (``affine``/``inverse`` are derived from ``box``)."""
        return cls(
            kind=data["kind"],
            source_size=(int(data["source_size"][0]), int(data["source_size"][1])),
            size=int(data["size"]),
            box=np.asarray(data["box"], dtype=np.int64),
            faces=int(data["faces"]),
            face=int(data["face"]),
            face_box=np.asarray(data["face_box"], dtype=np.float64),
            scale=float(data["scale"]),
            vy=float(data["vy"]),
            pad=data["pad"],
            landmarks=data["landmarks"],
            input=data.get("input"),
            output=data.get("output"),
            video=data.get("video"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CropInfo:
        """Read a sidecar written by :func:`crop_image`/:func:`crop_video`.

        Raises :class:`~xportrait_cli.errors.InputError` naming the file if it is missing or invalid.
        """
        p = Path(path)
        try:
            return cls.from_json(json.loads(p.read_text()))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise InputError(
                f"cannot read crop information {p}: {exc}", "pass the .crop.json written by `xportrait crop`"
            ) from exc


@dataclass
class CropResult:
    """A cropped portrait: ``image`` (size, size, 3) uint8 RGB and its :class:`CropInfo`."""

    image: np.ndarray
    info: CropInfo

    @property
    def box(self) -> np.ndarray:
        """``[x0, y0, x1, y1]`` of the crop in original pixels (see :class:`CropInfo`)."""
        return self.info.box

    @property
    def affine(self) -> np.ndarray:
        """(2, 3) original → crop pixels."""
        return self.info.affine

    @property
    def faces(self) -> int:
        """Number of faces found."""
        return self.info.faces


# -- validation, paths ----------------------------------------------------------------------------
def _check_options(size: int, scale: float, vy: float, pad: str, face: int | None) -> None:
    if not (64 <= size <= 4096 and size % 2 == 0):
        raise UsageError(f"--size {size} is not an even number of pixels in 64–4096", "e.g. --size 512")
    if not 1.0 <= scale <= 10.0:
        raise UsageError(f"--scale {scale} is outside 1–10", "the crop side in face sizes, e.g. 2.2")
    if not -0.5 < vy < 0.5:
        raise UsageError(
            f"--vy {vy} is outside (−0.5, 0.5)", "a fraction of the crop side; negative moves the box up"
        )
    if pad not in PAD_MODES:
        raise UsageError(f"--pad {pad!r} is not one of {', '.join(PAD_MODES)}")
    if face is not None and face < 0:
        raise UsageError(f"--face {face} is negative", "faces are numbered from 0, left to right")


def input_kind(path: str | os.PathLike[str]) -> Literal["image", "video"]:
    """``"video"`` for a known video suffix (:data:`VIDEO_SUFFIXES`), else ``"image"``."""
    return "video" if Path(path).suffix.lower() in VIDEO_SUFFIXES else "image"


def default_output(path: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None) -> Path:
    """``<stem>.crop.png`` (image) or ``<stem>.crop.mp4`` (video) in ``directory`` (default: cwd)."""
    p = Path(path)
    suffix = ".mp4" if input_kind(p) == "video" else ".png"
    return Path(directory if directory is not None else Path.cwd()) / f"{p.stem}.crop{suffix}"


def sidecar_path(output: str | os.PathLike[str]) -> Path:
    """The JSON beside a crop: ``x.crop.png`` → ``x.crop.json``, ``x.png`` → ``x.crop.json``."""
    p = Path(output)
    stem = p.stem if p.stem.endswith(".crop") else f"{p.stem}.crop"
    return p.with_name(f"{stem}.json")


def _temp_beside(path: Path) -> Path:
    from xportrait_cli.video.writer import temp_path_for

    return temp_path_for(path)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = _temp_beside(path)
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _prepare_output(src: Path, out: Path) -> None:
    if out.resolve() == src.resolve():
        raise UsageError(f"the output {out} is the input", "choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)


def _detector_or_default(detector: LandmarkDetector | None) -> LandmarkDetector:
    if detector is not None:
        return detector
    from xportrait_cli.face.landmarks import make_detector

    return make_detector("auto")


# -- images ---------------------------------------------------------------------------------------
def crop_portrait(
    path: str | os.PathLike[str] | np.ndarray,
    *,
    size: int = DEFAULT_SIZE,
    scale: float = DEFAULT_SCALE,
    vy: float = DEFAULT_VY,
    face: int | None = None,
    detector: LandmarkDetector | None = None,
    pad: Pad = "edge",
) -> CropResult:
    """Crop a portrait around its face (in memory; nothing is written).

    Args:
        path: an image file (any format :func:`xportrait_cli.image.load_image` reads, EXIF
            orientation applied) or an (H, W, 3) uint8 RGB array.
        size: output side in pixels (even, 64–4096).
        scale: crop side / face size (1–10).
        vy: box centre offset from the face centre, fraction of the side, down positive (−0.5, 0.5).
        face: 0-based index from the left; ``None`` takes the largest face.
        detector: a landmark backend (default ``make_detector("auto")``).
        pad: ``"edge"`` or ``"black"`` fill where the box leaves the image.

    Returns a :class:`CropResult`: ``image`` (size, size, 3) uint8 and ``info`` (box, affine,
    faces, ...). Raises :class:`~xportrait_cli.errors.NoFaceError` when there is no face,
    :class:`~xportrait_cli.errors.UsageError` for bad options or a ``face`` index past the last
    face, :class:`~xportrait_cli.errors.InputError` for an unreadable file.
    """
    from xportrait_cli.image import load_image

    _check_options(size, scale, vy, pad, face)
    if isinstance(path, np.ndarray):
        rgb, name, src = np.ascontiguousarray(path[..., :3], dtype=np.uint8), "the image", None
    else:
        rgb, name, src = load_image(path), str(path), str(path)
    det = _detector_or_default(detector)
    faces = detect_faces(rgb, det)
    if not faces:
        raise NoFaceError(
            f"no face found in {name} (landmarks: {det.name})",
            "use an image with a clearly visible, roughly frontal face",
        )
    index = _choose(faces, face, name)
    center, fsize = face_geometry(faces[index])
    box = box_for_face(center, fsize, scale, vy)
    lmk = faces[index]
    info = CropInfo(
        kind="image",
        source_size=(rgb.shape[1], rgb.shape[0]),
        size=size,
        box=box,
        faces=len(faces),
        face=index,
        face_box=np.concatenate([lmk.min(axis=0), lmk.max(axis=0)]).astype(np.float64),
        scale=scale,
        vy=vy,
        pad=pad,
        landmarks=det.name,
        input=src,
    )
    return CropResult(image=crop_frame(rgb, box, size, pad), info=info)


def crop_image(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    size: int = DEFAULT_SIZE,
    scale: float = DEFAULT_SCALE,
    vy: float = DEFAULT_VY,
    face: int | None = None,
    detector: LandmarkDetector | None = None,
    pad: Pad = "edge",
) -> CropInfo:
    """:func:`crop_portrait` and write the crop to ``out_path`` and its :func:`sidecar_path` JSON.

    ``out_path``'s suffix picks the format (``.png``, ``.jpg``, ``.webp``, ...); both files are
    written under temporary names and moved into place with :func:`os.replace`. Returns the
    :class:`CropInfo` (with ``output`` set). Raises as :func:`crop_portrait`, and
    :class:`~xportrait_cli.errors.UsageError` for an output format Pillow cannot write.
    """
    from PIL import Image

    src, out = Path(path), Path(out_path)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UsageError(f"cannot write an image as {out.name!r}", "use a .png, .jpg or .webp output")
    _prepare_output(src, out)
    result = crop_portrait(src, size=size, scale=scale, vy=vy, face=face, detector=detector, pad=pad)
    result.info.output = str(out)
    tmp = _temp_beside(out)
    try:
        Image.fromarray(result.image).save(tmp, format=fmt)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_json_atomic(sidecar_path(out), result.info.to_json())
    return result.info


# -- videos ---------------------------------------------------------------------------------------
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
    index = _choose(per_frame[ref], face, f"{name} (sampled frame with the most faces)")
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
    *,
    size: int = DEFAULT_SIZE,
    scale: float = DEFAULT_SCALE,
    vy: float = DEFAULT_VY,
    face: int | None = None,
    detector: LandmarkDetector | None = None,
    pad: Pad = "edge",
    detect_frames: int = DEFAULT_DETECT_FRAMES,
    events: EventSink = null_sink,
) -> CropInfo:
    """Crop a video around its face with one steady box; write the MP4 and its JSON sidecar.

    Args:
        path: the video (anything decord and PyAV read).
        out_path: the ``.mp4`` to write (H.264, ``size × size``, the source's exact frame rate, its
            audio copied or transcoded to AAC); written atomically by
            :class:`~xportrait_cli.video.writer.VideoWriter`, then :func:`sidecar_path` JSON.
        size, scale, vy, face, detector, pad: as :func:`crop_portrait`; ``face`` counts in the
            reference frame (the first sampled frame with the most faces).
        detect_frames: at most this many frames, spread evenly, are searched for faces (≥ 1).
        events: receives ``StageStarted/StageProgress/StageFinished`` for ``landmarks`` (sampled
            frames) and ``encode`` (with :class:`~xportrait_cli.events.FramesWritten`).

    Memory: one batch of 16 decoded frames at a time. Returns the :class:`CropInfo`. Raises
    :class:`~xportrait_cli.errors.NoFaceError` when no sampled frame has a face,
    :class:`~xportrait_cli.errors.InputError` for an unreadable video,
    :class:`~xportrait_cli.errors.UsageError` for bad options or a non-``.mp4`` output.
    """
    from xportrait_cli.video.reader import VideoReader
    from xportrait_cli.video.writer import VideoWriter

    _check_options(size, scale, vy, pad, face)
    if detect_frames < 1:
        raise UsageError(f"--detect-frames {detect_frames} must be at least 1")
    src, out = Path(path), Path(out_path)
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"a video crop is written as MP4, not {out.name!r}", "use an .mp4 output")
    _prepare_output(src, out)
    det = _detector_or_default(detector)
    with VideoReader(src) as reader:
        info = reader.info
        n = len(reader)
        samples = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, detect_frames))})
        # 1. faces on the sampled frames
        t0 = time.monotonic()
        events(StageStarted("landmarks", total=len(samples)))
        per_frame: list[list[np.ndarray]] = []
        for _, frames in reader.iter_batches(samples, _BATCH):
            per_frame += [detect_faces(f, det, thorough=False) for f in frames]
            events(StageProgress("landmarks", done=len(per_frame), total=len(samples)))
        events(StageFinished("landmarks", seconds=time.monotonic() - t0))
        if not any(per_frame):
            raise NoFaceError(
                f"no face found in {src} ({len(samples)} frames searched, landmarks: {det.name})",
                "use a video with a clearly visible, roughly frontal face",
            )
        # 2. one box for the clip
        chosen, most, ref, index = _track(per_frame, face, str(src))
        tracked = [c for c in chosen if c is not None]
        box, face_box = _clip_box(tracked, scale, vy)
        # 3. stream every frame through the crop into the writer
        t0 = time.monotonic()
        events(StageStarted("encode", total=n))
        audio = src if info.has_audio else None
        with VideoWriter(out, info.fps, audio_source=audio) as writer:
            for _, frames in reader.iter_batches(range(n), _BATCH):
                writer.write(np.stack([crop_frame(f, box, size, pad) for f in frames]))
                events(FramesWritten(count=writer.frames_written, total=n))
        events(StageFinished("encode", seconds=time.monotonic() - t0))
    crop_info = CropInfo(
        kind="video",
        source_size=(info.width, info.height),
        size=size,
        box=box,
        faces=most,
        face=index,
        face_box=face_box,
        scale=scale,
        vy=vy,
        pad=pad,
        landmarks=det.name,
        input=str(src),
        output=str(out),
        video={
            "fps": f"{info.fps.numerator}/{info.fps.denominator}",
            "frames": n,
            "frames_sampled": len(samples),
            "frames_with_face": len(tracked),
            "reference_frame": samples[ref],
            "audio": bool(info.has_audio),
        },
    )
    _write_json_atomic(sidecar_path(out), crop_info.to_json())
    return crop_info


def crop_file(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    size: int = DEFAULT_SIZE,
    scale: float = DEFAULT_SCALE,
    vy: float = DEFAULT_VY,
    face: int | None = None,
    detector: LandmarkDetector | None = None,
    pad: Pad = "edge",
    detect_frames: int = DEFAULT_DETECT_FRAMES,
    events: EventSink = null_sink,
) -> CropInfo:
    """Crop an image (:func:`crop_image`) or a video (:func:`crop_video`, by suffix, see
    :func:`input_kind`) to ``out_path``, default :func:`default_output` in the current directory.

    Returns the :class:`CropInfo` written beside the output. Raises as those two functions.
    """
    src = Path(path)
    out = Path(out_path) if out_path is not None else default_output(src)
    common: dict[str, Any] = dict(size=size, scale=scale, vy=vy, face=face, detector=detector, pad=pad)
    if input_kind(src) == "video":
        return crop_video(src, out, detect_frames=detect_frames, events=events, **common)
    return crop_image(src, out, **common)


def _needs_crop(path: Path, mode: str) -> tuple[bool, tuple[int, int]]:
    """Whether ``--crop mode`` crops ``path``, and its ``(width, height)`` (header only)."""
    if input_kind(path) == "video":
        from xportrait_cli.video.reader import probe_video

        info = probe_video(path)
        size = (info.width, info.height)
    else:
        from xportrait_cli.image import load_image

        height, width = load_image(path).shape[:2]
        size = (width, height)
    return mode == "on" or (mode == "auto" and size[0] != size[1]), size


def crop_inputs(
    portrait: Path,
    driving: Path | None,
    work_dir: Path,
    *,
    mode: str,
    size: int,
    detector: LandmarkDetector,
    events: EventSink = null_sink,
    job: str | None = None,
) -> tuple[Path, Path, CropInfo | None]:
    """``animate --crop`` and ``inspect --crop``: square face crops of the portrait and the driving
    video, made once in ``work_dir`` (a resumed job reuses them: the sidecar is written last).

    ``mode``: ``"auto"`` crops the inputs that are not square (a square input is used as the
    official code uses it), ``"on"`` both, ``"off"`` neither. Each crop is logged (a
    :class:`~xportrait_cli.events.Log` event). Under ``auto`` a portrait without a face (a stylized
    one) is used uncropped, with a warning. Returns (portrait, driving, the portrait's
    :class:`CropInfo` or ``None`` when it was not cropped). Raises
    :class:`~xportrait_cli.errors.NoFaceError` (hint: ``--crop off``) for a driving video without a
    face, or a portrait without one under ``on``. ``driving`` may be ``None`` (a portrait alone).
    """
    from xportrait_cli.events import Log

    used = {"portrait": Path(portrait), "driving": None if driving is None else Path(driving)}
    info = None
    for name, source in used.items():
        if source is None or mode == "off":
            continue
        crop, (width, height) = _needs_crop(source, mode)
        if not crop:
            continue
        target = Path(work_dir) / f"{name}.crop{source.suffix if name == 'driving' else '.png'}"
        if not sidecar_path(target).is_file():
            try:
                crop_file(source, target, size=size, detector=detector, events=events)
            except NoFaceError as exc:
                if mode == "on" or name == "driving":
                    raise NoFaceError(exc.message, f"{exc.hint}, or pass --crop off") from None
                why = f"{exc.message}: the {width}x{height} portrait is not cropped (squashed to a square)"
                events(Log("warning", why, job=job))
                continue
        found = CropInfo.load(sidecar_path(target))
        box = found.box.tolist()
        events(
            Log(
                "info",
                f"cropped the {name} ({width}x{height}) to the face: box {box} (--crop {mode})",
                job=job,
            )
        )
        used[name] = target
        info = found if name == "portrait" else info
    return used["portrait"], used["driving"], info


# -- paste back -----------------------------------------------------------------------------------
def _ramp(n: int, width: float) -> np.ndarray:
    """(n,) float32 in [0, 1]: 0 at both ends rising over ``width`` samples (smoothstep)."""
    if width <= 0:
        return np.ones(n, dtype=np.float32)
    pos = np.arange(n, dtype=np.float64) + 0.5
    t = np.clip(np.minimum(pos, n - pos) / width, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _as_info(crop_info: CropInfo | CropResult | dict | str | os.PathLike[str]) -> CropInfo:
    if isinstance(crop_info, CropResult):
        return crop_info.info
    if isinstance(crop_info, CropInfo):
        return crop_info
    if isinstance(crop_info, dict):
        return CropInfo.from_json(crop_info)
    return CropInfo.load(crop_info)


def paste_back(
    frames: Iterable[np.ndarray],
    crop_info: CropInfo | CropResult | dict | str | os.PathLike[str],
    original_image: np.ndarray,
    feather: float = DEFAULT_FEATHER,
) -> Iterator[np.ndarray]:
    """Compose square frames (e.g. an animated crop) back into the original full frame.

    Args:
        frames: iterable of (h, w, 3) uint8 RGB squares (any side; resized to the box, ``INTER_AREA``
            when shrinking, ``INTER_CUBIC`` when enlarging).
        crop_info: the crop's :class:`CropInfo`, a :class:`CropResult`, its JSON dict, or the path
            of its ``.crop.json``.
        original_image: (H, W, 3) uint8 RGB, the frame the crop was taken from (its size must be
            ``crop_info.source_size``).
        feather: width of the mask's soft edge in crop pixels (at ``crop_info.size``); 0 pastes
            the whole square with a hard edge.

    Yields (H, W, 3) uint8 frames, lazily: the original outside the box, each frame inside it,
    blended with the mask ``ramp(x) · ramp(y)`` (smoothstep from 0 at the box edge to 1 at
    ``feather`` inside). Raises ``ValueError`` for a size mismatch or a non-uint8 frame.
    """
    info = _as_info(crop_info)
    orig = np.asarray(original_image)
    if orig.dtype != np.uint8 or orig.ndim != 3 or orig.shape[2] < 3:
        raise ValueError(f"original_image must be (H, W, 3) uint8, got {orig.dtype} {orig.shape}")
    orig = np.ascontiguousarray(orig[..., :3])
    h, w = orig.shape[:2]
    if (w, h) != tuple(info.source_size):
        raise ValueError(f"original image is {w}x{h}, the crop was taken from {info.source_size}")
    x0, y0, x1, y1 = (int(v) for v in info.box)
    side = x1 - x0
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx0 >= cx1 or cy0 >= cy1:  # the box misses the frame: nothing to paste
        for _ in frames:
            yield orig.copy()
        return
    ramp = _ramp(side, feather * side / info.size)
    alpha = (ramp[cy0 - y0 : cy1 - y0, None] * ramp[None, cx0 - x0 : cx1 - x0])[..., None]
    under = orig[cy0:cy1, cx0:cx1].astype(np.float32) * (1.0 - alpha)
    for frame in frames:
        f = np.asarray(frame)
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] < 3:
            raise ValueError(f"frames must be (h, w, 3) uint8, got {f.dtype} {f.shape}")
        f = np.ascontiguousarray(f[..., :3])
        if f.shape[:2] != (side, side):
            interp = cv2.INTER_AREA if f.shape[0] > side else cv2.INTER_CUBIC
            f = cv2.resize(f, (side, side), interpolation=interp)
        region = f[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].astype(np.float32)
        out = orig.copy()
        out[cy0:cy1, cx0:cx1] = np.clip(np.rint(region * alpha + under), 0, 255).astype(np.uint8)
        yield out
