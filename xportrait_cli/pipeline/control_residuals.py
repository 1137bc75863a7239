"""ControlNet residuals of one denoising step, computed once per frame and reused across windows.

Officially (``ldm/models/diffusion/ddim.py`` L473–563) every window runs both ControlNets on all of
its 16 frames, so a frame covered by two overlapping windows is computed twice per step. The
ControlNets are per-frame (no temporal layers) and, within a step, a frame's latents, timestep and
hints do not change before the DDIM update, so its residuals are the same in every window:
:class:`ControlResiduals` computes each frame once and hands the rows to every window that reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: ControlNet residuals: (12 skip residuals, middle residual), one row per frame.
Residuals = tuple[list[torch.Tensor], torch.Tensor]


class ControlResiduals:
    """ControlNet residuals of one denoising step, computed once per frame and reused across windows.

    Calling this object with each window's indices, in plan order, computes only the frames not seen
    yet in this step (each at most once, so a window that repeats frames, N < 16, computes them once
    too) and keeps only the rows a later window of the step reads: the previous window's ``num_mix``
    overlap and the first window's frames that the circular last window wraps onto. Memory is
    therefore bounded by two windows of residuals, whatever N.

    Args:
        plan: the step's windows (:func:`.windows.window_plan`), in the order they will be requested.
        compute: ``frames -> residuals`` with one row per frame, in the given order.
    """

    def __init__(self, plan: list[list[int]], compute: Callable[[list[int]], Residuals]) -> None:
        self.compute = compute
        self._windows = len(plan)
        self._last_read = {f: k for k, indices in enumerate(plan) for f in indices}  # last window per frame
        self._window = 0
        self._frames: list[int] = []  # frame of each kept row
        self._kept: Residuals | None = None
        #: frames computed so far in this step (a frame reused from an earlier window is not counted)
        self.computed = 0

    def __call__(self, indices: Sequence[int]) -> Residuals:
        """Residuals for one window: one row per entry of ``indices`` (next window of the plan).

        Raises:
            ValueError: more windows are requested than the plan holds.
        """
        if self._window >= self._windows:
            raise ValueError(f"more windows requested than the plan's {self._windows}")
        window = self._window
        self._window += 1
        new = [f for f in dict.fromkeys(indices) if f not in self._frames]
        frames = self._frames + new
        down, mid = self._kept if self._kept is not None else ([], None)
        if new:
            down_new, mid_new = self.compute(new)
            self.computed += len(new)
            if self._kept is None:
                down, mid = down_new, mid_new
            else:
                down = [torch.cat([a, b]) for a, b in zip(down, down_new, strict=True)]
                mid = torch.cat([mid, mid_new])
        row = {f: i for i, f in enumerate(frames)}
        result = _rows((down, mid), [row[f] for f in indices])
        keep = [f for f in frames if self._last_read[f] > window]
        self._frames = keep
        self._kept = _rows((down, mid), [row[f] for f in keep]) if keep else None
        return result


def _rows(residuals: Residuals, rows: list[int]) -> Residuals:
    """Select ``rows`` of every residual tensor (no copy when ``rows`` is all rows in order)."""
    down, mid = residuals
    if rows == list(range(mid.shape[0])):
        return list(down), mid
    index = torch.tensor(rows, device=mid.device)
    return [d.index_select(0, index) for d in down], mid.index_select(0, index)
