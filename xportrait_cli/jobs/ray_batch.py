"""Run a batch on a Ray cluster: one Ray task per job, on as many GPUs and machines as the cluster has.

:func:`run_batch_ray` is :func:`~xportrait_cli.jobs.batch.run_batch` with the attempts run as Ray
tasks instead of in this process. Everything else is shared (:class:`~xportrait_cli.jobs.batch.BatchPlan`
and :func:`~xportrait_cli.jobs.attempt.attempt_job`): the same summary and exit codes, failure
isolation, ``fail_fast``, shards, locked-job re-checks and Ctrl-C handling.

- **Tasks**: one per job, reserving ``num_gpus`` GPUs (fractional to share a card, 0 for CPU) and
  ``num_cpus`` CPUs; Ray queues them until the cluster has room. A job's device option ``auto``
  picks the GPU Ray assigned (``CUDA_VISIBLE_DEVICES``); a task without a GPU hides the node's GPUs
  so ``auto`` means the CPU.
- **Networks** are loaded once per worker process and reused by every later job it runs (a
  module-level :class:`~xportrait_cli.jobs.networks.NetworksCache`; the task function keeps its
  workers, ``max_calls=0``, where Ray would recycle GPU workers after every task).
- **Shared state**: inputs, outputs and therefore the jobs' working directories
  (``<output>.xportrait/``) and locks must be on storage every node sees under the same paths.
  The fingerprints, per-step checkpoints and file locks of :func:`~xportrait_cli.jobs.runner.run_job`
  then work across machines: a finished job is skipped, a job another process holds is re-checked
  at the end, and a job whose worker or node died is re-run by Ray (``max_retries``) and resumes
  from its last checkpointed step.
- **Progress**: each worker sends its job's events, in order and without waiting, to a small actor
  (an ``EventBox``) that the driver drains every ``poll_s`` seconds into ``events``; a
  :class:`~xportrait_cli.events.Log` after each :class:`~xportrait_cli.events.JobStarted` names the
  node, worker pid and GPU the job runs on, and a debug Log at its end how many jobs that worker
  ran and how often it loaded networks.

Ray is an optional dependency (``pip install 'xportrait[ray]'``), imported only here and only when
called.
"""

from __future__ import annotations

import functools
import math
import os
import weakref
from collections.abc import Sequence
from typing import Any

from xportrait_cli.errors import UsageError
from xportrait_cli.events import Event, EventSink, JobFailed, JobStarted, Log, null_sink
from xportrait_cli.jobs.attempt import JobOutcome, attempt_job
from xportrait_cli.jobs.batch import LOCK_POLL_S, BatchPlan, BatchSummary, OnResult, Shard
from xportrait_cli.jobs.manifest import ManifestJob
from xportrait_cli.jobs.networks import NetworksCache
from xportrait_cli.jobs.spec import JobSpec

#: Seconds between two drains of the workers' events while the driver waits for tasks.
POLL_S = 0.1
#: Times Ray re-runs a job whose worker process or node died (the re-run resumes from its checkpoint).
MAX_RETRIES = 3
#: Seconds ``fail_fast`` waits for cancelled tasks, to keep the results of those that finished.
SETTLE_S = 10.0
INSTALL_HINT = "pip install 'xportrait[ray]'"


def import_ray() -> Any:
    """The ``ray`` module; :class:`UsageError` (exit 2) naming the extra to install when it is missing."""
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--ray needs Ray, which is not installed", INSTALL_HINT) from exc
    return ray


# --------------------------------------------------------------------------------------------------
# On the workers
# --------------------------------------------------------------------------------------------------


