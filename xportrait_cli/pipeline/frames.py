"""What the pipeline reads per window: conditioning hints and init frames, as protocols.

The pipeline knows nothing about files: it asks a :class:`ConditioningFrames` for the hints of the
frames of one window (the job's frame store implements it on disk, :class:`TensorFrames` in memory),
and an :class:`InitFrames` for the frames of an init video, 16 at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class ConditioningFrames(Protocol):
    """Per-frame motion conditioning, read by index (the frame store implements it).

    ``global_hints(indices)`` and ``local_hints(indices)`` return ``(n, 3, S, S)`` float32 in [-1, 1]:
    the aligned driving frames (the global motion ControlNet's hint, official ``conditions``) and the
    eye/mouth patch images, -1 outside the patches (the local one's, official ``local``).
    """

    def __len__(self) -> int: ...

    def global_hints(self, indices: Sequence[int]) -> torch.Tensor: ...

    def local_hints(self, indices: Sequence[int]) -> torch.Tensor: ...


class InitFrames(Protocol):
    """Frames the initial latents are built from instead of the portrait (official
    ``--initial_facevid2vid_results``): ``frames(indices)`` returns ``(n, 3, S, S)`` float32 in
    [-1, 1], read on demand (the pipeline asks for one window, 16 frames, at a time)."""

    def __len__(self) -> int: ...

    def frames(self, indices: Sequence[int]) -> torch.Tensor: ...


@dataclass
class TensorFrames:
    """In-memory :class:`ConditioningFrames` from two ``(N, 3, S, S)`` tensors in [-1, 1]."""

    global_hint: torch.Tensor
    local_hint: torch.Tensor

    def __len__(self) -> int:
        return self.global_hint.shape[0]

    def global_hints(self, indices: Sequence[int]) -> torch.Tensor:
        return self.global_hint[list(indices)]

    def local_hints(self, indices: Sequence[int]) -> torch.Tensor:
        return self.local_hint[list(indices)]
