"""Events the library emits while a job runs; nothing below the CLI prints.

The job runner, the preparation steps and the pipeline callbacks call an :data:`EventSink` with
these plain, frozen dataclasses; :mod:`xportrait_cli.progress` turns them into Rich progress, plain
lines or JSON lines. Every event has a class-level ``kind`` (``"stage_started"``, ...) and an
optional keyword-only ``job`` label (the job's output path in a batch) and serialises with
:meth:`Event.to_dict` to a flat JSON-able dict whose first key is ``"kind"``.

A job emits, in order: :class:`JobStarted`; for each stage in :data:`STAGES` that runs,
:class:`StageStarted`, any number of :class:`StageProgress` (or :class:`StepProgress` for
``denoise``, :class:`FramesWritten` for ``encode``) and :class:`StageFinished`; then exactly one
of :class:`JobDone`, :class:`JobFailed` or :class:`JobSkipped`. :class:`Log` may come at any time.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

#: The stages of a job, in the order they run (design.md: read -> landmarks -> align -> denoise ->
#: decode -> encode). ``encode`` covers video writing and the audio mux.
STAGES: tuple[str, ...] = ("read", "landmarks", "align", "denoise", "decode", "encode")
Stage = Literal["read", "landmarks", "align", "denoise", "decode", "encode"]
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
    """``count`` of ``total`` frames have been written to the output video (stage ``encode``)."""

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


@contextmanager
def stage(
    sink: EventSink, name: Stage, job: str | None = None, total: int | None = None
) -> Iterator[Callable[[int, int | None], None]]:
    """Emit :class:`StageStarted` before the block and :class:`StageFinished` (wall seconds) after it.

    Yields ``progress(done, total)``, which emits :class:`StageProgress` for this stage. When the
    block raises, no :class:`StageFinished` is emitted (the job's failure event follows instead).

    Example::

        with stage(events, "landmarks", job, total=n) as progress:
            for i in range(n):
                ...
                progress(i + 1, n)
    """
    start = time.monotonic()
    sink(StageStarted(name, total, job=job))
    yield lambda done, of: sink(StageProgress(name, done, of, job=job))
    sink(StageFinished(name, time.monotonic() - start, job=job))
