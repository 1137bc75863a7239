"""``XPortraitPipeline``: the official windowed DDIM sampler, a diffusers ``DiffusionPipeline``.

Official source: ``DDIMSampler_ReferenceOnly`` (``ldm/models/diffusion/ddim.py`` L473–631) driven by
``core/test_xportrait.py`` (``visualize_mm``). One call:

1. check inputs;
2. encode the source once (VAE posterior mean and std) and the reference latents;
3. prepare latents: ``x_T = sqrt(ᾱ999)·z + sqrt(1-ᾱ999)·ε`` with one posterior sample ``z`` per frame
   of the source, or of an init video's frames (official ``--initial_facevid2vid_results``);
4. denoise (:meth:`~.denoising.WindowDenoisingMixin.denoise_step`): at each timestep, windows of
   ``WINDOW`` (16) frames (random offset, circular), classifier-free guidance
   ``noise_pred_uncond + scale·(noise_pred_cond - noise_pred_uncond)`` per window (:mod:`.guidance`:
   control mode, steps without guidance), uniform average per frame, one DDIM (or LCM) update of all
   N frames; the ControlNets run once per frame per step (:class:`.ControlResiduals`: frames shared
   by overlapping windows reuse their residuals); the reference latents optionally noised per window
   (official ``wonoise=False``);
5. decode in chunks.

Conditioning is read per window from a frame source (:class:`.ConditioningFrames`: the prepared
frame store, or :class:`.TensorFrames` in memory), and the latents of all N frames stay in CPU memory
(64 KiB a frame at 512²: ``4 × 64 × 64`` float32) while only a window's move to the device, so device
memory does not grow with the length of the video.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline

from xportrait_cli.models.reference_net import ReferenceNet
from xportrait_cli.models.unet import XPortraitUNet
from xportrait_cli.pipeline.defaults import DEFAULT_REFERENCE_MODE, OFFICIAL_DEFAULTS, REFERENCE_MODES
from xportrait_cli.pipeline.denoising import StepSettings, WindowDenoisingMixin
from xportrait_cli.pipeline.frames import ConditioningFrames, InitFrames
from xportrait_cli.pipeline.guidance import CONTROL_MODES, check_interval
from xportrait_cli.pipeline.memory import release_cached_memory
from xportrait_cli.pipeline.network_calls import NetworkCallsMixin
from xportrait_cli.pipeline.output import XPortraitPipelineOutput, to_uint8
from xportrait_cli.pipeline.randomness import RandomDraws
from xportrait_cli.pipeline.schedule import make_sampler, q_sample_coefficients, sampling_timesteps
from xportrait_cli.pipeline.timesteps import NUM_TRAIN_TIMESTEPS
from xportrait_cli.pipeline.windows import WINDOW

log = logging.getLogger(__name__)

StepCallback = Callable[["XPortraitPipeline", int, int, dict[str, Any]], "dict[str, Any] | None"]
#: The noisiest timestep, where the initial latents are made (official ``q_sample`` at ``t = 999``).
LAST_TIMESTEP = NUM_TRAIN_TIMESTEPS - 1


class XPortraitPipeline(NetworkCallsMixin, WindowDenoisingMixin, DiffusionPipeline):
    """The X-Portrait sampler as a diffusers pipeline. ``pipe(source, frames, ...)``; see :meth:`__call__`.

    Components (each saved in its own subfolder by ``save_pretrained``; ``model_index.json`` names
    their classes): ``unet`` (:class:`.XPortraitUNet`: SD-1.5 UNet + motion modules + the empty
    prompt's embedding), ``reference_net`` (:class:`.ReferenceNet`, the appearance net),
    ``global_controlnet`` and ``local_controlnet`` (diffusers ``ControlNetModel``: hints are the
    aligned driving frame, and the eye/mouth patches with -1 elsewhere, in [-1, 1]), ``vae``
    (``AutoencoderKL``) and ``scheduler`` (``DDIMScheduler`` with the official config, for diffusers'
    tools: each call builds its sampler from the official float64 schedule and timesteps,
    :func:`.schedule.make_sampler`, as no scheduler config can state them). Load with
    ``XPortraitPipeline.from_pretrained(folder_or_hub_id, dtype=torch.float16)``
    (:mod:`.loading` adds the strict key check and the official ``.th``).

    ``callback_on_step_end(pipe, step_index, timestep, state)`` runs after each DDIM update; ``state``
    holds ``latents`` (all N frames), ``noise_pred`` (the averaged guided noise prediction),
    ``pred_original_sample`` and ``windows`` (:meth:`denoise_step`). Setting ``pipe.interrupt = True``
    (or returning ``{"interrupt": True}``) stops the run after that step; returning ``{"latents": x}``
    replaces the latents. Progress bars and per-step checkpoints attach here.
    """

    model_cpu_offload_seq = "reference_net->global_controlnet->local_controlnet->unet->vae"

    def __init__(
        self,
        unet: XPortraitUNet,
        reference_net: ReferenceNet,
        global_controlnet: ControlNetModel,
        local_controlnet: ControlNetModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet,
            reference_net=reference_net,
            global_controlnet=global_controlnet,
            local_controlnet=local_controlnet,
            vae=vae,
            scheduler=scheduler,
        )
        self.interrupt = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> XPortraitPipeline:
        """diffusers' ``from_pretrained`` (a folder or a hub repo id of one; ``dtype``, ``device_map``,
        ...), after checking the folder's format and every component's tensor keys
        and shapes (:func:`.loading.check_folder`; diffusers only warns on unexpected ones).

        Raises:
            CheckpointError: an old-format folder, or a component whose tensors do not fit
                (naming the component and the keys).
        """
        from xportrait_cli.pipeline.loading import check_folder, resolve_folder

        hub = {k: kwargs.pop(k) for k in ("revision", "token", "cache_dir") if k in kwargs}
        folder = resolve_folder(pretrained_model_name_or_path, **hub)
        check_folder(folder)
        return super().from_pretrained(folder, **kwargs)

    # 1. Check inputs
    @staticmethod
    def check_inputs(
        *,
        source: torch.Tensor,
        frames: ConditioningFrames,
        num_inference_steps: int,
        guidance_scale: float,
        num_mix: int,
        reference_mode: str,
        control_mode: str,
        guidance_interval: tuple[float, float],
        scheduler: str,
        draws: RandomDraws | None,
    ) -> None:
        """Validate the call's arguments (named as in :meth:`__call__`).

        Raises:
            ValueError: naming the first bad argument and its value.
        """
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
        if control_mode not in CONTROL_MODES:
            raise ValueError(f"control_mode must be one of {CONTROL_MODES}, got {control_mode!r}")
        check_interval(guidance_interval)

    # 2. Encode source
    @torch.no_grad()
    def encode_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior ``(mean, std)`` of ``(n, 3, S, S)`` images in [-1, 1]; each ``(n, 4, S/8, S/8)``
        float32 (logvar clamped to [-30, 20] by diffusers, as officially)."""
        posterior = self.vae.encode(images.to(self._execution_device, self.dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    def reference_latents(
        self, mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Scaled reference latents from a posterior ``(mean, std)``, each ``(1, 4, h, w)``: the mean
        (``noise`` None, shared) or one sample per row of ``noise`` ``(N, 4, h, w)`` (official
        ``get_cond_control``: a ``.sample()`` per frame)."""
        scale = self.scale_factor
        return scale * (mean if noise is None else mean + std * noise.to(mean.device))

    def encode_init_frames(
        self, init_frames: InitFrames, num_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, std)`` ``(N, 4, h, w)`` on the CPU of the first ``num_frames`` init frames,
        encoded ``WINDOW`` (16) at a time (official chunking).

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
    def prepare_latents(
        self, mean: torch.Tensor, std: torch.Tensor, draws: RandomDraws, alphas_cumprod: torch.Tensor
    ) -> torch.Tensor:
        """``x_T`` ``(N, 4, h, w)`` float32 on the CPU: each frame's posterior sample noised to t = 999
        (q_sample). ``mean``/``std``: ``(1, 4, h, w)`` (the source, broadcast) or ``(N, 4, h, w)``."""
        mean, std = mean.cpu(), std.cpu()
        z = self.scale_factor * (mean + std * draws.init_posterior_noise)
        c1, c2 = q_sample_coefficients(alphas_cumprod, LAST_TIMESTEP)
        return c1 * z + c2 * draws.init_eps

    # 5. Decode
    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int = 2) -> Iterator[np.ndarray]:
        """Decode ``(N, 4, h, w)`` latents ``decode_chunk_size`` frames at a time; yields ``(n, S, S, 3)``
        uint8 chunks in frame order (official: divide by the scale factor, decode, clamp to [-1, 1]).

        When a chunk runs out of device memory (``torch.OutOfMemoryError``) the chunk size is halved
        and the same frames are decoded again (a warning is logged); at one frame the error is raised.
        Each frame is decoded on its own (the VAE has no temporal layers), but a different chunk size
        runs the convolutions at another batch size, which can round differently: a frame may then
        differ by one grey level (``tests/test_pipeline.py`` holds it to at most 1).
        """
        vae, chunk, start = self.vae, decode_chunk_size, 0
        while start < latents.shape[0]:
            # scaled in the latents' dtype (fp32), then cast: one rounding to half precision, not two
            z = (latents[start : start + chunk].to(self._execution_device) / self.scale_factor).to(self.dtype)
            try:
                decoded = vae.decode(z).sample
            except torch.OutOfMemoryError:
                if chunk == 1:
                    raise
                del z
                release_cached_memory(self._execution_device)
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
        num_inference_steps: int = OFFICIAL_DEFAULTS.num_inference_steps,
        guidance_scale: float = OFFICIAL_DEFAULTS.guidance_scale,
        num_mix: int = OFFICIAL_DEFAULTS.num_mix,
        seed: int = OFFICIAL_DEFAULTS.seed,
        reference_mode: str = DEFAULT_REFERENCE_MODE,
        references: Sequence[torch.Tensor] = (),
        batch_guidance: bool = False,
        reuse_controlnet: bool = True,
        init_frames: InitFrames | None = None,
        control_mode: str = OFFICIAL_DEFAULTS.control_mode,
        noised_reference: bool = OFFICIAL_DEFAULTS.noised_reference,
        guidance_interval: tuple[float, float] = OFFICIAL_DEFAULTS.guidance_interval,
        scheduler: str = OFFICIAL_DEFAULTS.scheduler,
        draws: RandomDraws | None = None,
        latents: torch.Tensor | None = None,
        start_step: int = 0,
        callback_on_step_end: StepCallback | None = None,
        output_type: str = "uint8",
        decode_chunk_size: int = 2,
    ) -> XPortraitPipelineOutput:
        """Animate ``source`` with the motion in ``frames``.

        The defaults of the sampling options are the official settings (:data:`.OFFICIAL_DEFAULTS`).

        Args:
            source: portrait ``(1, 3, S, S)`` float in [-1, 1], S a multiple of 64 (512 as trained).
            frames: N frames of conditioning (:class:`.ConditioningFrames`), hints ``(n, 3, S, S)``.
            num_inference_steps: official meaning: timesteps ``arange(0, 1000, 1000 // S) + 1``, so 30
                gives 31 DDIM steps (:mod:`.timesteps`; ``scheduler="lcm"``: S steps, S <= 50).
            guidance_scale: classifier-free guidance scale (official ``uc_scale`` 5); at exactly 1
                the unconditional pass is skipped (same prediction up to rounding, half the UNet work).
            num_mix: overlap between consecutive ``WINDOW``-frame (16) windows (official 4).
            seed: source of every draw when ``draws`` is None (see :mod:`.randomness`).
            reference_mode: ``"shared"`` (reference net once per step at batch 1 from the posterior
                mean) or ``"per-frame"`` (official: one posterior sample per frame, for parity).
            references: extra portraits ``(1, 3, S, S)`` whose reference tokens are concatenated
                (official ``more_source_image_pattern``).
            batch_guidance: run the cond and uncond passes in one batch (more memory, faster on GPU).
            reuse_controlnet: run the ControlNets once per frame per step, reusing the residuals of
                frames shared by overlapping windows (:class:`.ControlResiduals`; same result). False
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
                LCM-LoRA; its per-step noise comes from :meth:`.RandomDraws.step_generator`).
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
            source=source,
            frames=frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_mix=num_mix,
            reference_mode=reference_mode,
            control_mode=control_mode,
            guidance_interval=guidance_interval,
            scheduler=scheduler,
            draws=draws,
        )
        num_frames = len(frames)
        timesteps = sampling_timesteps(num_inference_steps, scheduler)
        sampler = make_sampler(num_inference_steps, scheduler)
        settings = StepSettings(
            timesteps=timesteps,
            num_mix=num_mix,
            guidance_scale=guidance_scale,
            guidance_interval=guidance_interval,
            control_mode=control_mode,
            reference_mode=reference_mode,
            noised_reference=noised_reference,
            batch_guidance=batch_guidance,
            reuse_controlnet=reuse_controlnet,
            scheduler=scheduler,
        )
        self.interrupt = False

        # 2. Encode source (once) and references
        mean, std = self.encode_posterior(source)
        per_frame = reference_mode == "per-frame"
        if draws is None:
            draws = RandomDraws.from_seed(seed, num_frames, tuple(mean.shape[1:]), len(timesteps), per_frame)
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
            state = self.denoise_step(
                latents,
                step_index,
                frames=frames,
                references=references,
                draws=draws,
                sampler=sampler,
                settings=settings,
            )
            latents = state["latents"]
            steps_done = step_index + 1
            if callback_on_step_end is not None:
                update = callback_on_step_end(self, step_index, timesteps[step_index], state) or {}
                latents = update.get("latents", latents)
                self.interrupt = self.interrupt or bool(update.get("interrupt", False))
            if self.interrupt:
                break

        # 5. Decode
        frames_u8 = None
        if output_type == "uint8" and not self.interrupt:
            frames_u8 = np.concatenate(list(self.decode_latents(latents, decode_chunk_size)))
        self.maybe_free_model_hooks()  # diffusers' offload hooks (enable_model_cpu_offload), if any
        return XPortraitPipelineOutput(
            latents=latents,
            frames=frames_u8,
            steps_done=steps_done,
            interrupted=self.interrupt,
            timesteps=timesteps,
        )
