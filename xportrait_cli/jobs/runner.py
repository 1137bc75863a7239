"""Run one job from options to a finished MP4; resumable after a crash (design.md, "One job").

1. fingerprint + lock — the working directory ``<output>.xportrait/`` holds ``fingerprint.json``,
   the prepared frame store and the latest latents checkpoint; a per-job file lock keeps two
   processes off the same job.
2. prepare — portrait landmarks, then the driving video into a :class:`FrameStore` (reused on resume).
3. denoise — :class:`XPortraitPipeline`; after every step the latents are checkpointed atomically.
4. decode + write — VAE decode in chunks straight into the atomic video writer (audio copied),
   the fingerprint in the MP4's metadata; then the working directory is removed.

Re-running a job: a finished output with the same fingerprint is skipped; an unfinished job with the
same fingerprint resumes from its last completed step (bit-identical frames: every random draw is a
function of the seed); a job whose inputs or options changed restarts.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from filelock import FileLock, Timeout

from xportrait_cli.errors import InputError, OutOfMemoryPlanError, XPortraitError
from xportrait_cli.events import (
    EventSink,
    FramesWritten,
    JobDone,
    JobSkipped,
    Log,
    StageFinished,
    StageProgress,
    StageStarted,
    StepProgress,
    null_sink,
)
from xportrait_cli.jobs.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from xportrait_cli.jobs.fingerprint import TAG_PREFIX, job_fingerprint, output_fingerprint
from xportrait_cli.jobs.preflight import (
    check_disk_space,
    check_inputs,
    disk_full_error,
    is_disk_full,
)
from xportrait_cli.jobs.spec import JobSpec
from xportrait_cli.models import XPortraitNetworks, load_networks
from xportrait_cli.pipeline import XPortraitPipeline
from xportrait_cli.pipeline.memory import (
    MemoryPlan,
    ModelSize,
    device_budget,
    plan_memory,
    release_cached_memory,
)
from xportrait_cli.pipeline.schedule import sampling_timesteps
from xportrait_cli.pipeline.windows import WINDOW

log = logging.getLogger(__name__)

FINGERPRINT_NAME = "fingerprint.json"
STORE_DIR = "store"


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


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"`` → fp32 on the CPU, :data:`~xportrait_cli.weights.registry.CUDA_DTYPE` (fp16) on CUDA:
    the precision ``download-weights`` converts to, so the default weights load without a cast."""
    from xportrait_cli.weights.registry import CUDA_DTYPE, torch_dtype

    if dtype == "auto":
        dtype = CUDA_DTYPE if device.type == "cuda" else "fp32"
    return torch_dtype(dtype)


