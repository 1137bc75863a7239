"""Run one job from options to a finished MP4; resumable after a crash.

:func:`run_job` is the recipe, in the order of :meth:`XPortraitPipeline.__call__`'s numbered steps:

0. fingerprint + lock — skip a finished output with the same fingerprint; take the per-job file
   lock; open the working directory (:mod:`xportrait_cli.jobs.workdir`: the resume format).
1. prepare (:func:`_prepare`) — ``--crop`` crops, the portrait's landmarks (stage ``portrait``),
   the driving video into a :class:`~xportrait_cli.framestore.FrameStore` (stage ``align``, reused
   on resume).
2. plan memory (:func:`_plan_memory`) — load the networks (:class:`NetworksCache`) and choose where
   they run (:func:`~xportrait_cli.pipeline.memory.plan_memory`).
3. denoise (:func:`_denoise`) — :class:`XPortraitPipeline` from the last :class:`Checkpoint`; after
   every step the latents are checkpointed atomically; out of device memory, the next smaller
   memory plan goes on from the last checkpoint.
4. decode and write (:func:`_decode_and_write`) — VAE decode in chunks straight into the atomic
   video writer (audio copied, fingerprint in the MP4's metadata; ``--comparison`` teed beside);
   then the working directory is removed.

Re-running a job: a finished output with the same fingerprint is skipped; an unfinished job with the
same fingerprint resumes from its last completed step (bit-identical frames: every random draw is a
function of the seed); a job whose inputs or options changed restarts. The events emitted are the
contract in :mod:`xportrait_cli.events`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from filelock import FileLock, Timeout

from xportrait_cli.errors import OutOfMemoryPlanError, XPortraitError
from xportrait_cli.events import (
    EventSink,
    FramesWritten,
    JobDone,
    JobSkipped,
    JobStarted,
    Log,
    StepProgress,
    null_sink,
    stage,
)
from xportrait_cli.jobs.fingerprint import TAG_PREFIX, job_fingerprint, output_fingerprint
from xportrait_cli.jobs.networks import (
    NetworksCache,
    device_name,
    lora_file,
    model_path,
    resolve_device,
    resolve_dtype,
)
from xportrait_cli.jobs.preflight import check_disk_space, check_inputs, disk_full_error, is_disk_full
from xportrait_cli.jobs.spec import JobSpec
from xportrait_cli.jobs.workdir import (
    STORE_DIR,
    Checkpoint,
    has_checkpoint,
    load_checkpoint,
    open_work_dir,
    save_checkpoint,
)
from xportrait_cli.models import XPortraitNetworks
from xportrait_cli.pipeline import XPortraitPipeline
from xportrait_cli.pipeline.memory import (
    MemoryPlan,
    ModelSize,
    device_budget,
    plan_memory,
    release_cached_memory,
)
from xportrait_cli.pipeline.schedule import sampling_timesteps

if TYPE_CHECKING:
    from xportrait_cli.face.crop import CropInfo
    from xportrait_cli.framestore import FrameStore

log = logging.getLogger(__name__)

__all__ = ["JobLockedError", "JobResult", "NetworksCache", "run_job"]


class JobLockedError(XPortraitError):
    """Another process holds this job's lock."""


@dataclass
class JobResult:
    """Outcome of :func:`run_job`: ``status`` is ``"done"``, ``"skipped"`` or ``"locked"``."""

    output: Path
    status: str
    seconds: float = 0.0
    resumed_from: int | None = None
    comparison: Path | None = None


@dataclass
class _Run:
    """One locked job's fixed context: the spec, its fingerprint digest and working directory, the
    event sink and label, the resolved torch device and dtype, and the test hook ``after_step``."""

    spec: JobSpec
    digest: str
    work: Path
    events: EventSink
    device: torch.device
    dtype: torch.dtype
    after_step: Callable[[int], None] | None = None

    @property
    def job(self) -> str:
        return self.spec.label

    def log(self, level: str, message: str) -> None:
        self.events(Log(level, message, job=self.job))


@dataclass
class Prepared:
    """What step 1 hands to the sampler.

    Attributes:
        source: the portrait ``(1, 3, S, S)`` float32 in [-1, 1] (``S = --size``).
        references: the ``--reference`` portraits, each like ``source``.
        store: the aligned driving frames (:class:`~xportrait_cli.framestore.FrameStore`).
        crop: the portrait's :class:`~xportrait_cli.face.crop.CropInfo` when ``--crop`` cropped it
            (``--paste-back`` composes into the original), else None.
    """

    source: torch.Tensor
    references: list[torch.Tensor]
    store: FrameStore
    crop: CropInfo | None


@dataclass
class Denoised:
    """What step 3 hands to decoding: the final ``latents`` ``(N, 4, h, w)``, the pipeline and the
    memory plan that produced them (smaller than planned after an out-of-memory fallback), and the
    step the job resumed from (None for a fresh start)."""

    latents: torch.Tensor
    pipe: XPortraitPipeline
    memory_plan: MemoryPlan
    resumed_from: int | None


