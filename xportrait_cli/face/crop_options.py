"""The options of ``xportrait crop`` (and of ``--crop`` in ``animate``/``inspect``) and their defaults.

Light on purpose (no OpenCV, numpy or landmark backends), so the CLI can take its defaults from here
when it starts. What the options mean: :mod:`xportrait_cli.face.crop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xportrait_cli.errors import UsageError

__all__ = [
    "DEFAULT_DETECT_FRAMES",
    "DEFAULT_SCALE",
    "DEFAULT_SIZE",
    "DEFAULT_VY",
    "PAD_MODES",
    "CropOptions",
    "Pad",
]

DEFAULT_SIZE = 512
#: Crop side / face size (LivePortrait uses 2.2–2.3).
DEFAULT_SCALE = 2.2
#: Vertical offset of the box centre from the face centre, as a fraction of the crop side (down > 0).
DEFAULT_VY = -0.1
#: Video frames searched for faces at most (spread evenly over the clip).
DEFAULT_DETECT_FRAMES = 32
PAD_MODES = ("edge", "black")
Pad = Literal["edge", "black"]


@dataclass(frozen=True)
class CropOptions:
    """How to crop (the geometry: :mod:`xportrait_cli.face.crop`); checked when built.

    Attributes:
        size: output side in pixels (even, 64–4096).
        scale: crop side / face size (1–10).
        vy: box centre offset from the face centre, fraction of the side, down positive (−0.5, 0.5).
        face: 0-based index from the left; ``None`` takes the largest face (a video: in the
            reference frame, the first sampled frame with the most faces).
        pad: ``"edge"`` or ``"black"`` fill where the box leaves the image.
        detect_frames: a video's frames searched for faces, at most, spread evenly (≥ 1).

    Raises :class:`~xportrait_cli.errors.UsageError` (naming the CLI flag) for a value out of range.
    """

    size: int = DEFAULT_SIZE
    scale: float = DEFAULT_SCALE
    vy: float = DEFAULT_VY
    face: int | None = None
    pad: Pad = "edge"
    detect_frames: int = DEFAULT_DETECT_FRAMES

    def __post_init__(self) -> None:
        size, scale, vy, pad, face = self.size, self.scale, self.vy, self.pad, self.face
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
        if self.detect_frames < 1:
            raise UsageError(f"--detect-frames {self.detect_frames} must be at least 1")
