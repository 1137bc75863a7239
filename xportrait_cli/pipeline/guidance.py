"""Classifier-free guidance options: what the unconditional pass sees, and on which steps it runs.

Control modes (official ``control_mode``: ``ldm/models/diffusion/ddim.py`` L566–631 and
``core/test_xportrait.py`` L321–333; golden cases A and c2):

- ``controlnet-important`` (official ``controlnet_important``, the default): the unconditional pass
  is the main UNet with its motion modules only (no reference bank, no ControlNet residuals), so
  guidance amplifies appearance and motion together.
- ``motion-guidance`` (official: any other value, e.g. ``balance``): the unconditional pass also
  reads the reference bank and gets the ControlNet residuals of a zero hint (0.0, mid-grey; not -1),
  so guidance contrasts only the motion hints. Officially one batched call per window,
  ``[uncond; cond]``; here one batch with ``--batch-guidance on``, else two passes (same math).

Fewer UNet calls: at ``guidance_scale == 1`` the guided eps ``eps_u + 1·(eps_c - eps_u)`` equals
``eps_c`` up to rounding, so the unconditional pass is skipped (half the UNet work). A guidance
interval ``(lo, hi)`` (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves
sample and distribution quality"; diffusers' CFG cut-off callbacks do the same) guides only the steps
whose position ``k / (K - 1)`` in the schedule (k = 0 the noisiest of K steps) lies in
``[lo, hi]``; the other steps run the conditional pass alone. The default ``(0, 1)`` guides every
step, as officially.
"""

from __future__ import annotations

#: ``control_mode`` values (see the module docstring).
CONTROL_MODES = ("controlnet-important", "motion-guidance")
#: Guide every step (official behaviour).
FULL_INTERVAL = (0.0, 1.0)


def step_position(step_index: int, num_steps: int) -> float:
    """Position of step ``step_index`` (0-based, sampling order) in a ``num_steps`` schedule, in
    [0, 1]: 0 for the first (noisiest) step, 1 for the last; 0 when there is one step."""
    return step_index / (num_steps - 1) if num_steps > 1 else 0.0


def is_guided(
    step_index: int, num_steps: int, guidance_scale: float, interval: tuple[float, float] = FULL_INTERVAL
) -> bool:
    """Whether step ``step_index`` runs the unconditional pass: ``guidance_scale != 1`` and the
    step's :func:`step_position` lies in ``interval`` (inclusive)."""
    lo, hi = interval
    return guidance_scale != 1 and lo <= step_position(step_index, num_steps) <= hi


def check_interval(interval: tuple[float, float]) -> None:
    """Raise ``ValueError`` unless ``0 <= lo <= hi <= 1``."""
    lo, hi = interval
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got {tuple(interval)}")