class _CountingCache(NetworksCache):
    """A :class:`NetworksCache` that counts its loads (reported per job, checked by the tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self._last: weakref.ref | None = None

    def get(self, *args: Any, **kwargs: Any):
        networks = super().get(*args, **kwargs)
        if self._last is None or self._last() is not networks:
            self.loads += 1
            self._last = weakref.ref(networks)
        return networks


class _WorkerState:
    """What one Ray worker process keeps across its jobs."""

    def __init__(self) -> None:
        self.networks = _CountingCache()
        self.jobs = 0


@functools.cache
def _worker_state() -> _WorkerState:
    return _WorkerState()


class _ToDriver:
    """The event sink of a job on a worker: every event goes to the driver's ``EventBox`` actor
    (fire and forget; one caller's calls arrive in order), and ``where`` follows its JobStarted."""

    def __init__(self, box: Any, where: str) -> None:
        self.box, self.where = box, where

    def __call__(self, event: Event) -> None:
        self.box.put.remote(event)
        if isinstance(event, JobStarted):
            self.box.put.remote(Log("info", self.where, job=event.job))


def _run_on_worker(
    job: ManifestJob,
    outcome: JobOutcome,
    started: JobStarted,
    box: Any,
    recheck: bool,
    force: bool,
    keep_work: bool,
) -> tuple[JobOutcome, str]:
    """The Ray task: one attempt at ``job`` with this worker's networks; returns (outcome, status)."""
    import ray
    import torch

    gpus = [str(g) for g in ray.get_gpu_ids()]
    if not gpus:  # a CPU task: device "auto" must not take a GPU that Ray gave to another task
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    threads = os.environ.get("OMP_NUM_THREADS", "")  # Ray sets it to the task's CPUs
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else 1)
    state, pid = _worker_state(), os.getpid()
    where = f"runs on {ray.util.get_node_ip_address()}, worker pid {pid}"
    if gpus:
        where += f", GPU {','.join(gpus)}"
    sink = _ToDriver(box, where)
    status = attempt_job(
        job, outcome, sink, started, recheck=recheck, force=force, keep_work=keep_work,
        networks=state.networks,
    )  # fmt: skip
    if status != "locked":
        state.jobs += 1
        report = f"worker pid {pid}: {state.jobs} job(s), networks loaded {state.networks.loads} time(s)"
        sink(Log("debug", report, job=job.spec.label))
    ray.get(box.flush.remote())  # every event of this attempt is in before the result
    return outcome, status


@functools.cache
def _remotes(ray: Any) -> tuple[Any, Any]:
    """The Ray task function (workers kept across tasks: ``max_calls=0``) and the event actor class.

    The actor class is defined here so that it is pickled by value: its process then imports
    nothing of xportrait but :mod:`xportrait_cli.events` (not torch, seconds on a busy node).
    """

    class EventBox:
        """Holds the workers' events, in arrival order, until the driver takes them."""

        def __init__(self) -> None:
            self.events: list = []

        def put(self, event) -> None:
            self.events.append(event)

        def take(self) -> list:
            """Every event put since the last call."""
            events, self.events = self.events, []
            return events

        def flush(self) -> None:
            """No-op: a caller that waits for it knows that its earlier ``put`` calls are in."""

    return ray.remote(max_calls=0)(_run_on_worker), ray.remote(num_cpus=0)(EventBox)


# --------------------------------------------------------------------------------------------------
# On the driver
# --------------------------------------------------------------------------------------------------


def _check_resources(value: float, name: str) -> None:
    if not (value >= 0 and math.isfinite(value)) or (value > 1 and value != int(value)):
        raise UsageError(
            f"invalid {name} {value:g}: need 0, a fraction below 1, or a whole number",
            f"e.g. {name} 1 for a GPU per job, 0.5 for two jobs per GPU, 0 for CPU only",
        )


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to (or start) the cluster unless Ray is initialized; True when this call did."""
    if ray.is_initialized():
        return False
    try:
        ray.init(**({} if address is None else {"address": address}))
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "the default address"
        raise UsageError(
            f"cannot connect to the Ray cluster at {where}: {' '.join(str(exc).split())}",
            "start one with `ray start --head`, or pass --ray local to start one here",
        ) from exc
    return True


def _describe_cluster(ray: Any, events: EventSink, *, num_cpus: float, num_gpus: float, strict: bool) -> None:
    """Log the cluster's size; a task that no node could ever take fails (``strict``) or warns."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    events(
        Log(
            "info",
            f"Ray cluster: {nodes} node(s), {cpus:g} CPU(s), {gpus:g} GPU(s); "
            f"each job takes {num_cpus:g} CPU(s) and {num_gpus:g} GPU(s)",
        )
    )
    if num_gpus <= gpus and num_cpus <= cpus:
        return
    need = f"{num_gpus:g} GPU(s)" if num_gpus > gpus else f"{num_cpus:g} CPU(s)"
    message = f"a job needs {need} but the Ray cluster has {gpus:g} GPU(s) and {cpus:g} CPU(s)"
    if strict:
        raise UsageError(message, "pass --num-gpus 0 to run the jobs on CPUs" if num_gpus > gpus else "")
    events(Log("warning", f"{message}: the jobs wait until the cluster grows"))


