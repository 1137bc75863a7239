"""`xportrait batch`: failure isolation, shards, locks, resume after SIGKILL, concurrent processes.

The first tests replace the job runner with a fake (fast); the end-to-end tests run the console
script on real media with the golden tiny model and the offline landmarks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_env, decoded, json_lines, tiny_defaults, write_manifest
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file

from xportrait_cli.errors import InputError, NoFaceError, UsageError
from xportrait_cli.events import JobDone, JobFailed, JobSkipped, JobStarted, StageStarted
from xportrait_cli.jobs import JobSpec
from xportrait_cli.jobs import attempt as attempt_module
from xportrait_cli.jobs.batch import DONE_ELSEWHERE, BatchInterrupted, Shard, run_batch
from xportrait_cli.jobs.manifest import ManifestJob, load_manifest
from xportrait_cli.jobs.runner import JobResult
from xportrait_cli.jobs.workdir import CHECKPOINT_NAME
from xportrait_cli.option_layers import resolve_options
from xportrait_cli.progress import batch_table
from xportrait_cli.progress_rich import RichSink

# --------------------------------------------------------------------------------------------------
# run_batch with a fake runner
# --------------------------------------------------------------------------------------------------


def specs(tmp_path: Path, n: int) -> list[JobSpec]:
    options = resolve_options({})
    return [
        JobSpec(tmp_path / "p.png", tmp_path / f"d{i}.mp4", tmp_path / f"out{i}.mp4", options)
        for i in range(n)
    ]


class FakeRunner:
    """Stands in for run_job: ``plan[name]`` is a result status, an exception, or a list of those."""

    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.calls: list[str] = []

    def __call__(self, spec, events, *, force, keep_work, networks):
        name = spec.output.name
        self.calls.append(name)
        what = self.plan.get(name, "done")
        if isinstance(what, list):
            what = what.pop(0)
        if isinstance(what, BaseException):
            events(StageStarted("landmarks", job=spec.label))
            raise what
        if what == "locked":
            events(JobSkipped("running in another process", str(spec.output), job=spec.label))
        elif what == "skipped":
            events(
                JobSkipped(
                    "finished output with the same inputs and options", str(spec.output), job=spec.label
                )
            )
        else:
            events(StageStarted("denoise", 2, job=spec.label))
            events(JobDone(str(spec.output), 1.5, job=spec.label))
        return JobResult(spec.output, what, 1.5 if what == "done" else 0.0)


@pytest.fixture
def fake(monkeypatch):
    def install(plan: dict) -> FakeRunner:
        runner = FakeRunner(plan)
        monkeypatch.setattr(attempt_module, "run_job", runner)
        return runner

    return install


def test_failures_are_isolated_and_bugs_logged_with_traceback(tmp_path, fake, caplog):
    runner = fake(
        {
            "out1.mp4": NoFaceError("p.png: no face found", "use another photo"),
            "out2.mp4": ZeroDivisionError("oops"),
        }
    )
    seen = []
    with caplog.at_level(logging.ERROR):
        summary = run_batch(specs(tmp_path, 4), seen.append)
    assert runner.calls == ["out0.mp4", "out1.mp4", "out2.mp4", "out3.mp4"]
    assert [j.status for j in summary.jobs] == ["done", "failed", "failed", "done"]
    assert summary.jobs[1].error == "p.png: no face found (use another photo)"
    assert summary.jobs[2].error == "ZeroDivisionError: oops"
    assert summary.exit_code == 3 and summary.counts == {"done": 2, "skipped": 0, "failed": 2, "not_run": 0}
    assert (
        "Traceback" in caplog.text and "ZeroDivisionError: oops" in caplog.text and "out2.mp4" in caplog.text
    )
    # per job: JobStarted(k of n) first, then exactly one terminal event
    for k in range(4):
        mine = [e for e in seen if e.job == f"out{k}.mp4"]
        assert mine[0] == JobStarted(str(tmp_path / f"out{k}.mp4"), k + 1, 4, job=f"out{k}.mp4")
        assert sum(isinstance(e, JobDone | JobFailed | JobSkipped) for e in mine) == 1
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["kind"] == "batch_summary" and data["counts"]["failed"] == 2 and data["exit_code"] == 3
    assert data["jobs"][2] == {
        "index": 3,
        "job": "out2.mp4",
        "output": str(tmp_path / "out2.mp4"),
        "status": "failed",
        "seconds": data["jobs"][2]["seconds"],
        "error": "ZeroDivisionError: oops",
        "reason": None,
        "resumed_from": None,
    }


def test_fail_fast_and_up_front_input_errors(tmp_path, fake):
    runner = fake({"out2.mp4": RuntimeError("boom")})
    jobs = [ManifestJob(i + 1, f"m.yaml job {i + 1}", s) for i, s in enumerate(specs(tmp_path, 4))]
    missing = InputError("d0.mp4: driving video not found", "check the path in m.yaml job 1")
    jobs[0] = ManifestJob(1, "m.yaml job 1", jobs[0].spec, missing)
    summary = run_batch(jobs)
    assert runner.calls == ["out1.mp4", "out2.mp4", "out3.mp4"]  # job 1 never reaches the runner
    assert [j.status for j in summary.jobs] == ["failed", "done", "failed", "done"]
    assert summary.jobs[0].error == "d0.mp4: driving video not found (check the path in m.yaml job 1)"

    runner.calls.clear()
    summary = run_batch(jobs[1:], fail_fast=True)
    assert runner.calls == ["out1.mp4", "out2.mp4"]  # stopped at the first failure
    assert [j.status for j in summary.jobs] == ["done", "failed", "not_run"]
    assert "--fail-fast" in summary.jobs[2].reason and summary.exit_code == 3


def test_interrupt_is_not_swallowed_and_keeps_the_summary(tmp_path, fake):
    fake({"out1.mp4": KeyboardInterrupt()})
    with pytest.raises(BatchInterrupted) as info:
        run_batch(specs(tmp_path, 3))
    assert isinstance(info.value, KeyboardInterrupt)
    summary = info.value.summary
    assert [j.status for j in summary.jobs] == ["done", "not_run", "not_run"] and summary.exit_code == 130


def test_locked_jobs_are_checked_again_at_the_end(tmp_path, fake):
    runner = fake({"out0.mp4": ["locked", "locked", "skipped"], "out2.mp4": ["locked", "done"]})
    seen = []
    summary = run_batch(specs(tmp_path, 3), seen.append, lock_poll_s=0)
    assert runner.calls == ["out0.mp4", "out1.mp4", "out2.mp4", "out0.mp4", "out2.mp4", "out0.mp4"]
    assert [j.status for j in summary.jobs] == ["skipped", "done", "done"]
    assert summary.jobs[0].reason == DONE_ELSEWHERE and summary.exit_code == 0
    skipped = [e for e in seen if isinstance(e, JobSkipped)]
    assert [e.reason for e in skipped] == [DONE_ELSEWHERE]  # "running in another process" is not a result
    assert sum(isinstance(e, JobDone) for e in seen) == 2


def test_shards_split_deterministically(tmp_path, fake):
    fake({})
    jobs = specs(tmp_path, 5)
    names = [[j.label for j in run_batch(jobs, shard=Shard(i, 2)).jobs] for i in range(2)]
    assert names == [["out0.mp4", "out2.mp4", "out4.mp4"], ["out1.mp4", "out3.mp4"]]
    assert Shard.parse(" 1/3 ") == Shard(1, 3) and str(Shard(1, 3)) == "1/3"
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(UsageError):
            Shard.parse(bad)


def test_rich_jobs_bar_and_summary_table(tmp_path, fake):
    fake({"out1.mp4": NoFaceError("[x] no face", "")})
    console = Console(record=True, width=120, force_terminal=False)
    with RichSink(console, out=open(os.devnull, "w")) as sink:
        summary = run_batch(specs(tmp_path, 3), sink)
        bars = {t.description: t for t in sink.progress.tasks}
        assert bars["jobs"].completed == 3 and bars["jobs"].total == 3
    console.print(batch_table(summary))
    text = console.export_text()
    assert "[x] no face" in text and "2 done, 1 failed" in text


# --------------------------------------------------------------------------------------------------
# End to end: the console script on real media with the tiny golden model
# --------------------------------------------------------------------------------------------------


def command(*args) -> list[str]:
    return [sys.executable, "-m", "xportrait_cli", "batch", *map(str, args)]


def xportrait_batch(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args), cwd=cwd, env=cli_env(cwd), capture_output=True, text=True, timeout=600
    )


def test_three_jobs_one_missing_then_an_option_change_reruns_only_that_job(tmp_path, golden, media):
    jobs = [
        {"portrait": str(media / "xportrait_source.png"), "driving": str(media / "xportrait_driving.mp4")},
        {
            "portrait": str(media / "astronaut.png"),
            "driving": str(media / "carphone.mp4"),
            "output": "car.mp4",
        },
        {"portrait": str(media / "xportrait_source.png"), "driving": "missing.mp4"},
    ]
    manifest = write_manifest(tmp_path / "manifest.yaml", tiny_defaults(golden, 8, 2), jobs)
    run = xportrait_batch(manifest, cwd=tmp_path)
    assert run.returncode == 3, run.stderr
    first, car = tmp_path / "xportrait_source--xportrait_driving.mp4", tmp_path / "car.mp4"
    assert run.stdout.split() == [str(first), str(car)]  # the results, on stdout
    assert len(decoded(first)) == 8 and decoded(car).shape == (8, 64, 64, 3)
    assert "missing.mp4: driving video not found" in run.stderr and "manifest.yaml job 3" in run.stderr
    assert "2 done, 1 failed" in run.stderr  # the summary table
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".home") == [
        "car.mp4",
        "manifest.yaml",
        first.name,
    ]

    before = first.stat().st_mtime_ns
    jobs[1]["seed"] = 5
    write_manifest(manifest, tiny_defaults(golden, 8, 2), jobs)
    run = xportrait_batch(manifest, "--json", cwd=tmp_path)
    assert run.returncode == 3, run.stderr
    events = json_lines(run.stdout)
    summary = events[-1]
    assert summary["kind"] == "batch_summary"
    assert [j["status"] for j in summary["jobs"]] == ["skipped", "done", "failed"]
    assert summary["counts"] == {"done": 1, "skipped": 1, "failed": 1, "not_run": 0}
    assert "missing.mp4" in summary["jobs"][2]["error"]
    assert [e["job"] for e in events if e["kind"] == "job_done"] == ["car.mp4"]
    assert any(
        e["kind"] == "log" and "re-running car.mp4: its inputs or options changed" in e["message"]
        for e in events
    )
    assert first.stat().st_mtime_ns == before


def test_sigkill_then_rerun_resumes_bit_identical(tmp_path, golden, media):
    defaults = tiny_defaults(golden, 16, 4)
    pair = {"portrait": str(media / "xportrait_source.png"), "driving": str(media / "xportrait_driving.mp4")}
    # the uninterrupted run, in this process through the library
    (reference,) = load_manifest(
        write_manifest(tmp_path / "ref.yaml", defaults, [{**pair, "output": "ref.mp4"}])
    )
    assert run_batch([reference], keep_work=True).exit_code == 0

    manifest = write_manifest(tmp_path / "crash.yaml", defaults, [{**pair, "output": "crash.mp4"}])
    out = tmp_path / "crash.mp4"
    proc = subprocess.Popen(
        command(manifest, "--json"), cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event["kind"] == "step_progress" and event["step"] >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    with safe_open(str(tmp_path / "crash.mp4.xportrait" / CHECKPOINT_NAME), framework="pt") as f:
        k = int(f.metadata()["steps_done"])
    assert 1 <= k < 4

    run = xportrait_batch(manifest, "--json", "--keep-work", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    events = json_lines(run.stdout)
    assert any(e["kind"] == "log" and f"resumed crash.mp4 from step {k} of 4" in e["message"] for e in events)
    assert events[-1]["jobs"][0]["resumed_from"] == k
    resumed, full = (
        load_file(tmp_path / f"{n}.mp4.xportrait" / CHECKPOINT_NAME)["latents"] for n in ("crash", "ref")
    )
    assert torch.equal(resumed, full)  # the final latents: bit-identical
    assert np.array_equal(decoded(out), decoded(tmp_path / "ref.mp4"))  # and the frames


def test_two_concurrent_batches_do_every_job_exactly_once(tmp_path, golden, media):
    driving = media / "xportrait_driving.mp4"
    jobs = [
        {
            "portrait": str(media / "xportrait_source.png"),
            "driving": str(driving),
            "output": f"{i}.mp4",
            "seed": i,
        }
        for i in range(3)
    ]
    manifest = write_manifest(tmp_path / "manifest.yaml", tiny_defaults(golden, 8, 2), jobs)
    procs = [
        subprocess.Popen(
            command(manifest, "--json"),
            cwd=tmp_path,
            env=cli_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    streams = [json_lines(out) for out, _ in results]
    done = [e["output"] for events in streams for e in events if e["kind"] == "job_done"]
    assert sorted(done) == sorted(str(tmp_path / f"{i}.mp4") for i in range(3))  # once each, over both
    for events in streams:
        summary = events[-1]
        assert summary["counts"]["done"] + summary["counts"]["skipped"] == 3
        # skipped: found finished, or found running and finished when checked again at the end
        assert all(j["reason"] for j in summary["jobs"] if j["status"] == "skipped")
    assert all(len(decoded(tmp_path / f"{i}.mp4")) == 8 for i in range(3))
