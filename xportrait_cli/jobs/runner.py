"""Run one job from options to a finished MP4; resumable after a crash.

:func:`run_job` is the recipe, in the order of :meth:`XPortraitPipeline.__call__`'s numbered steps:

0. fingerprint + lock — skip a finished output with the same fingerprint; take the per-job file
   lock; open the working directory (:mod:`xportrait_cli.jobs.workdir`: the resume format).
1. prepare (:func:`.prepare.prepare`) — ``--crop`` crops, the portrait's landmarks (stage
   ``portrait``), the driving video into a :class:`~xportrait_cli.jobs.framestore.FrameStore` (stage
   ``align``, reused on resume).
2. plan memory (:func:`.denoise.plan_job_memory`) — load the networks (:class:`NetworksCache`)
   and choose where they run (:func:`~xportrait_cli.pipeline.memory.plan_memory`).
3. denoise (:func:`.denoise.denoise`) — :class:`XPortraitPipeline` from the last
   :class:`~.workdir.Checkpoint`; after every step the latents are checkpointed atomically; out of
   device memory, the next smaller memory plan goes on from the last checkpoint.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from xportrait_cli.errors import XPortraitError
from xportrait_cli.events import (
    EventSink,
    FramesWritten,
    JobDone,
    JobSkipped,
    JobStarted,
    Log,
    null_sink,
    stage,
)
from xportrait_cli.jobs.denoise import Denoised, denoise, plan_job_memory
from xportrait_cli.jobs.fingerprint import TAG_PREFIX, job_fingerprint, output_fingerprint
from xportrait_cli.jobs.networks import NetworksCache, lora_file, model_path, resolve_device, resolve_dtype
from xportrait_cli.jobs.preflight import check_disk_space, check_inputs, disk_full_error, is_disk_full
from xportrait_cli.jobs.prepare import Prepared, prepare
from xportrait_cli.jobs.spec import JobRun, JobSpec
from xportrait_cli.jobs.workdir import has_checkpoint, open_work_dir

log = logging.getLogger(__name__)

__all__ = ["JobResult", "NetworksCache", "run_job"]


@dataclass
class JobResult:
    """Outcome of :func:`run_job`: ``status`` is ``"done"``, ``"skipped"`` or ``"locked"``."""

    output: Path
    status: str
    seconds: float = 0.0
    resumed_from: int | None = None
    comparison: Path | None = None


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
            run = JobRun(spec, fingerprint["digest"], work, events, device,
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


def _run_locked(run: JobRun, cache: NetworksCache, model: Path, lora: Path | None) -> JobResult:
    """Steps 1-4 of the module docstring for a job whose lock is held and work dir is open."""
    opts = run.spec.options
    # 1. prepare
    prepared = prepare(run)
    # 2. plan memory
    lora_scaled = (lora, opts.lora_scale) if lora is not None else None
    networks = cache.get(model, opts.model_config, run.device, run.dtype, opts.compile, lora_scaled)
    memory_plan = plan_job_memory(run, cache, networks)
    # 3. denoise
    denoised = denoise(run, cache, memory_plan, prepared)
    # 4. decode and write
    comparison = _decode_and_write(run, denoised, prepared)
    return JobResult(run.spec.output, "done", resumed_from=denoised.resumed_from, comparison=comparison)


def _decode_and_write(run: JobRun, denoised: Denoised, prepared: Prepared) -> Path | None:
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
    from xportrait_cli.face.paste import paste_back
    from xportrait_cli.image import load_image

    if crop is None:  # a square portrait under --crop auto: the frames are the whole portrait
        yield from frames
        return
    for frame in paste_back(frames, crop, load_image(portrait)):
        h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
        yield np.ascontiguousarray(frame[:h, :w])
