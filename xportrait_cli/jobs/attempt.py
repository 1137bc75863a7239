"""One attempt at one job of a batch, with failure isolation: the per-job step that the local
driver (:func:`~xportrait_cli.jobs.batch.run_batch`) and the Ray driver
(:func:`~xportrait_cli.jobs.ray_batch.run_batch_ray`) share, and the :class:`JobOutcome` it fills.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xportrait_cli.errors import XPortraitError
from xportrait_cli.events import Event, EventSink, JobFailed, JobSkipped, JobStarted, Log, StageStarted
from xportrait_cli.jobs.fingerprint import output_fingerprint
from xportrait_cli.jobs.manifest import ManifestJob
from xportrait_cli.jobs.networks import NetworksCache
from xportrait_cli.jobs.runner import run_job
from xportrait_cli.jobs.spec import JobSpec

log = logging.getLogger(__name__)

#: Status of a job in a :class:`~xportrait_cli.jobs.batch.BatchSummary`.
STATUSES: tuple[str, ...] = ("done", "skipped", "failed", "not_run")
#: The skip reason of a locked job that another process finished.
DONE_ELSEWHERE = "done by another process"


@dataclass
class JobOutcome:
    """What became of one job: ``status`` is one of :data:`STATUSES`.

    ``error`` is the one-line error of a failed job; ``reason`` why a job was skipped or not run;
    ``seconds`` its wall time in this process; ``resumed_from`` the step a resumed job started at.
    """

    index: int
    label: str
    output: Path
    status: str = "not_run"
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the output as a string)."""
        return {
            "index": self.index,
            "job": self.label,
            "output": str(self.output),
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "reason": self.reason,
            "resumed_from": self.resumed_from,
        }


class _JobEvents:
    """The sink one attempt at a job sees.

    Emits the batch's :class:`JobStarted` (with k of n) before the job's first event, in place of
    :func:`run_job`'s own (dropped; at once unless re-checking), holds
    :class:`JobSkipped` back until :func:`run_job` returns (a locked job's "running in another
    process" is dropped: its terminal event comes later), and adds ``note`` before the job's first
    stage, i.e. only when the job really runs.
    """

    def __init__(self, sink: EventSink, started: JobStarted, *, note: str | None, skip_reason: str | None):
        self.sink, self.started, self.note, self.skip_reason = sink, started, note, skip_reason
        self.held: JobSkipped | None = None
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.sink(self.started)

    def __call__(self, event: Event) -> None:
        if isinstance(event, JobStarted):  # run_job's own: the batch's ``started`` (k of n) stands for it
            return
        if isinstance(event, JobSkipped):
            self.held = event
            return
        self.start()
        if self.note and isinstance(event, StageStarted):
            self.sink(Log("info", self.note, job=event.job))
            self.note = None
        self.sink(event)

    def finish(self, status: str) -> None:
        if self.held is None or status == "locked":
            return
        self.start()
        held = self.held
        if self.skip_reason:
            held = JobSkipped(self.skip_reason, held.output, job=held.job)
        self.sink(held)


def _rerun_note(spec: JobSpec, force: bool) -> str | None:
    """What re-running a job replaces, said when it really runs; None when there is no output yet."""
    if not spec.output.exists():
        return None
    if force:
        return f"redoing {spec.label} (--force)"
    if output_fingerprint(spec.output) is None:
        return f"replacing {spec.output}: it has no xportrait fingerprint"
    return f"re-running {spec.label}: its inputs or options changed since {spec.output.name} was made"


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())


def attempt_job(
    job: ManifestJob,
    outcome: JobOutcome,
    events: EventSink,
    started: JobStarted,
    *,
    recheck: bool,
    force: bool,
    keep_work: bool,
    networks: NetworksCache | None,
) -> str:
    """Run (or re-check) one job of a batch with failure isolation, filling ``outcome``.

    The one per-job step of both drivers: :func:`run_batch` calls it in this process,
    :func:`~xportrait_cli.jobs.ray_batch.run_batch_ray` in a Ray worker. ``started`` is the job's
    :class:`JobStarted`, emitted before its first event (at once unless ``recheck``); a job with
    ``job.error`` set fails without running. Never raises an :class:`Exception`: a known error is
    recorded with its one-line message, a bug with its type and message (traceback in the log);
    ``KeyboardInterrupt`` goes through.

    Returns:
        The status written to ``outcome`` ("done", "skipped", "failed"), or ``"locked"`` (outcome
        untouched but for ``seconds``) when another process holds the job.
    """
    spec = job.spec
    note = None if job.error else _rerun_note(spec, force and not recheck)
    sink = _JobEvents(events, started, note=note, skip_reason=DONE_ELSEWHERE if recheck else None)
    if not recheck:
        sink.start()
    t0 = time.monotonic()
    status, result = "failed", None
    try:
        if job.error is not None:
            raise job.error
        spec.output.parent.mkdir(parents=True, exist_ok=True)
        # a re-check never forces: the other process's finished output is the job's result
        result = run_job(spec, sink, force=force and not recheck, keep_work=keep_work, networks=networks)
        status = result.status
    except XPortraitError as exc:
        outcome.error = exc.one_line()
        sink.start()
        events(JobFailed.from_exception(exc, job=spec.label))
    except Exception as exc:  # a bug: record it, keep its traceback in the log, go on
        outcome.error = _one_line(exc)
        log.error("job %s failed with an unexpected error", spec.label, exc_info=True)
        sink.start()
        events(JobFailed(outcome.error, "this is a bug; the traceback is in the log", job=spec.label))
    finally:
        outcome.seconds += time.monotonic() - t0
    sink.finish(status)
    if status == "locked":
        return status
    outcome.status = status
    if result is not None:
        outcome.resumed_from = result.resumed_from
        if status == "skipped":
            outcome.reason = sink.held.reason if sink.held else None
            if recheck:
                outcome.reason = DONE_ELSEWHERE
    return status
