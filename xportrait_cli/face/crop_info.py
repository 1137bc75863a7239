"""The crop sidecar: :class:`CropInfo` (where a crop came from) and its JSON file beside the crop.

Coordinates
    Pixel-centre convention (pixel ``(i, j)`` is centred on ``x = i, y = j``; OpenCV's). ``box`` is
    ``[x0, y0, x1, y1]`` in original pixels (``x1``, ``y1`` exclusive; ``x1 − x0 == y1 − y0``).
    ``affine`` (2×3) maps original → crop pixels, so ``cv2.warpAffine(original, affine, (size,
    size))`` reproduces the crop up to resampling; ``inverse`` maps crop → original. Both are
    written beside the output as JSON (:func:`sidecar_path`, schema in :meth:`CropInfo.to_json`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from xportrait_cli.errors import InputError
from xportrait_cli.files import write_text_atomic

__all__ = ["CropInfo", "CropResult", "box_affine", "sidecar_path"]


def box_affine(box: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) float64 original → crop pixels for the square ``box`` resized to ``size`` (pixel-centre
    convention, as ``cv2.resize`` maps them)."""
    x0, y0, x1, _ = (int(v) for v in box)
    k = size / (x1 - x0)
    return np.array([[k, 0.0, k * (0.5 - x0) - 0.5], [0.0, k, k * (0.5 - y0) - 0.5]], dtype=np.float64)


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
        return box_affine(self.box, self.size)

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

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` as indented JSON, atomically (:mod:`xportrait_cli.files`)."""
        write_text_atomic(Path(path), json.dumps(self.to_json(), indent=2) + "\n")


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


def sidecar_path(output: str | os.PathLike[str]) -> Path:
    """The JSON beside a crop: ``x.crop.png`` → ``x.crop.json``, ``x.png`` → ``x.crop.json``."""
    p = Path(output)
    stem = p.stem if p.stem.endswith(".crop") else f"{p.stem}.crop"
    return p.with_name(f"{stem}.json")