class NetworksCache:
    """Loads networks once per (weights, config, device, dtype) and reuses them across jobs.

    :meth:`get` loads into CPU memory; :meth:`place` then puts them where the job's memory plan says:
    all on the device, or offloaded (each network moved to the device for its phase).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._networks: XPortraitNetworks | None = None
        self._device = torch.device("cpu")

    def get(
        self,
        model: Path,
        config: Path | None,
        device: torch.device,
        dtype: torch.dtype,
        compile: bool = False,
        lora: tuple[Path, float] | None = None,
    ) -> XPortraitNetworks:
        """The networks for these settings, loaded on first use (into CPU memory, or where the last
        :meth:`place` put them). ``compile`` wraps the denoising networks (main UNet, appearance net,
        ControlNets) with ``torch.compile`` (``Module.compile``); ``lora`` is a (file, scale) for the
        main UNet (:func:`xportrait_cli.models.lora.load_lora`)."""
        key = (str(model), str(config), str(device), str(dtype), compile, str(lora))
        if key != self._key:
            self._networks = None  # free the previous model first
            release_cached_memory(self._device)
            networks = load_networks(model, config=config, device="cpu", dtype=dtype)
            if lora is not None:
                from xportrait_cli.models.lora import load_lora

                load_lora(networks.unet.unet, *lora)
            if compile:
                for name in ("unet", "reference_unet", "pose_controlnet", "local_controlnet"):
                    getattr(networks, name).compile()
            self._networks, self._key, self._device = networks, key, device
        return self._networks

    def resident_bytes(self) -> int:
        """Bytes of network weights now held on the device (they count as free for the next plan)."""
        nets = self._networks
        if nets is None or nets.offloaded or nets.device.type != "cuda":
            return 0
        return sum(ModelSize.of(nets).weights.values())

    def place(self, offload: bool) -> XPortraitNetworks:
        """Put the loaded networks on the device (``offload=False``) or offload them."""
        nets = self._networks
        if offload and not nets.offloaded:
            nets.enable_offload(self._device)
        elif not offload:
            if nets.offloaded:
                nets.disable_offload()
            nets.to(self._device)
        return nets


def model_path(spec: JobSpec) -> Path:
    """The weights this job uses: ``--model``, else the download cache (raises WeightsMissingError)."""
    if spec.options.model is not None:
        if not spec.options.model.exists():
            raise InputError(
                f"{spec.options.model}: model not found",
                "pass an existing --model or run `xportrait download-weights`",
            )
        return spec.options.model
    from xportrait_cli.weights.registry import default_model_path

    return default_model_path()


class _Stage:
    """Emit StageStarted/StageFinished around a block."""

    def __init__(self, events: EventSink, stage: str, job: str, total: int | None = None) -> None:
        self.events, self.stage, self.job, self.total = events, stage, job, total

    def __enter__(self) -> _Stage:
        self.start = time.monotonic()
        self.events(StageStarted(self.stage, self.total, job=self.job))
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.events(StageFinished(self.stage, time.monotonic() - self.start, job=self.job))


def _portrait_tensor(path: Path, size: int) -> torch.Tensor:
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
    """Run one job to a finished MP4 at ``spec.output`` (see the module docstring for the stages).

    Args:
        spec: the job; events: sink for progress events (nothing here prints).
        force: redo the job even if a finished output or a checkpoint matches.
        keep_work: keep the working directory after success.
        networks: a cache shared across a batch's jobs (a new one by default).
        after_step: called with the number of completed steps after each checkpoint (tests use it to
            stop a run at a chosen step).

    Returns:
        :class:`JobResult`; ``status="locked"`` when another process holds the job.

    Raises:
        XPortraitError subclasses (InputError, NoFaceError, WeightsMissingError, CheckpointError, …);
        KeyboardInterrupt leaves the checkpoint of the last completed step and no output.
    """
    started = time.monotonic()
    job = spec.label
    inputs = check_inputs(spec)
    model = model_path(spec)
    lora = _lora_file(spec)
    fingerprint = job_fingerprint(spec, model, lora_file=lora)
    digest = fingerprint["digest"]

    if _finished(spec, digest, force, events):
        return JobResult(spec.output, "skipped")

    lock = FileLock(str(spec.lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        events(JobSkipped("running in another process", str(spec.output), job=job))
        return JobResult(spec.output, "locked")
    try:
        if _finished(spec, digest, force, events):  # finished by another process before the lock
            return JobResult(spec.output, "skipped")
        needed = check_disk_space(spec, inputs)
        work = spec.work_dir
        try:
            work = _work_dir(spec, fingerprint, force, events)
            result = _run_locked(
                spec, fingerprint, work, events, networks or NetworksCache(), model, after_step, lora
            )
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
    resumable = (work / CHECKPOINT_NAME).is_file()
    if not resumable:
        shutil.rmtree(work, ignore_errors=True)
    if is_disk_full(exc):
        raise disk_full_error(exc, spec, needed, resumable) from exc
    if resumable and isinstance(exc, XPortraitError):
        exc.hint = "; ".join(filter(None, (exc.hint, "resumable: run the same command again")))


def _work_dir(spec: JobSpec, fingerprint: dict, force: bool, events: EventSink) -> Path:
    work = spec.work_dir
    saved = work / FINGERPRINT_NAME
    if work.exists():
        previous = json.loads(saved.read_text()).get("digest") if saved.is_file() else None
        if force or previous != fingerprint["digest"]:
            why = "--force" if force else "inputs or options changed"
            events(Log("info", f"restarting {spec.label}: {why}", job=spec.label))
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f".{FINGERPRINT_NAME}.tmp"
    tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
    tmp.replace(saved)
    return work


def _lora_file(spec: JobSpec) -> Path | None:
    """The ``--lora`` file (a path, or the hub cache's copy of a repo id), or None."""
    if spec.options.lora is None:
        return None
    from xportrait_cli.models.lora import resolve_lora

    return resolve_lora(spec.options.lora)


def _run_locked(spec, fingerprint, work, events, cache, model, after_step, lora=None) -> JobResult:
    from xportrait_cli.face.crop_inputs import crop_inputs
    from xportrait_cli.face.landmarks import make_detector, portrait_for_alignment
    from xportrait_cli.image import load_image
    from xportrait_cli.jobs.prepare_driving import prepare_driving

    opts, job, digest = spec.options, spec.label, fingerprint["digest"]
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)

    # 2. prepare
    with _Stage(events, "landmarks", job):
        detector = make_detector(opts.landmarks, device="cuda" if device.type == "cuda" else "cpu")
        events(Log("info", f"landmarks: {detector.name}", job=job))
        portrait, driving, crop = crop_inputs(
            spec.portrait, spec.driving, work, mode=opts.crop, size=max(opts.size, 512), detector=detector,
            events=events, job=job,
        )  # fmt: skip
        portrait_landmarks, best_frame, warning = portrait_for_alignment(
            load_image(portrait), detector, opts.best_frame, name=str(spec.portrait)
        )
        if warning:
            events(Log("warning", warning, job=job))
    with _Stage(events, "align", job) as stage:
        store = prepare_driving(
            driving,
            portrait_landmarks,
            work / STORE_DIR,
            size=opts.size,
            best_frame=best_frame,
            start=opts.start,
            num_frames=opts.frames,
            stride=opts.stride,
            detector=detector,
            on_progress=lambda done, total: events(StageProgress(stage.stage, done, total, job=job)),
        )
        if store.num_filled:
            events(
                Log(
                    "warning",
                    f"no face in {store.num_filled} of {len(store)} driving frames: landmarks "
                    "interpolated from their neighbours",
                    job=job,
                )
            )

    # 3. denoise
    lora_scaled = (lora, opts.lora_scale) if lora is not None else None
    networks = cache.get(model, opts.model_config, device, dtype, opts.compile, lora_scaled)
    plan = plan_memory(
        ModelSize.of(networks),
        size=opts.size,
        budget_bytes=device_budget(device, cache.resident_bytes()),
        batch_guidance=opts.batch_guidance,
        offload=opts.offload,
        decode_chunk_size=opts.decode_chunk_size,
        device_name=_device_name(device),
    )
    if device.type == "cuda" or plan.offload:
        events(Log("info", f"memory plan: {plan.describe()}", job=job))
    source = _portrait_tensor(portrait, opts.size)
    references = [_portrait_tensor(r, opts.size) for r in opts.reference]
    total_steps = len(sampling_timesteps(opts.num_inference_steps, opts.scheduler))
    init_frames = None
    if opts.init_video is not None:
        from xportrait_cli.video.init_video import open_init_video

        init_frames = open_init_video(
            opts.init_video, size=opts.size, needed=len(store), start=opts.start,
            num_frames=opts.frames, stride=opts.stride,
        )  # fmt: skip
    resume = load_checkpoint(work, digest)
    if resume:
        events(Log("info", f"resumed {job} from step {resume[1]} of {total_steps}", job=job))
    resumed_from = resume[1] if resume else None

    def on_step(_pipe, step_index, timestep, state):
        save_checkpoint(work, state["latents"], step_index + 1, digest)
        events(StepProgress(step_index + 1, total_steps, timestep, len(state["windows"]), job=job))
        if after_step is not None:
            after_step(step_index + 1)

    with _Stage(events, "denoise", job, total_steps):
        while True:
            pipe = XPortraitPipeline(cache.place(plan.offload))
            latents, start_step = resume if resume else (None, 0)
            try:
                out = pipe(
                    source,
                    store,
                    num_inference_steps=opts.num_inference_steps,
                    guidance_scale=opts.guidance_scale,
                    num_mix=opts.num_mix,
                    seed=opts.seed,
                    reference_mode=opts.reference_mode,
                    references=references,
                    batch_guidance=plan.batch_guidance,
                    init_frames=init_frames,
                    control_mode=opts.control_mode,
                    noised_reference=opts.noised_reference,
                    guidance_interval=opts.guidance_interval,
                    scheduler=opts.scheduler,
                    latents=latents,
                    start_step=start_step,
                    callback_on_step_end=on_step,
                    output_type="latent",
                )
                break
            except torch.OutOfMemoryError as exc:
                plan, resume = _smaller_plan(plan, exc, device), load_checkpoint(work, digest)
                step = resume[1] if resume else 0
                message = f"out of memory at step {step + 1}: going on with {plan.describe()}"
                events(Log("warning", message, job=job))

    if init_frames is not None:
        init_frames.close()

    # 4. decode + write
    from xportrait_cli.video.writer import VideoWriter

    n = len(store)
    with (
        _Stage(events, "decode", job, n),
        VideoWriter(
            spec.output,
            store.fps,
            audio_source=store.audio_source,
            audio_offset=store.audio_offset,
            metadata={"comment": TAG_PREFIX + digest},
        ) as writer,
    ):
        decoded = (
            frame for chunk in pipe.decode_latents(out.latents, plan.decode_chunk_size) for frame in chunk
        )
        if opts.paste_back:
            decoded = _pasted_back(decoded, crop, spec.portrait)
        for frame in decoded:
            writer.write(frame)
            events(FramesWritten(writer.frames_written, n, job=job))
    comparison = _write_comparison(spec, store, source) if opts.comparison else None
    return JobResult(spec.output, "done", resumed_from=resumed_from, comparison=comparison)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _smaller_plan(plan: MemoryPlan, exc: torch.OutOfMemoryError, device: torch.device) -> MemoryPlan:
    """The next plan down after running out of memory while denoising, or OutOfMemoryPlanError."""
    release_cached_memory(device)
    smaller = plan.fallback()
    if smaller is None:
        raise OutOfMemoryPlanError(
            f"{_device_name(device)} ran out of memory with {plan.describe()}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'torch.OutOfMemoryError'}",
            "free memory on the device, lower --size, or run on another device; the job resumes "
            "from its last step",
        ) from exc
    return smaller


def comparison_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.comparison{output.suffix}")


def _write_comparison(spec: JobSpec, store, source: torch.Tensor) -> Path:
    """Side-by-side portrait · aligned driving frame · result, at the output's frame rate."""
    from xportrait_cli.video.reader import VideoReader
    from xportrait_cli.video.writer import VideoWriter

    path = comparison_path(spec.output)
    portrait = ((source[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    reader = VideoReader(spec.output)
    with VideoWriter(path, store.fps, audio_source=spec.output) as writer:
        for start in range(0, len(store), WINDOW):
            indices = list(range(start, min(start + WINDOW, len(store))))
            driving = store.frames_u8(indices)
            result = np.stack(
                [
                    cv2.resize(f, driving.shape[2:0:-1], interpolation=cv2.INTER_AREA)
                    for f in reader.read(indices)
                ]
            )
            panel = np.concatenate([np.broadcast_to(portrait, driving.shape), driving, result], axis=2)
            writer.write(np.ascontiguousarray(panel))
    reader.close()
    return path


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
