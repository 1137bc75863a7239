"""`xportrait batch --ray`: a batch on a local Ray cluster (2 CPUs) with the golden tiny model.

One cluster for the module (under ``just test``, its tests share one xdist worker); the jobs run as
CPU tasks (``num_gpus=0``). The first test kills a worker in the middle of a job and checks that
Ray's re-run resumes it from its checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import decoded, json_lines, run_main, tiny_defaults, write_manifest
from filelock import FileLock

from xportrait_cli.events import Event, JobDone, JobStarted, Log, StepProgress
from xportrait_cli.jobs.manifest import load_manifest
from xportrait_cli.jobs.ray_batch import run_batch_ray

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.xdist_group("ray")  # under `-n 2`: one worker, one local cluster

WHERE = re.compile(r"runs on .*, worker pid (\d+)")
REPORT = re.compile(r"worker pid (\d+): (\d+) job\(s\), networks loaded (\d+) time\(s\)")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs and 2 declared GPUs; yields the seconds ``ray.init`` took.

    The GPUs are only Ray resources: a task that reserves one gets ``CUDA_VISIBLE_DEVICES`` set and
    its job (device ``auto``) still runs on the CPU without CUDA, so the GPU-shaped path (``num_gpus=1``,
    workers kept across tasks) is tested here too.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the workers inherit it: one torch thread per job
        t0 = time.monotonic()
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=100 * 2**20)
        seconds = time.monotonic() - t0
        print(f"ray.init: {seconds:.1f} s")
        yield seconds
        ray.shutdown()


def jobs(media: Path, n: int, **extra) -> list[dict]:
    pair = {"portrait": str(media / "xportrait_source.png"), "driving": str(media / "xportrait_driving.mp4")}
    return [{**pair, "output": f"{i}.mp4", "seed": i, **extra} for i in range(n)]


def reports(events: list) -> dict[int, list[tuple[int, int]]]:
    """Per worker pid: (jobs it had run, networks loads) from each job's closing debug log."""
    out: dict[int, list[tuple[int, int]]] = {}
    for e in events:
        message = e.message if isinstance(e, Log) else e.get("message", "") if isinstance(e, dict) else ""
        if match := REPORT.search(message):
            out.setdefault(int(match[1]), []).append((int(match[2]), int(match[3])))
    return out


