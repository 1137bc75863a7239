"""Every random draw of a run, made up front from one seed in a documented order.

Official consumption order (golden README, "Randomness"): VAE posterior noise for the N initial
source copies, the q_sample noise, VAE posterior noise for the reference copies, then at each step a
``random.randint(0, N-1)`` window offset. Official seeds cannot be replayed (the official code
consumes the torch RNG for weight initialisation first), so ours is:

1. ``torch.Generator(cpu).manual_seed(seed)``: ``init_posterior_noise`` ``(N, 4, h, w)``, then
   ``init_eps`` ``(N, 4, h, w)``, then ``ref_posterior_noise`` ``(R, 4, h, w)`` (R = N for the
   per-frame reference mode, else 0: the shared reference uses the posterior mean);
2. ``random.Random(seed)``: one ``randint(0, N-1)`` offset per denoising step, in step order.
3. Only with ``--noised-reference`` (official ``wonoise=False``): before each window's network calls,
   ``reference_noise(k, j, shape)``, a standard normal of the window's reference shape (16 rows in
   per-frame mode, 1 in shared mode), drawn from its own generator seeded with
   ``derived_seed(seed, "reference-noise", k, j)`` (step k, window j of that step, both 0-based).
   The official order (golden case c3) is the same — step k's offset, then one draw per window in
   plan order — but from the global RNG.
4. Only with ``--scheduler lcm``: the noise LCM adds after step k (``LCMScheduler.step``'s
   ``generator``), from ``step_generator(k)``, seeded with ``derived_seed(seed, "scheduler", k)``.

Draws are made on the CPU, so they do not depend on the device. Because all of them are fixed by the
seed, and the per-window and per-step draws by (seed, step, window) rather than by a running RNG, a
run resumed at step k replays exactly the draws of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import torch


@dataclass
class RandomDraws:
    """Injected randomness (golden replay) or draws made from a seed (:meth:`from_seed`).

    Attributes:
        init_posterior_noise: ``(N, 4, h, w)`` standard normal, one VAE posterior sample per frame.
        init_eps: ``(N, 4, h, w)`` standard normal, the q_sample noise at t = 999.
        ref_posterior_noise: ``(R, 4, h, w)`` standard normal for per-frame references, or None.
        offsets: window offset of each denoising step, each in ``[0, N)``.
        seed: the seed of the per-window and per-step draws (items 3–4 of the module docstring);
            None for fully injected randomness.
        injected_reference_noise: ``{(step, window): tensor}`` replacing :meth:`reference_noise`
            draws (golden replay of case c3).
    """

    init_posterior_noise: torch.Tensor
    init_eps: torch.Tensor
    ref_posterior_noise: torch.Tensor | None
    offsets: list[int]
    seed: int | None = None
    injected_reference_noise: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def reference_noise(self, step: int, window: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal ``shape`` for the noised reference of window ``window`` of step ``step``.

        Raises:
            ValueError: nothing injected for this window and no ``seed`` to draw from.
        """
        if (step, window) in self.injected_reference_noise:
            return self.injected_reference_noise[(step, window)]
        generator = torch.Generator("cpu").manual_seed(self._derived("reference-noise", step, window))
        return torch.randn(shape, generator=generator)

    def step_generator(self, step: int) -> torch.Generator:
        """CPU generator for the scheduler's own noise after step ``step`` (LCM)."""
        return torch.Generator("cpu").manual_seed(self._derived("scheduler", step))

    def _derived(self, *parts: object) -> int:
        if self.seed is None:
            raise ValueError(f"no seed for the {parts[0]} draws of step {parts[1]}: pass RandomDraws.seed")
        return derived_seed(self.seed, *parts)

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
        return cls(init_posterior_noise, init_eps, ref, offsets, seed=seed)


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and labels (SHA-256 of ``"seed/part/..."``): independent streams
    that do not depend on how many draws came before."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
