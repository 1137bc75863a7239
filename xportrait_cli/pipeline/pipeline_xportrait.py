"""``XPortraitPipeline``: the official windowed DDIM sampler on :class:`XPortraitNetworks`.

Official source: ``DDIMSampler_ReferenceOnly`` and ``test_xportrait.py`` (spec §3.8–§4). One call:

1. check inputs;
2. encode the source once (VAE posterior mean and std) and the reference latents;
3. prepare latents: ``x_T = sqrt(ᾱ999)·z + sqrt(1-ᾱ999)·ε`` with one posterior sample ``z`` per frame
   of the source, or of an init video's frames (official ``--initial_facevid2vid_results``);
4. denoise: at each timestep, windows of 16 frames (random offset, circular), classifier-free
   guidance ``eps_u + scale·(eps_c - eps_u)`` per window (:mod:`.guidance`: control mode, steps
   without guidance), uniform average per frame, one DDIM (or LCM) update of all N frames; the
   ControlNets run once per frame per step (:class:`ControlResiduals`: frames shared by overlapping
   windows reuse their residuals); the reference latents optionally noised per window
   (official ``wonoise=False``);
5. decode in chunks.

Conditioning is read per window from a frame source (:class:`ConditioningFrames`: the prepared
frame store, or :class:`TensorFrames` in memory), and the latents of all N frames stay in CPU memory
(4 × 64 KB a frame at 512²) while only a window's move to the device, so device memory does not grow
with the length of the video.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from xportrait_cli.models.networks import XPortraitNetworks
from xportrait_cli.models.reference import ReferenceBank
from xportrait_cli.pipeline.guidance import CONTROL_MODES, FULL_INTERVAL, check_interval, is_guided
from xportrait_cli.pipeline.memory import release_cached_memory
from xportrait_cli.pipeline.randomness import RandomDraws
from xportrait_cli.pipeline.schedule import make_sampler, q_sample_coefficients, sampling_timesteps
from xportrait_cli.pipeline.windows import WINDOW, last_positions, window_plan

log = logging.getLogger(__name__)

#: ``reference_mode`` values: one reference computed once per step and shared by every frame (default),
#: or the official per-frame posterior samples (16 appearance-net copies per window; golden parity).
REFERENCE_MODES = ("shared", "per-frame")

StepCallback = Callable[["XPortraitPipeline", int, int, dict[str, Any]], "dict[str, Any] | None"]
#: ControlNet residuals: (12 skip residuals, middle residual), one row per frame.
Residuals = tuple[list[torch.Tensor], torch.Tensor]


class ConditioningFrames(Protocol):
    """Per-frame motion conditioning, read by index (the frame store implements it).

    ``global_hints(indices)`` and ``local_hints(indices)`` return ``(n, 3, S, S)`` float32 in [-1, 1]:
    the aligned driving frames and the eye/mouth patch images (-1 outside the patches).
    """

    def __len__(self) -> int: ...

    def global_hints(self, indices: Sequence[int]) -> torch.Tensor: ...

    def local_hints(self, indices: Sequence[int]) -> torch.Tensor: ...


class InitFrames(Protocol):
    """Frames the initial latents are built from instead of the portrait (official
    ``--initial_facevid2vid_results``): ``frames(indices)`` returns ``(n, 3, S, S)`` float32 in
    [-1, 1], read on demand (the pipeline asks for 16 at a time)."""

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


@dataclass
class XPortraitPipelineOutput:
    """Result of :meth:`XPortraitPipeline.__call__`.

    Attributes:
        latents: final latents ``(N, 4, h, w)`` float32 (or the latents after the last completed step
            when interrupted).
        frames: decoded frames ``(N, S, S, 3)`` uint8 RGB when ``output_type="uint8"``, else None.
        steps_done: denoising steps completed in total (including those before ``start_step``).
        interrupted: True when a callback stopped the run early.
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


