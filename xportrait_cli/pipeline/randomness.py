"""Every random draw of a run, made up front from one seed in a documented order.

Official consumption order (golden README, "Randomness"): VAE posterior noise for the N initial
source copies, the q_sample noise, VAE posterior noise for the reference copies, then at each step a
``random.randint(0, N-1)`` window offset. Official seeds cannot be replayed (the official code
consumes the torch RNG for weight initialisation first), so ours is:

1. ``torch.Generator(cpu).manual_seed(seed)``: ``init_posterior_noise`` ``(N, 4, h, w)``, then
   ``init_eps`` ``(N, 4, h, w)``, then ``ref_posterior_noise`` ``(R, 4, h, w)`` (R = N for the
   per-frame reference mode, else 0: the shared reference uses the posterior mean);
2. ``random.Random(seed)``: one ``randint(0, N-1)`` offset per denoising step, in step order.

Draws are made on the CPU, so they do not depend on the device. Because all of them are fixed by the
seed, a run resumed at step k replays exactly the draws of an uninterrupted run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class RandomDraws:
    """Injected randomness (golden replay) or draws made from a seed (:meth:`from_seed`).

    Attributes:
        init_posterior_noise: ``(N, 4, h, w)`` standard normal, one VAE posterior sample per frame.
        init_eps: ``(N, 4, h, w)`` standard normal, the q_sample noise at t = 999.
        ref_posterior_noise: ``(R, 4, h, w)`` standard normal for per-frame references, or None.
        offsets: window offset of each denoising step, each in ``[0, N)``.
    """

    init_posterior_noise: torch.Tensor
    init_eps: torch.Tensor
    ref_posterior_noise: torch.Tensor | None
    offsets: list[int]

    @classmethod
    def from_seed(
        cls,
        seed: int,
        num_frames: int,
        latent_shape: tuple[int, int, int],
        num_steps: int,
        per_frame_reference: bool,
    ) -> RandomDraws:
        """Draw everything for ``num_frames`` frames and ``num_steps`` steps from ``seed``."""
        generator = torch.Generator("cpu").manual_seed(seed)
        shape = (num_frames, *latent_shape)
        init_posterior_noise = torch.randn(shape, generator=generator)
        init_eps = torch.randn(shape, generator=generator)
        ref = torch.randn(shape, generator=generator) if per_frame_reference else None
        rng = random.Random(seed)
        offsets = [rng.randint(0, num_frames - 1) for _ in range(num_steps)]
        return cls(init_posterior_noise, init_eps, ref, offsets)
