"""Run the jobs of a manifest one after another: shared networks, failure isolation, shards, locks.

:func:`run_batch` runs each job with :func:`~xportrait_cli.jobs.runner.run_job`, so everything a
single job does carries over: a finished job whose fingerprint matches is skipped, an unfinished one
resumes from its last completed step, a changed one restarts. On top of that:

- **Networks** are loaded once (one :class:`~xportrait_cli.jobs.networks.NetworksCache`) and reused
  by every job with the same weights, device and precision.
- **Failures** are isolated: a known error (:class:`~xportrait_cli.errors.XPortraitError`) is
  recorded with its one-line message; any other exception (a bug) is recorded with its type and
  message and logged with its traceback through :mod:`logging`. The batch goes on, unless
  ``fail_fast``. ``KeyboardInterrupt`` is never swallowed: it comes out as :class:`BatchInterrupted`
  (a ``KeyboardInterrupt``) carrying the summary so far; finished outputs stay, the interrupted job
  keeps its checkpoint.
- **Locks**: a job locked by another process (two batches on one manifest) is passed over, then
  checked again once every other job is through: when the other process has finished it, it is
  reported as skipped, "done by another process"; when that process died, its lock is gone and
  this one resumes the job from its checkpoint. So when every process has returned, each job was
  done exactly once.
- **Shards**: ``Shard(i, n)`` keeps the jobs whose 0-based manifest position is ``i`` modulo ``n``
  (deterministic; one process per GPU: ``--shard 0/2`` and ``--shard 1/2``).

Events: per job, :class:`~xportrait_cli.events.JobStarted` ``(output, k, total)`` (k counts the
jobs of this process), the job's stage events, then exactly one of JobDone, JobSkipped or JobFailed
(a locked job's terminal event comes when it is checked again).

The same batch on a Ray cluster is :func:`xportrait_cli.jobs.ray_batch.run_batch_ray`: it shares
:class:`BatchPlan` (selection, outcomes, the locked-job re-checks, fail-fast and Ctrl-C handling)
and :func:`~xportrait_cli.jobs.attempt.attempt_job` (one job with failure isolation), and differs
only in where the attempts run.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xportrait_cli.errors import UsageError
from xportrait_cli.events import (
    EventSink,
    JobStarted,
    Log,
    null_sink,
)
from xportrait_cli.jobs.attempt import DONE_ELSEWHERE, STATUSES, JobOutcome, attempt_job
from xportrait_cli.jobs.manifest import ManifestJob
from xportrait_cli.jobs.networks import NetworksCache
from xportrait_cli.jobs.spec import JobSpec

log = logging.getLogger(__name__)

#: Seconds between two checks of jobs locked by another process.
LOCK_POLL_S = 1.0

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): the jobs at manifest positions ``p % count == index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(
                f"invalid --shard {self.index}/{self.count}: need 0 <= i < n",
                "shards are numbered from 0, e.g. --shard 0/2 and --shard 1/2",
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` -> ``Shard(i, n)``; :class:`UsageError` for anything else."""
        match = _SHARD_RE.match(text or "")
        if not match:
            raise UsageError(
                f"invalid --shard {text!r}: expected i/n", "e.g. --shard 0/4 on the first of 4 GPUs"
            )
        return cls(int(match[1]), int(match[2]))

    def selects(self, position: int) -> bool:
        """Whether the job at 0-based manifest ``position`` belongs to this shard."""
        return position % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class BatchSummary:
    """Outcome of :func:`run_batch`: one :class:`JobOutcome` per job of this shard, manifest order."""

    jobs: list[JobOutcome]
    seconds: float = 0.0
    interrupted: bool = False
    shard: Shard | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status of :data:`STATUSES`, zeros included)."""
        return {s: sum(j.status == s for j in self.jobs) for s in STATUSES}

    @property
    def exit_code(self) -> int:
        """130 when interrupted (SIGINT), 3 when a job failed or was not run, else 0 (the CLI's exit code)."""
        if self.interrupted:
            return 130
        counts = self.counts
        return 3 if counts["failed"] or counts["not_run"] else 0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` summary: ``{"kind": "batch_summary", "jobs": [...], "counts": {...}, ...}``."""
        return {
            "kind": "batch_summary",
            "jobs": [j.to_dict() for j in self.jobs],
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "shard": str(self.shard) if self.shard else None,
            "exit_code": self.exit_code,
        }


class BatchInterrupted(KeyboardInterrupt):  # noqa: N818 - it is a KeyboardInterrupt
    """Ctrl-C during a batch: a ``KeyboardInterrupt`` that carries the :class:`BatchSummary` so far."""

    def __init__(self, summary: BatchSummary) -> None:
        super().__init__("batch interrupted")
        self.summary = summary


#: ``on_result(k, status)``: called by a round after each attempt; False stops the round.
OnResult = Callable[[int, str], bool]
#: ``run_round(ks, recheck, on_result)``: attempt the jobs at 1-based positions ``ks`` of the plan
#: (in any order, any number at once), filling their outcomes and calling ``on_result`` after each.
RunRound = Callable[[list[int], bool, OnResult], None]


class BatchPlan:
    """The jobs a batch runs and their outcomes: the bookkeeping the local and Ray drivers share.

    ``selected`` are the jobs of ``shard`` (all by default) in manifest order; ``summary.jobs[k - 1]``
    is the outcome of ``selected[k - 1]`` (k is 1-based, as in :class:`JobStarted`).
    """

    def __init__(self, jobs: Sequence[ManifestJob | JobSpec], shard: Shard | None = None) -> None:
        self.begin = time.monotonic()
        entries = [
            j if isinstance(j, ManifestJob) else ManifestJob(i, j.label, j) for i, j in enumerate(jobs, 1)
        ]
        self.selected = [j for j in entries if shard is None or shard.selects(j.index - 1)]
        outcomes = [JobOutcome(j.index, j.spec.label, j.spec.output) for j in self.selected]
        self.summary = BatchSummary(outcomes, shard=shard)

    @property
    def outcomes(self) -> list[JobOutcome]:
        return self.summary.jobs

    def started(self, k: int) -> JobStarted:
        """The :class:`JobStarted` of job ``k`` (1-based) of this plan."""
        spec = self.selected[k - 1].spec
        return JobStarted(str(spec.output), k, len(self.selected), job=spec.label)

    def drive(
        self, events: EventSink, run_round: RunRound, *, fail_fast: bool, lock_poll_s: float
    ) -> BatchSummary:
        """Run every job through ``run_round``, then re-check the locked ones until none is left.

        The first round attempts every job (stopped at the first failure with ``fail_fast``: the
        rest are "not_run"); jobs another process holds are attempted again, as re-checks, every
        ``lock_poll_s`` seconds once that round is through.

        Raises:
            BatchInterrupted: on ``KeyboardInterrupt``, with the summary so far.
        """
        stopped = False
        locked: list[int] = []

        def first(k: int, status: str) -> bool:
            nonlocal stopped
            if status == "locked":
                locked.append(k)
                label = self.selected[k - 1].spec.label
                message = f"{label} is running in another process; checking it again at the end"
                events(Log("info", message, job=label))
            elif status == "failed" and fail_fast:
                stopped = True
            return not stopped

        def again(k: int, status: str) -> bool:
            if status == "locked":
                locked.append(k)
            return True

        try:
            run_round(list(range(1, len(self.selected) + 1)), False, first)
            if stopped:
                self._mark_not_run("--fail-fast: stopped after a failed job")
                locked.clear()
            elif locked:
                events(Log("info", f"waiting for {len(locked)} job(s) running in another process"))
            while locked:
                todo = sorted(locked)
                locked.clear()
                run_round(todo, True, again)
                if locked:
                    time.sleep(lock_poll_s)
        except KeyboardInterrupt as exc:
            self.summary.interrupted = True
            self._mark_not_run("interrupted")
            self.summary.seconds = time.monotonic() - self.begin
            raise BatchInterrupted(self.summary) from exc
        self.summary.seconds = time.monotonic() - self.begin
        return self.summary

    def _mark_not_run(self, reason: str) -> None:
        for outcome in self.outcomes:
            if outcome.status == "not_run":
                outcome.reason = reason


def run_batch(
    jobs: Sequence[ManifestJob | JobSpec],
    events: EventSink = null_sink,
    *,
    force: bool = False,
    keep_work: bool = False,
    fail_fast: bool = False,
    shard: Shard | None = None,
    networks: NetworksCache | None = None,
    lock_poll_s: float = LOCK_POLL_S,
) -> BatchSummary:
    """Run ``jobs`` (validated manifest jobs, or bare specs) in order; see the module docstring.

    Args:
        jobs: from :func:`~xportrait_cli.jobs.manifest.load_manifest`; a job with ``error`` set is
            reported failed without running.
        events: sink for every job's events (nothing here prints).
        force: redo finished jobs and discard checkpoints; keep_work: keep working directories.
        fail_fast: stop at the first failed job (the rest are "not_run").
        shard: run only this shard's jobs (the others are left out of the summary).
        networks: a cache to share (a new one by default); lock_poll_s: seconds between checks of
            jobs another process holds.

    Returns:
        The :class:`BatchSummary`; its ``exit_code`` is 0, 3 or 130.

    Raises:
        BatchInterrupted: on Ctrl-C, with the summary so far (finished work is kept).
    """
    plan = BatchPlan(jobs, shard)
    networks = networks or NetworksCache()

    def run_round(ks: list[int], recheck: bool, on_result: OnResult) -> None:
        for k in ks:
            job, outcome = plan.selected[k - 1], plan.outcomes[k - 1]
            status = attempt_job(
                job, outcome, events, plan.started(k), recheck=recheck, force=force, keep_work=keep_work,
                networks=networks,
            )  # fmt: skip
            if not on_result(k, status):
                return

    return plan.drive(events, run_round, fail_fast=fail_fast, lock_poll_s=lock_poll_s)


__all__ = [
    "DONE_ELSEWHERE",
    "STATUSES",
    "BatchInterrupted",
    "BatchPlan",
    "BatchSummary",
    "JobOutcome",
    "Shard",
    "attempt_job",
    "run_batch",
]
