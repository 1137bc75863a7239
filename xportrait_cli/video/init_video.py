"""``--init-video``: the frames the initial latents are built from (official
``--initial_facevid2vid_results``), read on demand.

Official behaviour (golden case c1, spec §4): decord RGB uint8 frames, each ``cv2.resize`` to the
model size with OpenCV's default INTER_LINEAR (no face alignment, no anti-aliasing), then
``/255·2 − 1`` in float64, cast to float32. The official code hard-codes 512 px; here the frames go
to ``--size``. The frames are the init video's own ``--start/--frames/--stride`` selection, the same
as the driving video's, cut to the driving selection's length; a shorter init video is an error
(the official code silently shortens the whole job).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from xportrait_cli.errors import InputError, UsageError
from xportrait_cli.video.reader import VideoReader, select_frames


class InitVideo:
    """:class:`~xportrait_cli.pipeline.frames.InitFrames` over a video file.

    ``frames(positions)`` decodes only those frames of the selection and returns ``(n, 3, S, S)``
    float32 RGB in [-1, 1]; nothing else is kept in memory. Made by :func:`open_init_video`.
    """

    def __init__(self, reader: VideoReader, indices: list[int], size: int) -> None:
        self.reader, self.indices, self.size = reader, indices, size

    def __len__(self) -> int:
        return len(self.indices)

    def frames(self, positions: Sequence[int]) -> torch.Tensor:
        rgb = self.reader.read([self.indices[p] for p in positions])
        resized = np.stack(
            [cv2.resize(f, (self.size, self.size), interpolation=cv2.INTER_LINEAR) for f in rgb]
        )
        x = resized.astype(np.float64) / 255.0 * 2.0 - 1.0
        return torch.from_numpy(x).permute(0, 3, 1, 2).float()

    def close(self) -> None:
        self.reader.close()


def open_init_video(
    path: str | os.PathLike[str],
    *,
    size: int,
    needed: int,
    start: int = 0,
    num_frames: int = 0,
    stride: int = 1,
) -> InitVideo:
    """Open ``path`` for ``needed`` frames selected like the driving video's (``start``,
    ``num_frames``, ``stride``).

    Raises:
        InputError: the file is missing or undecodable, or its selection has fewer than ``needed``
            frames (the message gives both counts).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: init video not found", "check the --init-video path")
    try:
        reader = VideoReader(path)
    except InputError as exc:
        raise InputError(exc.message.replace("driving video", "init video"), exc.hint) from None
    try:
        indices = select_frames(len(reader), start, num_frames, stride)
    except UsageError:
        indices = []
    if len(indices) < needed:
        reader.close()
        raise InputError(
            f"{path}: init video gives {len(indices)} frames with --start {start} --stride {stride} "
            f"({len(reader)} in the file) but the driving selection has {needed}",
            "pass an init video made from the same driving frames, or select fewer with --frames",
        )
    return InitVideo(reader, indices[:needed], size)