def _portrait_tensor(path: Path, size: int) -> torch.Tensor:
    """The image at ``path`` as the pipeline's ``(1, 3, size, size)`` float32 in [-1, 1]."""
    from xportrait_cli.image import load_portrait

    rgb = load_portrait(path, size)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() * 2 - 1


def run_job(
    spec: JobSpec,
    events: EventSink = null_sink,
    *,
    force: bool = False,
    keep_work: bool = False,
    networks: NetworksCache | None = None,
    after_step: Callable[[int], None] | None = None,
) -> JobResult:
    """Run one job to a finished MP4 at ``spec.output`` (the steps are in the module docstring).

    Args:
        spec: the job (inputs, output, resolved options).
        events: sink for progress events, in the order of the contract in :mod:`xportrait_cli.events`
            (nothing here prints).
        force: redo the job even if a finished output or a checkpoint matches.
        keep_work: keep the working directory after success.
        networks: a cache shared across a batch's jobs (a new one by default).
        after_step: called with the number of completed steps after each checkpoint (tests use it to
            stop a run at a chosen step).

    Returns:
        :class:`JobResult`; ``status="locked"`` when another process holds the job.

    Raises:
        InputError, NoFaceError, WeightsMissingError, CheckpointError, DiskSpaceError,
        OutOfMemoryPlanError (all :class:`~xportrait_cli.errors.XPortraitError`: one line and a hint).
        ``KeyboardInterrupt`` leaves the checkpoint of the last completed step and no output.
    """
    started = time.monotonic()
    job = spec.label
    events(JobStarted(str(spec.output), job=job))
    inputs = check_inputs(spec)
    model, lora = model_path(spec), lora_file(spec)
    fingerprint = job_fingerprint(spec, model, lora_file=lora)
    if _finished(spec, fingerprint["digest"], force, events):
        return JobResult(spec.output, "skipped")

    lock = FileLock(str(spec.lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        events(JobSkipped("running in another process", str(spec.output), job=job))
        return JobResult(spec.output, "locked")
    try:
        if _finished(spec, fingerprint["digest"], force, events):  # finished by another process
            return JobResult(spec.output, "skipped")
        needed = check_disk_space(spec, inputs)
        work = spec.work_dir
        try:
            why = open_work_dir(work, fingerprint, reset=force)
            if why:
                events(Log("info", f"restarting {job}: {why}", job=job))
            device = resolve_device(spec.options.device)
            run = _Run(spec, fingerprint["digest"], work, events, device,
                       resolve_dtype(spec.options.dtype, device), after_step)  # fmt: skip
            result = _run_locked(run, networks or NetworksCache(), model, lora)
        except Exception as exc:
            _after_failure(spec, work, exc, needed)
            raise
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.release()
        spec.lock_path.unlink(missing_ok=True)
    result.seconds = time.monotonic() - started
    events(JobDone(str(spec.output), result.seconds, job=job))
    return result


def _finished(spec: JobSpec, digest: str, force: bool, events: EventSink) -> bool:
    """True (and a JobSkipped event) when the output exists with this fingerprint and not ``force``."""
    if force or not spec.output.exists() or output_fingerprint(spec.output) != digest:
        return False
    events(JobSkipped("finished output with the same inputs and options", str(spec.output), job=spec.label))
    return True


def _after_failure(spec: JobSpec, work: Path, exc: Exception, needed: int) -> None:
    """A failed job keeps its work folder only when it holds a checkpoint (and then says it can be
    resumed); a full disk becomes one :class:`DiskSpaceError` line (raised from ``exc``)."""
    resumable = has_checkpoint(work)
    if not resumable:
        shutil.rmtree(work, ignore_errors=True)
    if is_disk_full(exc):
        raise disk_full_error(exc, spec, needed, resumable) from exc
    if resumable and isinstance(exc, XPortraitError):
        exc.hint = "; ".join(filter(None, (exc.hint, "resumable: run the same command again")))


def _run_locked(run: _Run, cache: NetworksCache, model: Path, lora: Path | None) -> JobResult:
    """Steps 1-4 of the module docstring for a job whose lock is held and work dir is open."""
    opts = run.spec.options
    # 1. prepare
    prepared = _prepare(run)
    # 2. plan memory
    lora_scaled = (lora, opts.lora_scale) if lora is not None else None
    networks = cache.get(model, opts.model_config, run.device, run.dtype, opts.compile, lora_scaled)
    memory_plan = _plan_memory(run, cache, networks)
    # 3. denoise
    denoised = _denoise(run, cache, memory_plan, prepared)
    # 4. decode and write
    comparison = _decode_and_write(run, denoised, prepared)
    return JobResult(run.spec.output, "done", resumed_from=denoised.resumed_from, comparison=comparison)


def _prepare(run: _Run) -> Prepared:
    """Step 1: crop the inputs (``--crop``), find the portrait's landmarks and best frame (stage
    ``portrait``), and prepare the driving frames into the work dir's store (stage ``align``: the
    driving video's landmarks, affine-aligned to the portrait's as in official
    ``core/test_xportrait.py``'s preprocessing). A resumed job reuses the crops and the store.

    Raises:
        NoFaceError: no face in the portrait (``--best-frame`` other than ``NO_ALIGNMENT``) or in
            every driving frame; InputError for unreadable inputs.
    """
    from xportrait_cli.face.crop import crop_inputs
    from xportrait_cli.face.landmarks import make_detector, portrait_for_alignment
    from xportrait_cli.framestore import prepare_driving
    from xportrait_cli.image import load_image

    spec, opts, job = run.spec, run.spec.options, run.job
    detector = make_detector(opts.landmarks, device=str(run.device))  # FAN on the job's device
    run.log("info", f"landmarks: {detector.name}")
    portrait, driving, crop = crop_inputs(
        spec.portrait, spec.driving, run.work, mode=opts.crop, size=max(opts.size, 512), detector=detector,
        events=run.events, job=job,
    )  # fmt: skip
    with stage(run.events, "portrait", job=job):
        portrait_landmarks, best_frame, warning = portrait_for_alignment(
            load_image(portrait), detector, opts.best_frame, name=str(spec.portrait)
        )
        if warning:
            run.log("warning", warning)
    with stage(run.events, "align", job=job) as progress:
        store = prepare_driving(
            driving, portrait_landmarks, run.work / STORE_DIR, size=opts.size, best_frame=best_frame,
            start=opts.start, num_frames=opts.frames, stride=opts.stride, detector=detector,
            on_progress=progress,
        )  # fmt: skip
        if store.num_filled:
            run.log(
                "warning",
                f"no face in {store.num_filled} of {len(store)} driving frames: landmarks "
                "interpolated from their neighbours",
            )
    source = _portrait_tensor(portrait, opts.size)
    references = [_portrait_tensor(r, opts.size) for r in opts.reference]
    return Prepared(source, references, store, crop)


def _plan_memory(run: _Run, cache: NetworksCache, networks: XPortraitNetworks) -> MemoryPlan:
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


def _denoise(run: _Run, cache: NetworksCache, memory_plan: MemoryPlan, prepared: Prepared) -> Denoised:
    """Step 3 (stage ``denoise``): sample from the last :class:`Checkpoint` of this job (or from
    noise), saving a checkpoint after every step. Out of device memory, the job goes on from its last
    checkpoint with :meth:`MemoryPlan.fallback` (the ladder: batched guidance off, then offload,
    then smaller decode chunks) until none is left.

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

    with stage(run.events, "denoise", job=run.job, total=total_steps), _init_frames(run, prepared) as init:
        while True:
            pipe = XPortraitPipeline(cache.place(memory_plan.offload))
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
def _init_frames(run: _Run, prepared: Prepared) -> Iterator[object | None]:
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
    run: _Run,
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


def _decode_and_write(run: _Run, denoised: Denoised, prepared: Prepared) -> Path | None:
    """Step 4 (stage ``decode``, one :class:`FramesWritten` per frame): VAE-decode the latents in
    chunks of the memory plan's size, paste back (``--paste-back``), and write each frame to the
    output (atomic :class:`~xportrait_cli.video.writer.VideoWriter`: the driving video's audio, the
    fingerprint in the ``comment`` tag) and, with ``--comparison``, to the side-by-side video.
    Returns the comparison video's path, or None."""
    from xportrait_cli.jobs.comparison import comparison_writer
    from xportrait_cli.video.writer import VideoWriter

    spec, store, n = run.spec, prepared.store, len(prepared.store)
    chunks = denoised.pipe.decode_latents(denoised.latents, denoised.memory_plan.decode_chunk_size)
    frames = (frame for chunk in chunks for frame in chunk)
    if spec.options.paste_back:
        frames = _pasted_back(frames, prepared.crop, spec.portrait)
    with (
        stage(run.events, "decode", job=run.job, total=n),
        VideoWriter(
            spec.output,
            store.fps,
            audio_source=store.audio_source,
            audio_offset=store.audio_offset,
            metadata={"comment": TAG_PREFIX + run.digest},
        ) as writer,
        contextlib.ExitStack() as tee,
    ):
        comparison = None
        if spec.options.comparison:
            comparison = tee.enter_context(comparison_writer(spec.output, prepared.source, store))
        for frame in frames:
            writer.write(frame)
            if comparison is not None:
                comparison.write(frame)
            run.events(FramesWritten(writer.frames_written, n, job=run.job))
    return comparison.path if comparison is not None else None


def _pasted_back(frames, crop, portrait: Path):
    """``--paste-back``: each square frame composed into the full original portrait (feathered mask);
    an odd width or height loses its last column or row (H.264 yuv420p needs even sizes)."""
    from xportrait_cli.face.crop import paste_back
    from xportrait_cli.image import load_image

    if crop is None:  # a square portrait under --crop auto: the frames are the whole portrait
        yield from frames
        return
    for frame in paste_back(frames, crop, load_image(portrait)):
        h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
        yield np.ascontiguousarray(frame[:h, :w])
