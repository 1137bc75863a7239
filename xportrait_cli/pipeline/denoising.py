"""One denoising step over overlapping windows: the step body of :class:`.XPortraitPipeline`.

Official source: ``DDIMSampler_ReferenceOnly`` (``ldm/models/diffusion/ddim.py`` L473–631). At each
timestep the N frames are covered by overlapping windows of ``WINDOW`` (16) frames
(:mod:`.windows`); each window gets the appearance bank (:mod:`xportrait_cli.models.reference`), the
two ControlNets' residuals (:mod:`.control_residuals`) and a classifier-free guided noise prediction
(:mod:`.guidance`); the windows' predictions are averaged per frame and one scheduler update moves
all N latents.

These methods live in :class:`WindowDenoisingMixin`, which :class:`.XPortraitPipeline` inherits, as
diffusers keeps its windowed AnimateDiff sampling in ``AnimateDiffFreeNoiseMixin``
(``diffusers/pipelines/free_noise_utils.py``); they use the pipeline's network calls
(:mod:`.network_calls`), execution device and dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler, LCMScheduler

from xportrait_cli.models.reference import ReferenceBank
from xportrait_cli.pipeline.control_residuals import ControlResiduals, Residuals
from xportrait_cli.pipeline.frames import ConditioningFrames
from xportrait_cli.pipeline.guidance import is_guided
from xportrait_cli.pipeline.randomness import RandomDraws
from xportrait_cli.pipeline.schedule import q_sample_coefficients
from xportrait_cli.pipeline.windows import last_positions, window_plan


@dataclass(frozen=True)
class StepSettings:
    """The settings of one call that every denoising step reads (see :meth:`XPortraitPipeline.__call__`
    for each; ``timesteps`` is the whole schedule, in sampling order)."""

    timesteps: list[int]
    num_mix: int
    guidance_scale: float
    guidance_interval: tuple[float, float]
    control_mode: str
    reference_mode: str
    noised_reference: bool
    batch_guidance: bool
    reuse_controlnet: bool
    scheduler: str


class WindowDenoisingMixin:
    """The denoising step of :class:`.XPortraitPipeline` and the per-window work it is made of."""

    _execution_device: torch.device
    dtype: torch.dtype

    # One step
    @torch.no_grad()
    def denoise_step(
        self,
        latents: torch.Tensor,
        step_index: int,
        *,
        frames: ConditioningFrames,
        references: list[torch.Tensor],
        draws: RandomDraws,
        sampler: DDIMScheduler | LCMScheduler,
        settings: StepSettings,
    ) -> dict[str, Any]:
        """One denoising step of all N frames (official ``ddim.py`` L473–563).

        1. plan the step's windows from ``draws.offsets[step_index]`` (:func:`.windows.window_plan`);
        2. for each window: the appearance bank (recorded once per step when it can be shared,
           else per window, :meth:`_window_bank`), the ControlNet residuals (:meth:`_residual_sources`)
           and the guided noise prediction (:meth:`guided_noise`);
        3. average the windows' predictions per frame (a frame repeated inside a window counts its
           last occurrence, :func:`.windows.last_positions`);
        4. one scheduler update of all N latents (LCM draws its noise from
           :meth:`.RandomDraws.step_generator`).

        Args:
            latents: ``(N, 4, h, w)`` float32 on the CPU, at ``settings.timesteps[step_index]``.
            step_index: 0-based position in ``settings.timesteps``.
            frames: the N frames' conditioning; references: the reference latents, the source's first
                (``(1, …)`` shared or ``(N, …)`` per frame), then the extra portraits' ``(1, …)``.
            draws: the run's randomness; sampler: the run's scheduler (:func:`.schedule.make_sampler`).

        Returns:
            The callback state: ``latents`` (after the update, ``(N, 4, h, w)``), ``noise_pred`` (the
            averaged prediction, same shape), ``pred_original_sample`` and ``windows`` (the plan).
        """
        timestep = settings.timesteps[step_index]
        num_frames = latents.shape[0]
        plan = window_plan(num_frames, draws.offsets[step_index], settings.num_mix)
        per_window_bank = settings.reference_mode == "per-frame" or settings.noised_reference
        shared_bank = None if per_window_bank else self.record_bank(references, timestep)
        guided = is_guided(
            step_index, len(settings.timesteps), settings.guidance_scale, settings.guidance_interval
        )
        motion = guided and settings.control_mode == "motion-guidance"
        controls = self._residual_sources(
            latents, timestep, frames, plan, reuse=settings.reuse_controlnet, motion=motion
        )
        noise_pred_sum = torch.zeros_like(latents)
        counts = torch.zeros(num_frames, device=latents.device)
        for window, indices in enumerate(plan):
            bank = shared_bank
            if per_window_bank:
                bank = self._window_bank(
                    references, indices, window, step_index, draws, sampler.alphas_cumprod, settings
                )
            noise_pred = self.guided_noise(
                latents[indices],
                timestep,
                controls[0](indices),
                bank,
                settings.guidance_scale,
                settings.batch_guidance,
                guided=guided,
                uncond_residuals=controls[1](indices) if motion else None,
            )
            unique, positions = last_positions(indices)
            noise_pred_sum[unique] += noise_pred[positions].to(noise_pred_sum.device)
            counts[unique] += 1
        noise_pred = noise_pred_sum / counts.view(-1, 1, 1, 1)
        if settings.scheduler == "lcm":
            out = sampler.step(noise_pred, timestep, latents, generator=draws.step_generator(step_index))
            pred_original = out.denoised
        else:
            out = sampler.step(noise_pred, timestep, latents)
            pred_original = out.pred_original_sample
        return {
            "latents": out.prev_sample,
            "noise_pred": noise_pred,
            "pred_original_sample": pred_original,
            "windows": plan,
        }

    # One window
    @torch.no_grad()
    def guided_noise(
        self,
        latents: torch.Tensor,
        timestep: int,
        residuals: Residuals,
        bank: ReferenceBank,
        guidance_scale: float,
        batch_guidance: bool,
        *,
        guided: bool = True,
        uncond_residuals: Residuals | None = None,
    ) -> torch.Tensor:
        """Guided noise prediction ``(L, 4, h, w)`` float32 for one window of ``L = WINDOW`` latents.

        cond: appearance bank + ControlNet ``residuals`` (one row per window frame, from
        :meth:`control_residuals`) + main UNet. uncond (:mod:`.guidance`): main UNet with motion
        modules only (``controlnet-important``), or, when ``uncond_residuals`` (the zero-hint
        residuals) are given, also with the bank and those residuals (``motion-guidance``).
        ``batch_guidance`` runs both in one batch of 2L ``[uncond; cond]``, else in sequence.
        ``guided=False`` runs the conditional pass alone and returns its prediction (scale 1, or a
        step outside the guidance interval). Official: ``p_sample_ddim`` (``ddim.py`` L566–631).
        """
        window_length = latents.shape[0]
        x = latents.to(self._execution_device, self.dtype)
        t = torch.full((window_length,), timestep, device=self._execution_device, dtype=torch.long)
        down, mid = residuals
        if not guided:
            return self.predict_noise(
                x, t, window_length=window_length, bank=bank, residuals=(down, mid)
            ).float()
        motion = uncond_residuals is not None
        if batch_guidance:
            u_down, u_mid = (
                uncond_residuals if motion else ([torch.zeros_like(r) for r in down], torch.zeros_like(mid))
            )
            noise_pred = self.predict_noise(
                torch.cat([x, x]),
                torch.cat([t, t]),
                window_length=window_length,
                bank=bank.repeat_rows(2) if motion else bank,
                residuals=(
                    [torch.cat([u, r]) for u, r in zip(u_down, down, strict=True)],
                    torch.cat([u_mid, mid]),
                ),
                skip_rows=0 if motion else window_length,
            ).float()
            noise_pred_uncond, noise_pred_cond = noise_pred[:window_length], noise_pred[window_length:]
        else:
            noise_pred_cond = self.predict_noise(
                x, t, window_length=window_length, bank=bank, residuals=(down, mid)
            ).float()
            if motion:
                noise_pred_uncond = self.predict_noise(
                    x, t, window_length=window_length, bank=bank, residuals=uncond_residuals
                ).float()
            else:
                noise_pred_uncond = self.predict_noise(x, t, window_length=window_length).float()
        return noise_pred_uncond + guidance_scale * (noise_pred_cond - noise_pred_uncond)

    # ControlNets (per frame)
    @torch.no_grad()
    def control_residuals(
        self,
        latents: torch.Tensor,
        timestep: int,
        frames: ConditioningFrames,
        indices: Sequence[int],
        zero_hint: bool = False,
    ) -> Residuals:
        """Summed global + local ControlNet residuals of frames ``indices`` (one row each), from all N
        ``latents`` and the frames' hints; only these frames' hints are read. ``zero_hint``: both hints
        are 0.0 (mid-grey), the unconditional input of ``motion-guidance``; no hint is read."""
        x = latents[list(indices)].to(self._execution_device, self.dtype)
        t = torch.full((x.shape[0],), timestep, device=self._execution_device, dtype=torch.long)
        if zero_hint:
            hint = torch.zeros(
                (x.shape[0], 3, x.shape[2] * 8, x.shape[3] * 8),
                device=self._execution_device,
                dtype=self.dtype,
            )
            return self.controlnet_residuals(x, t, hint, hint)
        return self.controlnet_residuals(
            x,
            t,
            frames.global_hints(indices).to(self._execution_device, self.dtype),
            frames.local_hints(indices).to(self._execution_device, self.dtype),
        )

    def _residual_sources(
        self,
        latents: torch.Tensor,
        timestep: int,
        frames: ConditioningFrames,
        plan: list[list[int]],
        *,
        reuse: bool,
        motion: bool,
    ) -> list[Callable[[Sequence[int]], Residuals]]:
        """Per-window residual getters of one step: ``[hints]``, plus ``zero-hint`` for
        ``motion-guidance``; each reuses rows across windows (:class:`.ControlResiduals`) when ``reuse``."""
        sources = []
        for zero_hint in (False, True)[: 1 + motion]:
            compute = functools.partial(
                self.control_residuals, latents, timestep, frames, zero_hint=zero_hint
            )
            sources.append(ControlResiduals(plan, compute) if reuse else compute)
        return sources

    # Appearance net
    def record_bank(self, references: list[torch.Tensor], timestep: int) -> ReferenceBank:
        """Appearance-net bank for one or more reference latents ``(R, 4, h, w)``, concatenated along
        tokens (official ``more_source_image_pattern``)."""
        bank = None
        for latents in references:
            t = torch.full((latents.shape[0],), timestep, device=self._execution_device, dtype=torch.long)
            recorded = self.record_reference(latents.to(self._execution_device, self.dtype), t)
            bank = recorded if bank is None else bank.concat(recorded)
        return bank

    def _window_bank(
        self,
        references: list[torch.Tensor],
        indices: list[int],
        window: int,
        step_index: int,
        draws: RandomDraws,
        alphas_cumprod: torch.Tensor,
        settings: StepSettings,
    ) -> ReferenceBank:
        """The bank of one window when it cannot be shared by the step: the window's per-frame
        reference rows, and/or the reference noised to the step's timestep with the window's draw
        (official ``wonoise=False``, ``q_sample(ref, t)``). Extra references stay clean."""
        timestep = settings.timesteps[step_index]
        reference = references[0][indices] if settings.reference_mode == "per-frame" else references[0]
        if settings.noised_reference:
            noise = draws.reference_noise(step_index, window, tuple(reference.shape))
            c1, c2 = q_sample_coefficients(alphas_cumprod, timestep)
            reference = c1 * reference + c2 * noise.to(reference.device)
        return self.record_bank([reference] + references[1:], timestep)
