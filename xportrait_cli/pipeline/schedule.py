"""The official diffusion schedule and the schedulers that step it.

``betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)**2`` and ``alphas_cumprod`` are computed in
float64, then cast to float32, as the official LDM buffers (``ldm/models/diffusion/ddpm.py``
``register_schedule``, ``linear_start 0.00085``/``linear_end 0.012`` in the model config). DDIM steps
use diffusers' ``DDIMScheduler`` (eta 0, ``set_alpha_to_one=False`` so the final previous alpha is
``alphas_cumprod[0]``) with the official timesteps of :func:`.timesteps.official_timesteps`
(``num_inference_steps`` keeps the official meaning: S = 30 gives **31** steps).

``scheduler="lcm"`` (experimental, for an LCM-LoRA) uses diffusers' ``LCMScheduler`` on the same
``alphas_cumprod``, with its own timestep rule (S steps picked from 50 "original" steps, e.g. S = 4
gives 999, 759, 499, 259); the initial latents stay the official q_sample at t = 999.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, LCMScheduler

from xportrait_cli.pipeline.timesteps import (
    LCM_ORIGINAL_STEPS,
    NUM_TRAIN_TIMESTEPS,
    SCHEDULERS,
    official_timesteps,
)

BETA_START = 0.00085
BETA_END = 0.012


def alphas_cumprod() -> torch.Tensor:
    """Official ``alphas_cumprod`` ``(1000,)`` float32 (float64 cumulative product, then cast)."""
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
    return torch.from_numpy(np.cumprod(1.0 - betas)).float()


#: The official training noise schedule in diffusers' terms, shared by every scheduler built here (each
#: then takes the exact float64-built :func:`alphas_cumprod` table).
_OFFICIAL_BETAS = dict(
    num_train_timesteps=NUM_TRAIN_TIMESTEPS,
    beta_start=BETA_START,
    beta_end=BETA_END,
    beta_schedule="scaled_linear",
)


#: The official sampler's DDIM config (eta 0 is a ``step`` argument, diffusers' default).
OFFICIAL_DDIM_CONFIG = dict(
    **_OFFICIAL_BETAS,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)


def official_scheduler() -> DDIMScheduler:
    """``DDIMScheduler`` with :data:`OFFICIAL_DDIM_CONFIG`: the pipeline's registered ``scheduler``
    (saved in the converted folder for diffusers' tools). A run steps :func:`make_scheduler`'s copy,
    whose float64-built ``alphas_cumprod`` and official timesteps no scheduler config can state."""
    return DDIMScheduler(**OFFICIAL_DDIM_CONFIG)


def make_scheduler(num_inference_steps: int) -> DDIMScheduler:
    """A ``DDIMScheduler`` reproducing the official sampler exactly (timesteps overridden)."""
    scheduler = official_scheduler()
    scheduler.alphas_cumprod = alphas_cumprod()
    scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    scheduler.set_timesteps(num_inference_steps)
    scheduler.timesteps = torch.tensor(official_timesteps(num_inference_steps), dtype=torch.long)
    return scheduler


def q_sample_coefficients(alphas_cumprod: torch.Tensor, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(ᾱ_t), sqrt(1 - ᾱ_t))`` as float32 scalars (square roots in float64, then cast, as the
    official ``sqrt_alphas_cumprod`` buffers) for ``q_sample(x, t) = c1·x + c2·ε``."""
    a = alphas_cumprod[timestep].double()
    return a.sqrt().float(), (1 - a).sqrt().float()


def lcm_scheduler(num_inference_steps: int) -> LCMScheduler:
    """diffusers' ``LCMScheduler`` on the official ``alphas_cumprod``, timesteps set for S steps.

    Raises:
        ValueError: S outside ``1..LCM_ORIGINAL_STEPS``.
    """
    if not 1 <= num_inference_steps <= LCM_ORIGINAL_STEPS:
        raise ValueError(
            f"num_inference_steps must be in 1..{LCM_ORIGINAL_STEPS} with the lcm scheduler, "
            f"got {num_inference_steps}"
        )
    scheduler = LCMScheduler(
        **_OFFICIAL_BETAS,
        original_inference_steps=LCM_ORIGINAL_STEPS,
        clip_sample=False,
        set_alpha_to_one=True,
    )
    scheduler.alphas_cumprod = alphas_cumprod()
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def sampling_timesteps(num_inference_steps: int, scheduler: str = "ddim") -> list[int]:
    """The timesteps a run visits, in sampling order: :func:`official_timesteps` for ``"ddim"``,
    the ``LCMScheduler`` rule for ``"lcm"``. Raises ``ValueError`` for a bad S or scheduler."""
    if scheduler == "ddim":
        return official_timesteps(num_inference_steps)
    if scheduler == "lcm":
        return [int(t) for t in lcm_scheduler(num_inference_steps).timesteps]
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")


def make_sampler(num_inference_steps: int, scheduler: str = "ddim") -> DDIMScheduler | LCMScheduler:
    """The scheduler object of a run: :func:`make_scheduler` (DDIM) or :func:`lcm_scheduler`."""
    sampling_timesteps(num_inference_steps, scheduler)  # validates
    return make_scheduler(num_inference_steps) if scheduler == "ddim" else lcm_scheduler(num_inference_steps)