def _lost(exc: BaseException, retries: int) -> tuple[str, str]:
    """(error, hint) for a job whose Ray task failed: it raised, or its worker or node was lost."""
    cause = getattr(exc, "cause", None)
    if cause is not None:  # raised outside the job's own failure isolation (e.g. an import on the node)
        text = " ".join(str(cause).split("\ntraceback:", 1)[0].split())
        error = f"its Ray task raised {type(cause).__name__}" + (f": {text}" if text else "")
        return error, "is the same xportrait installed on every node? The Ray worker log has the traceback"
    error = f"its Ray worker was lost {retries + 1} time(s) ({type(exc).__name__})"
    return error, "its checkpoint is kept: run the batch again to resume it"


class _RayRound:
    """A :data:`~xportrait_cli.jobs.batch.RunRound` that runs the attempts as Ray tasks at once."""

    def __init__(self, ray: Any, plan: BatchPlan, events: EventSink, *, poll_s: float, **task: Any) -> None:
        self.ray, self.plan, self.events, self.poll_s = ray, plan, events, poll_s
        self.function, box_class = _remotes(ray)
        self.box = box_class.remote()
        self.options = {k: task.pop(k) for k in ("num_cpus", "num_gpus", "max_retries")}
        self.job_options = task  # force, keep_work
        self.started: set[int] = set()

    def close(self) -> None:
        self.ray.kill(self.box)

    def __call__(self, ks: list[int], recheck: bool, on_result: OnResult) -> None:
        pending: dict[Any, int] = {}
        self.started.clear()
        try:
            self._run(ks, recheck, on_result, pending)
        except BaseException:
            for ref in pending:
                self.ray.cancel(ref)
            raise
        if pending:  # stopped early (fail_fast): cancel the rest, keep what finished meanwhile
            for ref in pending:
                self.ray.cancel(ref)
            self._settle(pending)

    def _run(self, ks: list[int], recheck: bool, on_result: OnResult, pending: dict[Any, int]) -> None:
        plan = self.plan
        for k in ks:
            job, outcome = plan.selected[k - 1], plan.outcomes[k - 1]
            if job.error is not None:  # fails here, at once: nothing to send to the cluster
                status = attempt_job(
                    job, outcome, self.events, plan.started(k), recheck=recheck, networks=None,
                    **self.job_options,
                )  # fmt: skip
                if not on_result(k, status):
                    return
                continue
            task = self.function.options(
                name=f"xportrait {job.spec.label}", retry_exceptions=False, **self.options
            )
            ref = task.remote(
                job, outcome, plan.started(k), self.box, recheck,
                self.job_options["force"], self.job_options["keep_work"],
            )  # fmt: skip
            pending[ref] = k
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=self.poll_s)
            self._drain()
            for ref in ready:
                k = pending.pop(ref)
                if not on_result(k, self._collect(ref, k)):
                    return

    def _drain(self) -> None:
        for event in self.ray.get(self.box.take.remote()):
            if isinstance(event, JobStarted) and event.index is not None:
                if event.index in self.started:
                    message = f"{event.job}: its worker was lost; Ray runs it again, from its checkpoint"
                    self.events(Log("warning", message, job=event.job))
                self.started.add(event.index)
            self.events(event)

    def _collect(self, ref: Any, k: int) -> str:
        """The status of a finished task, its outcome put in the summary; a lost task is failed."""
        exceptions = self.ray.exceptions
        try:
            outcome, status = self.ray.get(ref)
        except exceptions.TaskCancelledError:
            return "not_run"
        except exceptions.RayError as exc:
            outcome = self.plan.outcomes[k - 1]
            error, hint = _lost(exc, self.options["max_retries"])
            outcome.status, outcome.error = "failed", f"{error} ({hint})"
            self.events(JobFailed(error, hint, job=outcome.label))
            return "failed"
        self.plan.outcomes[k - 1] = outcome
        return status

    def _settle(self, pending: dict[Any, int]) -> None:
        ready, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=SETTLE_S)
        self._drain()
        for ref in ready:
            try:
                outcome, status = self.ray.get(ref)
            except self.ray.exceptions.RayError:  # cancelled (or lost): stays "not_run"
                continue
            if status != "locked":
                self.plan.outcomes[pending[ref] - 1] = outcome


