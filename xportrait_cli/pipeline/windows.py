"""The official overlapping-window plan (pure functions, no torch).

Official source: ``DDIMSampler_ReferenceOnly`` (``ldm/models/diffusion/ddim.py`` L473–563). At every
denoising step a fresh offset ``o`` in ``[0, N-1]`` is drawn; windows of ``WINDOW`` frames start at
``o, o+stride, …`` while the start is below ``o + N - num_mix`` (``stride = WINDOW - num_mix``), and
take frames ``(s + 0..WINDOW-1) mod N`` — circular, so the last window wraps to the clip's start.

Fix of the official edge case (bytedance/X-Portrait issue #11): with ``N <= num_mix`` (e.g. one
driving image) the official range is empty, the per-frame count is 0 and the output NaN/black; here
one window starting at ``o`` is used instead. Clips shorter than a window repeat frames inside it,
as officially.
"""

from __future__ import annotations

#: Frames per window, the window length of the UNet's motion modules: they were trained on 16
#: (official ``--num_drivings 16``, ``core/test_xportrait.py`` L443–502).
WINDOW = 16


def window_starts(num_frames: int, offset: int, num_mix: int, window: int = WINDOW) -> list[int]:
    """Start positions (unwrapped, may exceed ``num_frames``) of the windows of one step.

    Raises:
        ValueError: ``num_frames < 1``, ``offset`` outside ``[0, num_frames)``, or ``num_mix``
            outside ``[0, window)``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= offset < num_frames:
        raise ValueError(f"offset must be in [0, {num_frames}), got {offset}")
    if not 0 <= num_mix < window:
        raise ValueError(f"num_mix must be in [0, {window}), got {num_mix}")
    starts = list(range(offset, offset + num_frames - num_mix, window - num_mix))
    return starts or [offset]


def window_plan(num_frames: int, offset: int, num_mix: int, window: int = WINDOW) -> list[list[int]]:
    """Frame indices of every window of one step: a list of ``window``-long lists in ``[0, N)``."""
    return [
        [(s + i) % num_frames for i in range(window)]
        for s in window_starts(num_frames, offset, num_mix, window)
    ]


def frame_counts(num_frames: int, plan: list[list[int]]) -> list[int]:
    """How many windows cover each frame (a frame repeated inside one window counts once)."""
    counts = [0] * num_frames
    for indices in plan:
        for frame in set(indices):
            counts[frame] += 1
    return counts


def last_positions(indices: list[int]) -> tuple[list[int], list[int]]:
    """For a window with repeated frames: (unique frames, position of each one's last occurrence).

    The official accumulation uses non-accumulating index assignment, so for a frame repeated inside
    one window the last write wins; this makes that rule explicit and deterministic on every device.
    """
    last: dict[int, int] = {}
    for position, frame in enumerate(indices):
        last[frame] = position
    return list(last.keys()), list(last.values())
