"""The timestep rules of the sampler (pure Python: importable without torch, e.g. by the config).

DDIM (official): ``DDIMSampler.make_schedule`` (``ldm/models/diffusion/ddim.py`` L28–30) calls
``make_ddim_timesteps(ddim_discr_method="uniform")`` (``ldm/modules/diffusionmodules/util.py``):
``c = 1000 // S; arange(0, 1000, c) + 1``, visited in descending order. The step-count assert there
is commented out, so ``num_inference_steps`` S = 30 (``scripts/test_xportrait.sh --ddim_steps 30``)
gives **31** steps (991, 958, …, 34, 1), S = 15 gives 16, S = 25 and S = 20 exactly 25 and 20. An S
whose list contains 999 makes the official sampler index ``alphas_cumprod[1000]`` and crash; those S
(3, 9, 27, 36, 37, 101–111, 251–333, 501–1000) are refused here, computed, not tabulated.

LCM (experimental, diffusers' ``LCMScheduler``): S steps picked from :data:`LCM_ORIGINAL_STEPS`
evenly spaced "original" steps, so S is at most that; the timesteps themselves come from diffusers
(:func:`xportrait_cli.pipeline.schedule.sampling_timesteps`).
"""

from __future__ import annotations

#: Training timesteps of the SD-1.5 DDPM schedule (official ``timesteps: 1000`` in the model config).
NUM_TRAIN_TIMESTEPS = 1000
#: ``scheduler`` values: the official DDIM sampler, or diffusers' LCMScheduler (for an LCM-LoRA).
SCHEDULERS = ("ddim", "lcm")
#: LCM picks its steps from this many evenly spaced "original" steps (diffusers' default, as trained).
LCM_ORIGINAL_STEPS = 50


def _ascending(num_inference_steps: int) -> range:
    """The official ``arange(0, 1000, 1000 // S) + 1`` in ascending order (S in 1..1000)."""
    return range(1, NUM_TRAIN_TIMESTEPS + 1, NUM_TRAIN_TIMESTEPS // num_inference_steps)


def is_valid_step_count(num_inference_steps: object) -> bool:
    """Whether ``num_inference_steps`` is an int in 1..1000 whose official schedule stays below
    timestep 1000 (False for bools, floats and the S listed in the module docstring)."""
    s = num_inference_steps
    if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= NUM_TRAIN_TIMESTEPS:
        return False
    return _ascending(s)[-1] < NUM_TRAIN_TIMESTEPS


def nearest_valid_step_counts(num_inference_steps: int) -> tuple[int, ...]:
    """The valid step counts closest below and above ``num_inference_steps`` (one or two of them,
    ascending), for an error hint: e.g. ``(26, 28)`` for 27, ``(100, 112)`` for 105."""
    s = num_inference_steps
    below = next((k for k in range(s - 1, 0, -1) if is_valid_step_count(k)), None)
    above = next((k for k in range(s + 1, NUM_TRAIN_TIMESTEPS + 1) if is_valid_step_count(k)), None)
    return tuple(k for k in (below, above) if k is not None)


def official_timesteps(num_inference_steps: int) -> list[int]:
    """The official DDIM timesteps in sampling (descending) order, e.g. ``[751, 501, 251, 1]`` for 4.

    Raises:
        ValueError: ``num_inference_steps`` is outside 1..1000 or its schedule reaches timestep 1000
            (see the module docstring; the message names the nearest valid step counts).
    """
    s = num_inference_steps
    if not 1 <= s <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"num_inference_steps must be in 1..{NUM_TRAIN_TIMESTEPS}, got {s}")
    if not is_valid_step_count(s):
        near = " or ".join(map(str, nearest_valid_step_counts(s)))
        raise ValueError(
            f"num_inference_steps={s} gives timestep 1000 in the official schedule "
            f"arange(0, 1000, 1000//{s}) + 1; use {near} instead"
        )
    return list(reversed(_ascending(s)))