class KillAtStep:
    """An event sink that SIGKILLs the worker running ``job`` when it reports its first denoising step
    (the step's checkpoint is written before the event), and records every event."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.events: list[Event] = []
        self.pids: dict[str, int] = {}
        self.killed: tuple[int, int] | None = None  # (pid, step)

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Log) and (match := WHERE.search(event.message)):
            self.pids[event.job] = int(match[1])
        elif isinstance(event, StepProgress) and event.job == self.job and self.killed is None:
            self.killed = (self.pids[self.job], event.step)
            os.kill(self.killed[0], signal.SIGKILL)


def test_a_killed_worker_s_job_is_resumed_not_restarted(cluster, tmp_path, golden, media):
    manifest = write_manifest(tmp_path / "m.yaml", tiny_defaults(golden, 8, 6), jobs(media, 3))
    sink = KillAtStep("0.mp4")
    t0 = time.monotonic()
    summary = run_batch_ray(load_manifest(manifest), sink, num_gpus=0)
    print(f"three jobs, one worker killed: {time.monotonic() - t0:.1f} s")
    assert sink.killed is not None
    pid, step = sink.killed
    assert [j.status for j in summary.jobs] == ["done", "done", "done"] and summary.exit_code == 0
    assert summary.jobs[0].resumed_from is not None and summary.jobs[0].resumed_from >= step >= 1
    assert [j.resumed_from for j in summary.jobs[1:]] == [None, None]
    assert all(decoded(tmp_path / f"{i}.mp4").shape == (8, 64, 64, 3) for i in range(3))
    assert not any((tmp_path / f"{i}.mp4.xportrait").exists() for i in range(3))  # work dirs removed
    events = sink.events
    assert sorted(e.job for e in events if isinstance(e, JobDone)) == ["0.mp4", "1.mp4", "2.mp4"]
    assert [e.index for e in events if isinstance(e, JobStarted) and e.job == "0.mp4"] == [1, 1]
    messages = [e.message for e in events if isinstance(e, Log) and e.job == "0.mp4"]
    assert any("its worker was lost; Ray runs it again" in m for m in messages)
    assert any(f"resumed 0.mp4 from step {summary.jobs[0].resumed_from} of 7" in m for m in messages)
    assert sink.pids["0.mp4"] != pid  # the re-run's worker
    assert all(loads == 1 for runs in reports(events).values() for _, loads in runs)


def test_cli_reports_a_failed_job_and_loads_the_model_once_per_worker(
    cluster, tmp_path, golden, media, monkeypatch, capsys
):
    # Ray is already initialized (the fixture): --ray uses that cluster, whose workers may be warm
    entries = [*jobs(media, 3), {"portrait": str(media / "xportrait_source.png"), "driving": "missing.mp4"}]
    manifest = write_manifest(tmp_path / "m.yaml", tiny_defaults(golden, 8, 2), entries)
    # a (declared) GPU and two CPUs per job: one job at a time, so a worker runs several of them;
    # Ray would recycle a GPU task's worker after each task unless told not to (max_calls=0)
    args = ("batch", str(manifest), "--ray", "local", "--num-cpus", "2", "--json")
    code, out, _ = run_main(monkeypatch, capsys, *args)
    assert code == 3
    events = json_lines("\n".join(line for line in out.splitlines() if line.startswith("{")))
    summary = events[-1]
    assert summary["kind"] == "batch_summary" and summary["exit_code"] == 3
    assert [j["status"] for j in summary["jobs"]] == ["done", "done", "done", "failed"]
    assert "missing.mp4: driving video not found" in summary["jobs"][3]["error"]
    assert any(e["kind"] == "job_failed" and "missing.mp4" in e["error"] for e in events)
    assert all(decoded(tmp_path / f"{i}.mp4").shape[0] == 8 for i in range(3))
    per_worker = reports(events)
    assert sum(len(runs) for runs in per_worker.values()) == 3
    assert all(loads == 1 for runs in per_worker.values() for _, loads in runs)  # never loaded twice
    assert max(n for runs in per_worker.values() for n, _ in runs) >= 2  # and reused by a later job


def test_a_job_locked_elsewhere_is_checked_again_and_run_once(cluster, tmp_path, golden, media):
    manifest = write_manifest(tmp_path / "m.yaml", tiny_defaults(golden, 8, 2), jobs(media, 1))
    (job,) = load_manifest(manifest)
    lock = FileLock(str(job.spec.lock_path))
    lock.acquire()  # "another process" holds the job until its first pass is through
    seen: list[Event] = []

    def sink(event: Event) -> None:
        seen.append(event)
        if isinstance(event, Log) and "checking it again at the end" in event.message:
            lock.release()

    try:
        summary = run_batch_ray([job], sink, num_gpus=0, lock_poll_s=0.1)
    finally:
        lock.release(force=True)
    assert [j.status for j in summary.jobs] == ["done"] and summary.exit_code == 0
    assert sum(isinstance(e, JobDone) for e in seen) == 1
    assert sum(isinstance(e, JobStarted) for e in seen) == 2  # the locked attempt, then the run
    assert not any(isinstance(e, Log) and "worker was lost" in e.message for e in seen)


def test_fail_fast_stops_before_the_cluster_runs_anything(cluster, tmp_path, golden, media):
    entries = [{"portrait": str(media / "xportrait_source.png"), "driving": "missing.mp4"}, *jobs(media, 2)]
    manifest = write_manifest(tmp_path / "m.yaml", tiny_defaults(golden, 8, 2), entries)
    summary = run_batch_ray(load_manifest(manifest), num_gpus=0, fail_fast=True)
    assert [j.status for j in summary.jobs] == ["failed", "not_run", "not_run"] and summary.exit_code == 3
    assert all("--fail-fast" in j.reason for j in summary.jobs[1:])
    assert not any(tmp_path.glob("*.mp4*"))


def test_without_ray_the_cli_says_what_to_install(tmp_path, golden, media, monkeypatch, capsys):
    manifest = write_manifest(tmp_path / "m.yaml", tiny_defaults(golden, 8, 2), jobs(media, 1))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, out, err = run_main(monkeypatch, capsys, "batch", str(manifest), "--ray", "local")
    assert code == 2 and out == ""
    assert err.strip() == "error: --ray needs Ray, which is not installed (pip install 'xportrait[ray]')"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--num-gpus", "0"), "--num-gpus and --num-cpus only apply with --ray"),
        (("--ray", "local", "--num-gpus", "1.5"), "invalid --num-gpus 1.5"),
        (("--ray", "local", "--num-cpus", "-1"), "invalid --num-cpus -1"),
    ],
)
def test_bad_ray_options_are_usage_errors(tmp_path, golden, media, monkeypatch, capsys, args, message):
    manifest = write_manifest(tmp_path / "m.yaml", tiny_defaults(golden, 8, 2), jobs(media, 1))
    code, _, err = run_main(monkeypatch, capsys, "batch", str(manifest), *args)
    assert code == 2 and err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