def run_batch_ray(
    jobs: Sequence[ManifestJob | JobSpec],
    events: EventSink = null_sink,
    *,
    address: str | None = "local",
    num_gpus: float = 1.0,
    num_cpus: float = 1.0,
    max_retries: int = MAX_RETRIES,
    force: bool = False,
    keep_work: bool = False,
    fail_fast: bool = False,
    shard: Shard | None = None,
    lock_poll_s: float = LOCK_POLL_S,
    poll_s: float = POLL_S,
) -> BatchSummary:
    """Run ``jobs`` as Ray tasks, one per job, on a Ray cluster; see the module docstring.

    Args:
        jobs, events, force, keep_work, fail_fast, shard, lock_poll_s: as for
            :func:`~xportrait_cli.jobs.batch.run_batch` (``fail_fast`` also cancels the running
            tasks; they keep their checkpoints).
        address: the cluster: ``"local"`` starts a Ray instance on this machine, ``"auto"`` joins
            the cluster running here (or ``RAY_ADDRESS``), ``"ray://host:10001"`` / ``"host:6379"``
            a remote one, ``None`` lets ``ray.init()`` choose. Ignored when Ray is already
            initialized (the caller's connection is used and left open).
        num_gpus: GPUs per job (0 for CPU, a fraction below 1 to share a GPU); num_cpus: CPUs per job
            (the job's torch threads).
        max_retries: times Ray re-runs a job whose worker or node died; poll_s: seconds between
            drains of the workers' events.

    Returns:
        The :class:`~xportrait_cli.jobs.batch.BatchSummary`, exit code 0, 3 or 130 as for a local
        batch; a job whose task failed after ``max_retries`` re-runs is "failed".

    Raises:
        UsageError: Ray is not installed (the hint names ``xportrait[ray]``), the address cannot be
            reached, ``num_gpus`` / ``num_cpus`` are invalid, or a local instance started here has
            fewer GPUs or CPUs than one job needs (exit 2).
        BatchInterrupted: on Ctrl-C, with the summary so far; running tasks are cancelled and keep
            their checkpoints.
    """
    _check_resources(num_gpus, "--num-gpus")
    _check_resources(num_cpus, "--num-cpus")
    ray = import_ray()
    plan = BatchPlan(jobs, shard)
    connected = _connect(ray, address)
    local = connected and address == "local"  # its resources are all it will ever have
    rounds = None
    try:
        _describe_cluster(ray, events, num_cpus=num_cpus, num_gpus=num_gpus, strict=local)
        rounds = _RayRound(
            ray, plan, events, poll_s=poll_s, num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
            force=force, keep_work=keep_work,
        )  # fmt: skip
        return plan.drive(events, rounds, fail_fast=fail_fast, lock_poll_s=lock_poll_s)
    finally:
        if rounds is not None:
            rounds.close()
        if connected:
            ray.shutdown()


__all__ = ["INSTALL_HINT", "MAX_RETRIES", "POLL_S", "import_ray", "run_batch_ray"]