class ControlResiduals:
    """ControlNet residuals of one denoising step, computed once per frame and reused across windows.

    Within a step every window runs at the same timestep, and a frame's latents and hints do not change
    before the DDIM update, so the (per-frame, non-temporal) ControlNets give a frame the same
    residuals in every window that covers it. Calling this object with each window's indices, in plan
    order, computes only the frames not seen yet in this step (each at most once, so a window that
    repeats frames, N < 16, computes them once too) and keeps only the rows a later window of the step
    reads: the previous window's ``num_mix`` overlap and the first window's frames that the circular
    last window wraps onto. Memory is therefore bounded by two windows of residuals, whatever N.

    Args:
        plan: the step's windows (:func:`window_plan`), in the order they will be requested.
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
        """Residuals for one window: one row per entry of ``indices`` (next window of the plan)."""
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


class XPortraitPipeline:
    """The X-Portrait sampler. ``pipe(source, frames, ...)``; see :meth:`__call__`.

    ``callback_on_step_end(pipe, step_index, timestep, state)`` runs after each DDIM update; ``state``
    holds ``latents`` (all N frames), ``noise_pred`` (the averaged guided eps), ``pred_original_sample``
    and ``windows``. Setting ``pipe.interrupt = True`` (or returning ``{"interrupt": True}``) stops the
    run after that step. Progress bars and per-step checkpoints attach here.
    """

    def __init__(self, networks: XPortraitNetworks) -> None:
        self.networks = networks
        self.interrupt = False

    @property
    def device(self) -> torch.device:
        return self.networks.device

    @property
    def dtype(self) -> torch.dtype:
        return self.networks.dtype

    # 1. Check inputs
    @staticmethod
    def check_inputs(
        source, frames, num_inference_steps, guidance_scale, num_mix, reference_mode, draws, scheduler="ddim"
    ) -> None:
        """Validate the call's arguments; raises ``ValueError`` naming the argument and its value."""
        if source.ndim != 4 or source.shape[:2] != (1, 3):
            raise ValueError(f"source must be (1, 3, S, S) in [-1, 1], got {tuple(source.shape)}")
        size = source.shape[-1]
        if source.shape[-2] != size or size % 64:
            raise ValueError(
                f"source must be square with a side multiple of 64, got {tuple(source.shape[-2:])}"
            )
        if len(frames) < 1:
            raise ValueError("frames must hold at least one driving frame")
        timesteps = sampling_timesteps(num_inference_steps, scheduler)
        if not 0 <= num_mix < WINDOW:
            raise ValueError(f"num_mix must be in [0, {WINDOW}), got {num_mix}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if reference_mode not in REFERENCE_MODES:
            raise ValueError(f"reference_mode must be one of {REFERENCE_MODES}, got {reference_mode!r}")
        if draws is not None and len(draws.offsets) < len(timesteps):
            raise ValueError("draws.offsets must hold one offset per denoising step")

    # 2. Encode source
    @torch.no_grad()
    def encode_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior ``(mean, std)`` of ``(n, 3, S, S)`` images in [-1, 1]; each ``(n, 4, S/8, S/8)``
        float32 (logvar clamped to [-30, 20] by diffusers, as officially)."""
        self.networks.use("vae")
        posterior = self.networks.vae.encode(images.to(self.device, self.dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    def reference_latents(self, mean, std, noise: torch.Tensor | None) -> torch.Tensor:
        """Scaled reference latents: the posterior mean ``(1, …)`` (shared) or one sample per frame."""
        scale = self.networks.scale_factor
        return scale * (mean if noise is None else mean + std * noise.to(mean.device))

    def encode_init_frames(
        self, init_frames: InitFrames, num_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, std)`` ``(N, 4, h, w)`` on the CPU of the first ``num_frames`` init frames,
        encoded 16 at a time (official chunking).

        Raises:
            ValueError: ``init_frames`` holds fewer than ``num_frames`` frames.
        """
        if len(init_frames) < num_frames:
            raise ValueError(f"init_frames holds {len(init_frames)} frames, {num_frames} needed")
        means, stds = [], []
        for start in range(0, num_frames, WINDOW):
            mean, std = self.encode_posterior(
                init_frames.frames(range(start, min(start + WINDOW, num_frames)))
            )
            means.append(mean.cpu())
            stds.append(std.cpu())
        return torch.cat(means), torch.cat(stds)

    # 3. Prepare latents
    def prepare_latents(self, mean, std, draws: RandomDraws, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """``x_T`` ``(N, 4, h, w)`` float32 on the CPU: each frame's posterior sample noised to t = 999
        (q_sample)."""
        mean, std = mean.cpu(), std.cpu()
        z = self.networks.scale_factor * (mean + std * draws.init_posterior_noise)
        c1, c2 = q_sample_coefficients(alphas_cumprod, 999)
        return c1 * z + c2 * draws.init_eps

    # 4. Denoise (ControlNets, per frame)
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
        x = latents[list(indices)].to(self.device, self.dtype)
        t = torch.full((x.shape[0],), timestep, device=self.device, dtype=torch.long)
        if zero_hint:
            hint = torch.zeros(
                (x.shape[0], 3, x.shape[2] * 8, x.shape[3] * 8), device=self.device, dtype=self.dtype
            )
            return self.networks.controlnet_residuals(x, t, hint, hint)
        return self.networks.controlnet_residuals(
            x,
            t,
            frames.global_hints(indices).to(self.device, self.dtype),
            frames.local_hints(indices).to(self.device, self.dtype),
        )

    # 4. Denoise (one window)
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
        """Guided eps ``(16, 4, h, w)`` float32 for one window.

        cond: appearance bank + ControlNet ``residuals`` (one row per window frame, from
        :meth:`control_residuals`) + main UNet. uncond (:mod:`.guidance`): main UNet with motion
        modules only (``controlnet-important``), or, when ``uncond_residuals`` (the zero-hint
        residuals) are given, also with the bank and those residuals (``motion-guidance``).
        ``batch_guidance`` runs both in one batch of 32 ``[uncond; cond]``, else in sequence.
        ``guided=False`` runs the conditional pass alone and returns its eps (scale 1, or a step
        outside the guidance interval).
        """
        nets = self.networks
        n = latents.shape[0]
        x = latents.to(self.device, self.dtype)
        t = torch.full((n,), timestep, device=self.device, dtype=torch.long)
        down, mid = residuals
        if not guided:
            return nets.predict_noise(x, t, num_frames=n, bank=bank, residuals=(down, mid)).float()
        motion = uncond_residuals is not None
        if batch_guidance:
            u_down, u_mid = (
                uncond_residuals if motion else ([torch.zeros_like(r) for r in down], torch.zeros_like(mid))
            )
            eps = nets.predict_noise(
                torch.cat([x, x]),
                torch.cat([t, t]),
                num_frames=n,
                bank=bank.repeat_rows(2) if motion else bank,
                residuals=(
                    [torch.cat([u, r]) for u, r in zip(u_down, down, strict=True)],
                    torch.cat([u_mid, mid]),
                ),
                skip_rows=0 if motion else n,
            ).float()
            eps_uncond, eps_cond = eps[:n], eps[n:]
        else:
            eps_cond = nets.predict_noise(x, t, num_frames=n, bank=bank, residuals=(down, mid)).float()
            if motion:
                eps_uncond = nets.predict_noise(
                    x, t, num_frames=n, bank=bank, residuals=uncond_residuals
                ).float()
            else:
                eps_uncond = nets.predict_noise(x, t, num_frames=n).float()
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def _residual_sources(self, latents, timestep, frames, plan, reuse: bool, motion: bool) -> list:
        """Per-window residual getters of one step: ``[hints]``, plus ``zero-hint`` for
        ``motion-guidance``; each reuses rows across windows (:class:`ControlResiduals`) when ``reuse``."""
        sources = []
        for zero_hint in (False, True)[: 1 + motion]:

            def compute(indices, zero_hint=zero_hint):
                return self.control_residuals(latents, timestep, frames, indices, zero_hint)

            sources.append(ControlResiduals(plan, compute) if reuse else compute)
        return sources

    def record_bank(self, references: list[torch.Tensor], timestep: int) -> ReferenceBank:
        """Appearance-net bank for one or more reference latents, concatenated along tokens (§3.5)."""
        bank = None
        for latents in references:
            t = torch.full((latents.shape[0],), timestep, device=self.device, dtype=torch.long)
            recorded = self.networks.record_reference(latents.to(self.device, self.dtype), t)
            bank = recorded if bank is None else bank.concat(recorded)
        return bank

    # 5. Decode
    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int = 2) -> Iterator[np.ndarray]:
        """Decode ``(N, 4, h, w)`` latents ``decode_chunk_size`` frames at a time; yields ``(n, S, S, 3)``
        uint8 chunks in frame order (official: divide by the scale factor, decode, clamp to [-1, 1]).

        When a chunk runs out of device memory (``torch.OutOfMemoryError``) the chunk size is halved
        and the same frames are decoded again (a warning is logged); at one frame the error is raised.
        The chunk size does not change the frames (each frame is decoded on its own).
        """
        self.networks.use("vae")
        vae, chunk, start = self.networks.vae, decode_chunk_size, 0
        while start < latents.shape[0]:
            z = latents[start : start + chunk].to(self.device, self.dtype) / self.networks.scale_factor
            try:
                decoded = vae.decode(z).sample
            except torch.OutOfMemoryError:
                if chunk == 1:
                    raise
                del z
                release_cached_memory(self.device)
                chunk = max(1, chunk // 2)
                log.warning("out of memory decoding frames: decoding %d frame(s) at a time", chunk)
                continue
            yield to_uint8(decoded)
            start += z.shape[0]

    @torch.no_grad()
    def __call__(
        self,
        source: torch.Tensor,
        frames: ConditioningFrames,
        *,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        num_mix: int = 4,
        seed: int = 999,
        reference_mode: str = "shared",
        references: Sequence[torch.Tensor] = (),
        batch_guidance: bool = False,
        reuse_controlnet: bool = True,
        init_frames: InitFrames | None = None,
        control_mode: str = "controlnet-important",
        noised_reference: bool = False,
        guidance_interval: tuple[float, float] = FULL_INTERVAL,
        scheduler: str = "ddim",
        draws: RandomDraws | None = None,
        latents: torch.Tensor | None = None,
        start_step: int = 0,
        callback_on_step_end: StepCallback | None = None,
        output_type: str = "uint8",
        decode_chunk_size: int = 2,
    ) -> XPortraitPipelineOutput:
        """Animate ``source`` with the motion in ``frames``.

        Args:
            source: portrait ``(1, 3, S, S)`` float in [-1, 1], S a multiple of 64 (512 as trained).
            frames: N frames of conditioning (:class:`ConditioningFrames`), hints ``(n, 3, S, S)``.
            num_inference_steps: official meaning: timesteps ``arange(0, 1000, 1000 // S) + 1``, so 30
                gives 31 DDIM steps (``scheduler="lcm"``: S steps, S <= 50).
            guidance_scale: classifier-free guidance scale (official ``uc_scale`` 5); at exactly 1
                the unconditional pass is skipped (same eps up to rounding, half the UNet work).
            num_mix: overlap between consecutive 16-frame windows (official 4).
            seed: source of every draw when ``draws`` is None (see :mod:`.randomness`).
            reference_mode: ``"shared"`` (reference net once per step at batch 1 from the posterior
                mean) or ``"per-frame"`` (official: one posterior sample per frame, for parity).
            references: extra portraits ``(1, 3, S, S)`` whose reference tokens are concatenated
                (official ``more_source_image_pattern``).
            batch_guidance: run the cond and uncond passes in one batch (more memory, faster on GPU).
            reuse_controlnet: run the ControlNets once per frame per step, reusing the residuals of
                frames shared by overlapping windows (:class:`ControlResiduals`; same result). False
                recomputes them in every window, as officially.
            init_frames: build the initial latents from these frames (one posterior sample per
                frame, then q_sample at t = 999 with the same draws) instead of the source; at least
                N frames, the first N are used. The reference latents still come from the source.
            control_mode: ``"controlnet-important"`` (official default) or ``"motion-guidance"``
                (the unconditional pass also gets the reference and zero-hint ControlNets), see
                :mod:`.guidance`.
            noised_reference: before each window's calls, replace the reference latents by
                ``q_sample(ref, t)`` at the step's timestep with a fresh draw per window (official
                ``wonoise=False``); in ``shared`` reference mode one noisy reference per window (the
                bank is then recorded per window). Extra ``references`` stay clean.
            guidance_interval: ``(lo, hi)`` fractions of the schedule: steps outside run without
                guidance (:func:`.guidance.is_guided`); ``(0, 1)`` guides all, as officially.
            scheduler: ``"ddim"`` (official) or ``"lcm"`` (diffusers ``LCMScheduler``, for an
                LCM-LoRA; its per-step noise comes from :meth:`RandomDraws.step_generator`).
            draws: injected randomness (golden replay); overrides ``seed``.
            latents, start_step: resume from latents saved after ``start_step`` completed steps.
            callback_on_step_end: see the class docstring.
            output_type: ``"uint8"`` (decode all frames) or ``"latent"`` (no decoding; use
                :meth:`decode_latents` to stream).
            decode_chunk_size: frames per VAE decode call.

        Raises:
            ValueError: an argument is out of range (named in the message).
        """
        # 1. Check inputs
        self.check_inputs(
            source, frames, num_inference_steps, guidance_scale, num_mix, reference_mode, draws, scheduler
        )
        if control_mode not in CONTROL_MODES:
            raise ValueError(f"control_mode must be one of {CONTROL_MODES}, got {control_mode!r}")
        check_interval(guidance_interval)
        num_frames = len(frames)
        timesteps = sampling_timesteps(num_inference_steps, scheduler)
        sampler = make_sampler(num_inference_steps, scheduler)
        self.interrupt = False

        # 2. Encode source (once) and references
        mean, std = self.encode_posterior(source)
        latent_shape = tuple(mean.shape[1:])
        per_frame = reference_mode == "per-frame"
        if draws is None:
            draws = RandomDraws.from_seed(seed, num_frames, latent_shape, len(timesteps), per_frame)
        reference = self.reference_latents(mean, std, draws.ref_posterior_noise if per_frame else None)
        references = [reference] + [
            self.reference_latents(*self.encode_posterior(r), None) for r in references
        ]

        # 3. Prepare latents
        if latents is None and init_frames is not None:
            init_mean, init_std = self.encode_init_frames(init_frames, num_frames)
            latents = self.prepare_latents(init_mean, init_std, draws, sampler.alphas_cumprod)
        elif latents is None:
            latents = self.prepare_latents(mean, std, draws, sampler.alphas_cumprod)
        latents = latents.to("cpu", torch.float32)  # all N frames stay in CPU memory; windows move

        # 4. Denoise
        steps_done = start_step
        for step_index in range(start_step, len(timesteps)):
            timestep = timesteps[step_index]
            plan = window_plan(num_frames, draws.offsets[step_index], num_mix)
            per_window_bank = per_frame or noised_reference
            shared_bank = None if per_window_bank else self.record_bank(references, timestep)
            guided = is_guided(step_index, len(timesteps), guidance_scale, guidance_interval)
            motion = guided and control_mode == "motion-guidance"
            eps_sum = torch.zeros_like(latents)
            counts = torch.zeros(num_frames, device=latents.device)
            controls = self._residual_sources(latents, timestep, frames, plan, reuse_controlnet, motion)
            for window, indices in enumerate(plan):
                if per_window_bank:
                    reference = references[0][indices] if per_frame else references[0]
                    if noised_reference:
                        noise = draws.reference_noise(step_index, window, tuple(reference.shape))
                        c1, c2 = q_sample_coefficients(sampler.alphas_cumprod, timestep)
                        reference = c1 * reference + c2 * noise.to(reference.device)
                    bank = self.record_bank([reference] + references[1:], timestep)
                else:
                    bank = shared_bank
                eps = self.guided_noise(
                    latents[indices],
                    timestep,
                    controls[0](indices),
                    bank,
                    guidance_scale,
                    batch_guidance,
                    guided=guided,
                    uncond_residuals=controls[1](indices) if motion else None,
                )
                unique, positions = last_positions(indices)
                eps_sum[unique] += eps[positions].to(eps_sum.device)
                counts[unique] += 1
            noise_pred = eps_sum / counts.view(-1, 1, 1, 1)
            if scheduler == "lcm":
                out = sampler.step(noise_pred, timestep, latents, generator=draws.step_generator(step_index))
                pred_original = out.denoised
            else:
                out = sampler.step(noise_pred, timestep, latents)
                pred_original = out.pred_original_sample
            latents = out.prev_sample
            steps_done = step_index + 1
            if callback_on_step_end is not None:
                state = {
                    "latents": latents,
                    "noise_pred": noise_pred,
                    "pred_original_sample": pred_original,
                    "windows": plan,
                }
                update = callback_on_step_end(self, step_index, timestep, state) or {}
                latents = update.get("latents", latents)
                self.interrupt = self.interrupt or bool(update.get("interrupt", False))
            if self.interrupt:
                break

        # 5. Decode
        frames_u8 = None
        if output_type == "uint8" and not self.interrupt:
            frames_u8 = np.concatenate(list(self.decode_latents(latents, decode_chunk_size)))
        return XPortraitPipelineOutput(
            latents=latents,
            frames=frames_u8,
            steps_done=steps_done,
            interrupted=self.interrupt,
            timesteps=timesteps,
        )
