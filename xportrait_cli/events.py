"""Events the library emits while a job runs; nothing below the CLI prints.

The job runner, the preparation steps and the pipeline callbacks call an :data:`EventSink` with
these plain, frozen dataclasses; :mod:`xportrait_cli.progress` turns them into Rich progress, plain
lines or JSON lines. Every event has a class-level ``kind`` (``"stage_started"``, ...) and an
optional keyword-only ``job`` label (the job's output path in a batch) and serialises with
:meth:`Event.to_dict` to a flat JSON-able dict whose first key is ``"kind"`` (:func:`from_dict`
reads it back).

The contract of :func:`~xportrait_cli.jobs.runner.run_job` (``tests/test_progress.py`` holds it
to a recorded run, ``tests/data/job_events.jsonl``):

1. :class:`JobStarted`;
2. then either :class:`JobSkipped` (a finished output, or the job runs in another process), or:
3. ``--crop`` cropping the driving video: the :data:`CROP_STAGES` of ``xportrait crop``
   (``landmarks``: faces on sampled frames, :class:`StageProgress`; ``encode``: the cropped video,
   :class:`FramesWritten`);
4. the :data:`JOB_STAGES` in order, each :class:`StageStarted`, its progress, :class:`StageFinished`:
   ``portrait`` (the portrait's landmarks and best frame), ``align`` (the driving video's
   landmarks, warped into the frame store: :class:`StageProgress`), ``denoise``
   (:class:`StepProgress` per step), ``decode`` (VAE decode, paste-back and video encoding in one
   loop: :class:`FramesWritten` per frame);
5. :class:`JobDone`. A job that raises emits no terminal event: its caller (the CLI, a batch)
   emits :class:`JobFailed`. :class:`Log` may come at any time.

:class:`FramesWritten` always comes inside the stage that writes the video (``decode`` in a job,
``encode`` in a crop); renderers file it under the stage that is open.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

#: The stages of cropping a video (``xportrait crop``, ``animate --crop``), in the order they run:
#: faces found on sampled frames, then the cropped video written (audio muxed).
CROP_STAGES: tuple[str, ...] = ("landmarks", "encode")
#: The stages of a job after any crop, in the order they run (see the module docstring).
JOB_STAGES: tuple[str, ...] = ("portrait", "align", "denoise", "decode")
#: Every stage name an event may carry.
STAGES: tuple[str, ...] = CROP_STAGES + JOB_STAGES
Stage = Literal["landmarks", "encode", "portrait", "align", "denoise", "decode"]
#: Levels of :class:`Log`, lowest first.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")


@dataclass(frozen=True)
class Event:
    """Base of all events: ``kind`` names the type in JSON, ``job`` labels the job in a batch."""

    kind: ClassVar[str] = "event"
    job: str | None = field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., <fields>...}`` with paths as strings; ``job`` only when set."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "job" and value is None:
                continue
            out[f.name] = os.fspath(value) if isinstance(value, os.PathLike) else value
        return out


#: A callable that receives events. Sinks must be cheap: they run inside the sampling loop.
EventSink = Callable[[Event], None]


def null_sink(event: Event) -> None:
    """An :data:`EventSink` that drops every event (the default for library calls)."""


@dataclass(frozen=True)
class JobStarted(Event):
    """A job begins: ``output`` is its target path; ``index`` (1-based) of ``total`` in a batch."""

    kind: ClassVar[str] = "job_started"
    output: str
    index: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class StageStarted(Event):
    """A stage begins; ``total`` is its unit count (frames, or steps for ``denoise``) if known."""

    kind: ClassVar[str] = "stage_started"
    stage: Stage
    total: int | None = None

    def __post_init__(self) -> None:
        _check_stage(self.stage)


@dataclass(frozen=True)
class StageProgress(Event):
    """``done`` of ``total`` units of a stage are finished (frames read, landmarks found, ...)."""

    kind: ClassVar[str] = "stage_progress"
    stage: Stage
    done: int
    total: int | None

    def __post_init__(self) -> None:
        _check_stage(self.stage)


@dataclass(frozen=True)
class StageFinished(Event):
    """A stage ended after ``seconds`` of wall time."""

    kind: ClassVar[str] = "stage_finished"
    stage: Stage
    seconds: float

    def __post_init__(self) -> None:
        _check_stage(self.stage)


@dataclass(frozen=True)
class StepProgress(Event):
    """Denoising step ``step`` of ``total_steps`` is finished (1-based, so the last has step == total).

    ``timestep`` is the DDIM timestep just denoised (991 ... 1 for 30 steps); ``windows`` is the
    number of 16-frame windows run per step (ceil((N - num_mix) / (16 - num_mix))).
    """

    kind: ClassVar[str] = "step_progress"
    step: int
    total_steps: int
    timestep: int
    windows: int


@dataclass(frozen=True)
class FramesWritten(Event):
    """``count`` of ``total`` frames have been written to the output video (inside the stage that
    writes it: ``decode`` in a job, ``encode`` in a crop)."""

    kind: ClassVar[str] = "frames_written"
    count: int
    total: int


@dataclass(frozen=True)
class JobDone(Event):
    """The job finished: ``output`` is in place (renamed atomically) after ``seconds`` in all."""

    kind: ClassVar[str] = "job_done"
    output: str
    seconds: float


@dataclass(frozen=True)
class JobFailed(Event):
    """The job failed with a known error: ``error`` is its one-line message, ``hint`` the fix."""

    kind: ClassVar[str] = "job_failed"
    error: str
    hint: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException, *, job: str | None = None) -> JobFailed:
        """Build from an exception; an :class:`~xportrait_cli.errors.XPortraitError` keeps its hint."""
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return cls(" ".join(str(message).split()), getattr(exc, "hint", "") or "", job=job)


@dataclass(frozen=True)
class JobSkipped(Event):
    """The job did not run: ``reason`` says why (e.g. the output exists and matches its fingerprint).

    ``output`` is the existing result path when there is one (quiet mode still prints it).
    """

    kind: ClassVar[str] = "job_skipped"
    reason: str
    output: str | None = None


@dataclass(frozen=True)
class Log(Event):
    """A message for the user; ``level`` is one of :data:`LOG_LEVELS`."""

    kind: ClassVar[str] = "log"
    level: Literal["debug", "info", "warning", "error"]
    message: str

    def __post_init__(self) -> None:
        if self.level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {self.level!r}; expected one of {LOG_LEVELS}")


#: Every event class by its ``kind``.
EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        JobStarted,
        StageStarted,
        StageProgress,
        StageFinished,
        StepProgress,
        FramesWritten,
        JobDone,
        JobFailed,
        JobSkipped,
        Log,
    )
}


def from_dict(data: dict[str, Any]) -> Event:
    """The event of :meth:`Event.to_dict` output (e.g. a ``--json`` line). Raises ``KeyError`` for an
    unknown ``kind`` and ``TypeError`` for fields that do not match it."""
    fields = dict(data)
    return EVENT_TYPES[fields.pop("kind")](**fields)


@contextmanager
def stage(
    sink: EventSink, name: str, *, job: str | None = None, total: int | None = None
) -> Iterator[Callable[[int, int | None], None]]:
    """Emit :class:`StageStarted` on entry and :class:`StageFinished` (with the wall time) when the
    block ends without an exception; yields ``progress(done, total)``, which emits
    :class:`StageProgress` for this stage. Raises ``ValueError`` for a name not in :data:`STAGES`.

    Example::

        with stage(events, "align", job=label) as progress:
            prepare_driving(..., on_progress=progress)
    """
    _check_stage(name)
    start = time.monotonic()
    sink(StageStarted(name, total, job=job))

    def progress(done: int, total: int | None = total) -> None:
        sink(StageProgress(name, done, total, job=job))

    yield progress
    sink(StageFinished(name, time.monotonic() - start, job=job))
