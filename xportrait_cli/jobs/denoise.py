"""Steps 2 and 3 of a job: plan the device memory, then denoise with checkpoints and the
out-of-memory ladder.

Each completed step's latents are saved (:func:`~xportrait_cli.jobs.workdir.save_checkpoint`), so
an interrupted job, or one that ran out of device memory, goes on from its last step with the same
random draws (bit-identical frames).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from xportrait_cli.errors import OutOfMemoryPlanError
from xportrait_cli.events import StepProgress, stage
from xportrait_cli.jobs.networks import NetworksCache, device_name
from xportrait_cli.jobs.prepare import Prepared
from xportrait_cli.jobs.spec import JobRun
from xportrait_cli.jobs.workdir import Checkpoint, load_checkpoint, save_checkpoint
from xportrait_cli.pipeline import XPortraitPipeline
from xportrait_cli.pipeline.host_memory import keep_freed_host_memory
from xportrait_cli.pipeline.memory import (
    MemoryPlan,
    ModelSize,
    device_budget,
    plan_memory,
    release_cached_memory,
)
from xportrait_cli.pipeline.schedule import sampling_timesteps


@dataclass
class Denoised:
    """What step 3 hands to decoding: the final ``latents`` ``(N, 4, h, w)``, the pipeline and the
    memory plan that produced them (smaller than planned after an out-of-memory fallback), and the
    step the job resumed from (None for a fresh start)."""

    latents: torch.Tensor
    pipe: XPortraitPipeline
    memory_plan: MemoryPlan
    resumed_from: int | None


def plan_job_memory(run: JobRun, cache: NetworksCache, networks: XPortraitPipeline) -> MemoryPlan:
    """Step 2: the :class:`MemoryPlan` for these networks on the job's device (weights already
    resident there count as free; ``--batch-guidance``, ``--offload`` and ``--decode-chunk-size``
    are honoured when set); logged on CUDA or when it offloads."""
    opts = run.spec.options
    memory_plan = plan_memory(
        ModelSize.of(networks),
        size=opts.size,
        budget_bytes=device_budget(run.device, cache.resident_bytes()),
        batch_guidance=opts.batch_guidance,
        offload=opts.offload,
        decode_chunk_size=opts.decode_chunk_size,
        device_name=device_name(run.device),
    )
    if run.device.type == "cuda" or memory_plan.offload:
        run.log("info", f"memory plan: {memory_plan.describe()}")
    return memory_plan


def denoise(run: JobRun, cache: NetworksCache, memory_plan: MemoryPlan, prepared: Prepared) -> Denoised:
    """Step 3 (stage ``denoise``): sample from the last :class:`Checkpoint` of this job (or from
    noise), saving a checkpoint after every step. Out of device memory, the job goes on from its last
    checkpoint with :meth:`MemoryPlan.fallback` (the ladder: separate guidance passes, then
    offloading with decode chunks of at most 2) until none is left. On the CPU, glibc is first set
    to keep freed buffers (:func:`~xportrait_cli.pipeline.host_memory.keep_freed_host_memory`).

    Raises:
        OutOfMemoryPlanError: out of memory with the smallest plan (the checkpoint is kept).
    """
    opts = run.spec.options
    total_steps = len(sampling_timesteps(opts.num_inference_steps, opts.scheduler))
    resume = load_checkpoint(run.work, run.digest)
    if resume:
        run.log("info", f"resumed {run.job} from step {resume.steps_done} of {total_steps}")
    resumed_from = resume.steps_done if resume else None

    def on_step(_pipe, step_index: int, timestep: int, state: dict) -> None:
        save_checkpoint(run.work, state["latents"], step_index + 1, run.digest)
        run.events(StepProgress(step_index + 1, total_steps, timestep, len(state["windows"]), job=run.job))
        if run.after_step is not None:
            run.after_step(step_index + 1)

    if run.device.type == "cpu" and keep_freed_host_memory():
        run.log("debug", "host memory: glibc keeps freed buffers for reuse (M_MMAP_MAX 0, no trimming)")
    with stage(run.events, "denoise", job=run.job, total=total_steps), _init_frames(run, prepared) as init:
        while True:
            pipe = cache.place(memory_plan.offload)
            try:
                latents = _sample(pipe, run, prepared, memory_plan, init, resume, on_step)
                return Denoised(latents, pipe, memory_plan, resumed_from)
            except torch.OutOfMemoryError as exc:
                memory_plan = _smaller_plan(memory_plan, exc, run.device)
                resume = load_checkpoint(run.work, run.digest)
                step = resume.steps_done if resume else 0
                message = f"out of memory at step {step + 1}: going on with {memory_plan.describe()}"
                run.log("warning", message)


@contextlib.contextmanager
def _init_frames(run: JobRun, prepared: Prepared) -> Iterator[object | None]:
    """``--init-video``'s frames for the selected driving frames (closed after the block), or None."""
    opts = run.spec.options
    if opts.init_video is None:
        yield None
        return
    from xportrait_cli.video.init_video import open_init_video

    frames = open_init_video(
        opts.init_video, size=opts.size, needed=len(prepared.store), start=opts.start,
        num_frames=opts.frames, stride=opts.stride,
    )  # fmt: skip
    with contextlib.closing(frames):
        yield frames


def _sample(
    pipe: XPortraitPipeline,
    run: JobRun,
    prepared: Prepared,
    memory_plan: MemoryPlan,
    init_frames: object | None,
    resume: Checkpoint | None,
    on_step: Callable,
) -> torch.Tensor:
    """One call of the pipeline with the job's options; the final latents ``(N, 4, h, w)``."""
    opts = run.spec.options
    out = pipe(
        prepared.source,
        prepared.store,
        num_inference_steps=opts.num_inference_steps,
        guidance_scale=opts.guidance_scale,
        num_mix=opts.num_mix,
        seed=opts.seed,
        reference_mode=opts.reference_mode,
        references=prepared.references,
        batch_guidance=memory_plan.batch_guidance,
        init_frames=init_frames,
        control_mode=opts.control_mode,
        noised_reference=opts.noised_reference,
        guidance_interval=opts.guidance_interval,
        scheduler=opts.scheduler,
        latents=resume.latents if resume else None,
        start_step=resume.steps_done if resume else 0,
        callback_on_step_end=on_step,
        output_type="latent",
    )
    return out.latents


def _smaller_plan(memory_plan: MemoryPlan, exc: torch.OutOfMemoryError, device: torch.device) -> MemoryPlan:
    """The next plan down after running out of memory while denoising, or OutOfMemoryPlanError."""
    release_cached_memory(device)
    smaller = memory_plan.fallback()
    if smaller is None:
        raise OutOfMemoryPlanError(
            f"{device_name(device)} ran out of memory with {memory_plan.describe()}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'torch.OutOfMemoryError'}",
            "free memory on the device, lower --size, or run on another device; the job resumes "
            "from its last step",
        ) from exc
    return smaller
