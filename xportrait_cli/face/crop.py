"""``xportrait crop``: a square, face-centred crop of a portrait, and the crop options.

Geometry
    The face box is the bounding box of the chosen face's 68 landmarks (brows to chin, jaw to jaw);
    the **face size** ``f`` is its larger side. The crop is the square of side ``round(scale · f)``
    centred on the face box centre moved down by ``vy · side`` (``vy < 0`` moves the box up, so the
    face sits below the middle and the forehead and hair fit in; LivePortrait's ``scale``/``vy_ratio``
    with the same meaning). The box is snapped to whole pixels, may leave the frame (the outside is
    filled by ``pad``: ``"edge"`` replication or ``"black"``), and is resized to ``size × size``
    (``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when enlarging). In the result the face box centre
    is at ``(size / 2, size / 2 − vy · size)`` and the face size is ``size / scale``. Coordinates and
    the sidecar: :mod:`xportrait_cli.face.crop_info`.

Several faces
    Faces are sorted **left to right** by their box centre and numbered from 0; by default the
    largest is taken, ``face=N`` takes the N-th from the left. The count is reported (``faces``).
    Detection: :mod:`xportrait_cli.face.detect`; videos: :mod:`xportrait_cli.face.crop_video`;
    the paste back: :mod:`xportrait_cli.face.paste`.

The official code has no cropper: it expects square, face-centred inputs (official
``core/test_xportrait.py`` resizes whatever it reads to 512², squashing non-square ones).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from xportrait_cli.errors import NoFaceError, UsageError
from xportrait_cli.face.crop_info import CropInfo, CropResult, box_affine, sidecar_path
from xportrait_cli.face.crop_options import CropOptions, Pad
from xportrait_cli.face.detect import choose_face, detect_faces, face_geometry
from xportrait_cli.face.landmarks import LandmarkDetector
from xportrait_cli.files import atomic_write

__all__ = [
    "VIDEO_SUFFIXES",
    "box_for_face",
    "crop_frame",
    "crop_image",
    "crop_portrait",
    "default_output",
    "input_kind",
]

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp"}
)


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
        m = box_affine(np.asarray(box), size)
        return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    patch = np.ascontiguousarray(image[cy0:cy1, cx0:cx1, :3])
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        patch = cv2.copyMakeBorder(patch, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1, border, value=(0, 0, 0))
    if side == size:
        return patch
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)


def input_kind(path: str | os.PathLike[str]) -> Literal["image", "video"]:
    """``"video"`` for a known video suffix (:data:`VIDEO_SUFFIXES`), else ``"image"``."""
    return "video" if Path(path).suffix.lower() in VIDEO_SUFFIXES else "image"


def default_output(path: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None) -> Path:
    """``<stem>.crop.png`` (image) or ``<stem>.crop.mp4`` (video) in ``directory`` (default: cwd)."""
    p = Path(path)
    suffix = ".mp4" if input_kind(p) == "video" else ".png"
    return Path(directory if directory is not None else Path.cwd()) / f"{p.stem}.crop{suffix}"


def prepare_output(src: Path, out: Path) -> None:
    """Refuse to overwrite the input (:class:`~xportrait_cli.errors.UsageError`); create ``out``'s folder."""
    if out.resolve() == src.resolve():
        raise UsageError(f"the output {out} is the input", "choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)


def detector_or_default(detector: LandmarkDetector | None) -> LandmarkDetector:
    """``detector``, or ``make_detector("auto")`` when it is ``None``."""
    if detector is not None:
        return detector
    from xportrait_cli.face.landmarks import make_detector

    return make_detector("auto")


def crop_portrait(
    path: str | os.PathLike[str] | np.ndarray,
    options: CropOptions | None = None,
    *,
    detector: LandmarkDetector | None = None,
) -> CropResult:
    """Crop a portrait around its face (in memory; nothing is written).

    Args:
        path: an image file (any format :func:`xportrait_cli.image.load_image` reads, EXIF
            orientation applied) or an (H, W, 3) uint8 RGB array.
        options: a :class:`~xportrait_cli.face.crop_options.CropOptions` (default: the defaults;
            ``detect_frames`` is unused).
        detector: a landmark backend (default ``make_detector("auto")``).

    Returns a :class:`~xportrait_cli.face.crop_info.CropResult`: ``image`` (size, size, 3) uint8 and
    ``info`` (box, affine, faces, ...). Raises :class:`~xportrait_cli.errors.NoFaceError` when there
    is no face, :class:`~xportrait_cli.errors.UsageError` for a ``face`` index past the last face,
    :class:`~xportrait_cli.errors.InputError` for an unreadable file.
    """
    from xportrait_cli.image import load_image

    opts = options or CropOptions()
    if isinstance(path, np.ndarray):
        rgb, name, src = np.ascontiguousarray(path[..., :3], dtype=np.uint8), "the image", None
    else:
        rgb, name, src = load_image(path), str(path), str(path)
    det = detector_or_default(detector)
    faces = detect_faces(rgb, det)
    if not faces:
        raise NoFaceError(
            f"no face found in {name} (landmarks: {det.name})",
            "use an image with a clearly visible, roughly frontal face",
        )
    index = choose_face(faces, opts.face, name)
    center, fsize = face_geometry(faces[index])
    box = box_for_face(center, fsize, opts.scale, opts.vy)
    lmk = faces[index]
    info = CropInfo(
        kind="image",
        source_size=(rgb.shape[1], rgb.shape[0]),
        size=opts.size,
        box=box,
        faces=len(faces),
        face=index,
        face_box=np.concatenate([lmk.min(axis=0), lmk.max(axis=0)]).astype(np.float64),
        scale=opts.scale,
        vy=opts.vy,
        pad=opts.pad,
        landmarks=det.name,
        input=src,
    )
    return CropResult(image=crop_frame(rgb, box, opts.size, opts.pad), info=info)


def crop_image(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: CropOptions | None = None,
    *,
    detector: LandmarkDetector | None = None,
) -> CropInfo:
    """:func:`crop_portrait` and write the crop to ``out_path`` and its
    :func:`~xportrait_cli.face.crop_info.sidecar_path` JSON.

    ``out_path``'s suffix picks the format (``.png``, ``.jpg``, ``.webp``, ...); both files are
    written through :func:`~xportrait_cli.files.atomic_write`. Returns the
    :class:`~xportrait_cli.face.crop_info.CropInfo` (with ``output`` set). Raises as
    :func:`crop_portrait`, and :class:`~xportrait_cli.errors.UsageError` for an output format Pillow
    cannot write.
    """
    from PIL import Image

    src, out = Path(path), Path(out_path)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UsageError(f"cannot write an image as {out.name!r}", "use a .png, .jpg or .webp output")
    prepare_output(src, out)
    result = crop_portrait(src, options, detector=detector)
    result.info.output = str(out)
    with atomic_write(out) as tmp:
        Image.fromarray(result.image).save(tmp, format=fmt)
    result.info.save(sidecar_path(out))
    return result.info
