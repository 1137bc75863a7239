"""What :class:`.XPortraitPipeline` returns: :class:`XPortraitPipelineOutput`, and :func:`to_uint8`
(decoded VAE images to frames)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class XPortraitPipelineOutput:
    """Result of :meth:`XPortraitPipeline.__call__`.

    Attributes:
        latents: final latents ``(N, 4, h, w)`` float32 (or the latents after the last completed step
            when interrupted).
        frames: decoded frames ``(N, S, S, 3)`` uint8 RGB when ``output_type="uint8"``, else None.
        steps_done: denoising steps completed in total (including those before ``start_step``).
        interrupted: True when a callback stopped the run early.
        timesteps: every timestep of the run's schedule, in sampling order (``len(timesteps)`` steps
            in all, e.g. 31 for ``num_inference_steps=30``), including those not run.
    """

    latents: torch.Tensor
    frames: np.ndarray | None = None
    steps_done: int = 0
    interrupted: bool = False
    timesteps: list[int] = field(default_factory=list)


def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """``(n, 3, S, S)`` in [-1, 1] → ``(n, S, S, 3)`` uint8, as the official ``img_as_ubyte((x+1)/2)``
    (x·255 in float32, round half to even, clip)."""
    x = ((decoded.float().clamp(-1, 1) + 1) / 2 * 255).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
