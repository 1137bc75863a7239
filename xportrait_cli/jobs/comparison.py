"""``--comparison``: a side-by-side video (portrait · aligned driving frame · result) beside the output.

The result frames are teed from the decode loop as they go to the output's writer (the output is
never decoded again), so the panel shows the frames before H.264 compression.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from xportrait_cli.pipeline.output import to_uint8
from xportrait_cli.video.writer import VideoWriter

if TYPE_CHECKING:
    from xportrait_cli.jobs.framestore import FrameStore


def comparison_path(output: Path) -> Path:
    """``a.mp4`` → ``a.comparison.mp4`` beside it."""
    return output.with_name(f"{output.stem}.comparison{output.suffix}")


class ComparisonWriter:
    """Writes one panel per result frame: ``[portrait | driving frame i | result i]``, each at the
    driving frames' size (``(S, S, 3)`` uint8, the result resized with ``cv2.INTER_AREA``), so the
    panel is ``(S, 3S, 3)``.

    Args:
        writer: the open :class:`VideoWriter` of the comparison video.
        portrait: the source portrait ``(1, 3, S, S)`` in [-1, 1] (as the pipeline receives it).
        store: the job's frame store (:class:`~xportrait_cli.jobs.framestore.FrameStore`): driving
            frame ``i`` is ``store.frames_u8([i])``.
    """

    def __init__(self, writer: VideoWriter, portrait: torch.Tensor, store: FrameStore) -> None:
        self._writer, self._store = writer, store
        self.path = writer.path
        self._portrait = to_uint8(portrait)[0]  # the one [-1, 1] -> uint8 rule (official img_as_ubyte)
        self._index = 0

    def write(self, result: np.ndarray) -> None:
        """Add the panel of the next result frame ``(H, W, 3)`` uint8 RGB."""
        driving = self._store.frames_u8([self._index])[0]
        size = driving.shape[1::-1]
        resized = cv2.resize(result, size, interpolation=cv2.INTER_AREA)
        panel = np.concatenate([np.broadcast_to(self._portrait, driving.shape), driving, resized], axis=1)
        self._writer.write(np.ascontiguousarray(panel)[None])
        self._index += 1


@contextlib.contextmanager
def comparison_writer(output: Path, portrait: torch.Tensor, store: FrameStore) -> Iterator[ComparisonWriter]:
    """A :class:`ComparisonWriter` into :func:`comparison_path` of ``output``, at the store's frame
    rate with the driving video's audio; the file appears (atomically, as the video writer does) when
    the block ends without an exception."""
    path = comparison_path(output)
    with VideoWriter(path, store.fps, audio_source=store.audio_source, audio_offset=store.audio_offset) as w:
        yield ComparisonWriter(w, portrait, store)
