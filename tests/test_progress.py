"""Events and their rendering (xportrait_cli.events, xportrait_cli.progress)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from xportrait_cli.errors import NoFaceError
from xportrait_cli.events import (
    CROP_STAGES,
    JOB_STAGES,
    STAGES,
    JobDone,
    JobFailed,
    JobSkipped,
    JobStarted,
    Log,
    StageFinished,
    StageProgress,
    StageStarted,
    StepProgress,
    from_dict,
    stage,
)
from xportrait_cli.progress import choose_mode, format_seconds, make_sink

#: The event log of a real tiny-model job (:func:`record_job_events`; regenerate with
#: ``python tests/test_progress.py`` after changing what ``run_job`` emits): ``--crop auto`` crops
#: the non-square driving clip, so every stage of :data:`STAGES` runs once.
EVENT_LOG = Path(__file__).parent / "data" / "job_events.jsonl"
OUT = "tmp/out.mp4"


def record_job_events(shared: Path, folder: Path) -> list[dict]:
    """Run the recorded job into ``folder`` (tiny model, 2 steps, 8 frames of the talking-head clip
    padded to 9:16, so ``--crop auto`` crops it); its events as dicts, with ``folder`` and ``shared``
    spelt ``tmp`` and ``shared`` (as in :data:`EVENT_LOG`)."""
    from conftest import padded_to_9_16, tiny_spec

    from xportrait_cli.jobs import run_job

    media = shared / "media"
    driving = padded_to_9_16(media / "talking_aac.mp4", folder / "phone.mp4", 8)
    spec = tiny_spec(
        shared / "golden", media, folder / "out.mp4", driving=driving, frames=8, num_inference_steps=2
    )
    events: list[dict] = []
    run_job(spec, lambda event: events.append(event.to_dict()))
    text = json.dumps(events).replace(str(folder), "tmp").replace(str(shared), "shared")
    return json.loads(text)


def recorded() -> list[dict]:
    return [json.loads(line) for line in EVENT_LOG.read_text().splitlines()]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


#: Seconds each kind of event takes on the replay's fake clock (a stage's progress events come
#: faster than plain mode's one line a second, denoising steps slower).
TICKS = {"stage_progress": 0.3, "frames_written": 0.3, "step_progress": 2.0}


def job_events(clock: FakeClock | None = None):
    """The recorded job's events, advancing ``clock`` as the events would take time."""
    for data in recorded():
        if clock is not None:
            clock.now += TICKS.get(data["kind"], 0.0)
        yield from_dict(data)


def run(mode: str, *, terminal: bool = False, events=None, clock=None):
    err = io.StringIO()
    out = io.StringIO()
    console = Console(file=err, force_terminal=terminal, width=120, color_system=None)
    kwargs = {"clock": clock} if clock is not None else {}
    with make_sink(mode, console, out=out, **kwargs) as sink:
        for event in events if events is not None else job_events(clock):
            sink(event)
    return err.getvalue(), out.getvalue()


# ------------------------------------------------------------------------------------- events


def test_event_dicts_are_flat_json_with_kind_first():
    e = StepProgress(3, 31, 925, 5)
    assert e.to_dict() == {
        "kind": "step_progress",
        "step": 3,
        "total_steps": 31,
        "timestep": 925,
        "windows": 5,
    }
    assert list(e.to_dict())[0] == "kind"
    assert JobDone(Path("a/b.mp4"), 1.0, job="b").to_dict() == {
        "kind": "job_done",
        "job": "b",
        "output": "a/b.mp4",
        "seconds": 1.0,
    }
    kinds = set()
    for event in job_events():
        d = event.to_dict()
        assert json.loads(json.dumps(d)) == d
        kinds.add(d["kind"])
    assert {"job_started", "stage_started", "stage_progress", "stage_finished", "step_progress"} <= kinds


def test_events_reject_unknown_stages_and_levels():
    assert (
        STAGES
        == CROP_STAGES + JOB_STAGES
        == ("landmarks", "encode", "portrait", "align", "denoise", "decode")
    )
    with pytest.raises(ValueError, match="stage"):
        StageStarted("sample")
    with pytest.raises(ValueError, match="level"):
        Log("loud", "x")


def test_job_failed_from_a_known_error_keeps_the_hint():
    e = JobFailed.from_exception(NoFaceError("no face in a.png", "use --crop"), job="x")
    assert (e.error, e.hint, e.job) == ("no face in a.png", "use --crop", "x")
    assert JobFailed.from_exception(RuntimeError("boom")).error == "boom"


# ------------------------------------------------------------------------------------- modes


def test_json_mode_writes_one_object_per_event_on_stdout():
    err, out = run("json")
    lines = out.splitlines()
    events = list(job_events())
    assert err == ""
    assert len(lines) == len(events)
    assert [json.loads(line) for line in lines] == [e.to_dict() for e in events]
    assert json.loads(lines[-1]) == recorded()[-1]
    assert {k: v for k, v in json.loads(lines[-1]).items() if k != "seconds"} == {
        "kind": "job_done",
        "job": "out.mp4",
        "output": OUT,
    }


def test_quiet_mode_prints_only_the_output_path():
    err, out = run("quiet", terminal=True)
    assert err == "" and out == OUT + "\n"
    err, out = run("quiet", events=[JobSkipped("output is up to date", output=OUT), JobSkipped("no output")])
    assert err == "" and out == OUT + "\n"
    err, out = run("quiet", events=[JobFailed("no face in a.png", "use --crop")])
    assert err == "" and out == ""


def _seconds(kind: str, stage_name: str) -> str:
    (data,) = [e for e in recorded() if e["kind"] == kind and e.get("stage") == stage_name]
    return format_seconds(data["seconds"])


def test_plain_mode_prints_start_finish_and_rate_limited_progress():
    err, out = run("plain", clock=FakeClock())
    lines = err.splitlines()
    assert out == OUT + "\n"
    assert lines[0] == f"[out.mp4] job: {OUT}"
    for name in STAGES:
        prefix = "" if name in CROP_STAGES else "[out.mp4] "  # crop's events carry no job label
        assert any(line.startswith(f"{prefix}{name}: started") for line in lines), name
        assert any(line.startswith(f"{prefix}{name}: done in") for line in lines), name
    assert "encode: started (8)" in lines and "[out.mp4] decode: started (8)" in lines
    assert f"[out.mp4] denoise: done in {_seconds('stage_finished', 'denoise')}" in lines
    assert lines[-1] == f"[out.mp4] done in {format_seconds(recorded()[-1]['seconds'])}: {OUT}"
    # one event per 0.3 s: landmarks (1) and align (2) print no progress line, decode's 8 frames
    # (2.4 s) about one a second, filed under decode (not encode: crop's stage is finished).
    assert not any(line.startswith(("landmarks: ", "[out.mp4] align: ")) and "/" in line for line in lines)
    decode_lines = [line for line in lines if line.startswith("[out.mp4] decode: ") and "/" in line]
    assert decode_lines == ["[out.mp4] decode: 4/8 50% eta 1.2 s", "[out.mp4] decode: 8/8 100%"]
    # denoise: one line per 2-s step, with step k/S, timestep, windows, percent and ETA
    steps = [line for line in lines if line.startswith("[out.mp4] denoise: ") and "/" in line]
    assert steps == [
        "[out.mp4] denoise: 1/2 (t=501, 1 windows) 50% eta 2.0 s",
        "[out.mp4] denoise: 2/2 (t=1, 1 windows) 100%",
    ]
    progress = [e for e in recorded() if e["kind"] in TICKS]
    assert len(lines) < len(recorded()) and len(progress) == 14


def test_plain_and_rich_modes_show_warnings_but_not_debug_logs():
    events = [Log("warning", "driving video has no audio"), Log("debug", "windows drawn up front")]
    for mode in ("plain", "rich"):
        err, _ = run(mode, terminal=mode == "rich", events=events)
        assert "warning: driving video has no audio" in err
        assert "windows drawn" not in err  # debug is JSON-only


def test_plain_mode_labels_batch_jobs_and_failures():
    events = [
        JobStarted("a.mp4", index=1, total=2, job="a.mp4"),
        JobFailed("no face in a.png", "use --crop", job="a.mp4"),
        JobStarted("b.mp4", index=2, total=2, job="b.mp4"),
        JobSkipped("output is up to date", output="b.mp4", job="b.mp4"),
    ]
    err, out = run("plain", events=events)
    assert err.splitlines() == [
        "[a.mp4] job (1/2): a.mp4",
        "[a.mp4] failed: no face in a.png (use --crop)",
        "[b.mp4] job (2/2): b.mp4",
        "[b.mp4] skipped: output is up to date",
    ]
    assert out == "b.mp4\n"


def test_rich_mode_shows_a_bar_per_stage_with_steps_and_windows():
    err, out = run("rich", terminal=True)
    assert out == OUT + "\n"
    final = err.split("\x1b[?25h")[0]  # the last frame, before the cursor comes back
    for name in STAGES:
        assert name in final
    assert "2/2" in final and "1 windows/step" in final and "t=1 " in final
    assert "8/8" in final
    assert f"done in {format_seconds(recorded()[-1]['seconds'])}: {OUT}" in err


def test_rich_mode_moves_the_bar_of_every_stage_that_started():
    """Replaying the recorded job, each started stage's bar advances while the stage runs (its
    progress events fill it, not only its StageFinished) and ends full; no bar but the stages'."""
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    moved: dict[str, float] = {}
    running: set[str] = set()
    with make_sink("rich", console, out=io.StringIO()) as sink:
        for event in job_events():
            sink(event)
            if isinstance(event, StageStarted | StageFinished):
                (running.add if isinstance(event, StageStarted) else running.discard)(event.stage)
            for task in sink.progress.tasks:
                if task.description in running:
                    moved[task.description] = max(moved.get(task.description, 0), task.completed)
    bars = {t.description: t for t in sink.progress.tasks}
    started = [e["stage"] for e in recorded() if e["kind"] == "stage_started"]
    assert started == list(STAGES) and set(bars) == set(started)
    for name in started:
        assert bars[name].finished, name
    silent = {"portrait"}  # one portrait: no progress events, the bar fills at StageFinished
    assert {name for name in started if moved[name] > 0} == set(started) - silent
    assert bars["decode"].completed == bars["decode"].total == 8


def test_a_fresh_run_emits_the_recorded_sequence_of_events(shared, tmp_path):
    fresh = record_job_events(shared, tmp_path)
    assert [(e["kind"], e.get("stage"), e.get("job")) for e in fresh] == [
        (e["kind"], e.get("stage"), e.get("job")) for e in recorded()
    ]
    assert [from_dict(e) for e in fresh][0] == JobStarted(OUT, job="out.mp4")


def test_rich_mode_resets_bars_between_jobs():
    events = [
        *job_events(),
        JobStarted("second.mp4"),
        StageStarted("align", total=10),
        StageProgress("align", 4, 10),
    ]
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with make_sink("rich", console, out=io.StringIO()) as sink:
        for event in events:
            sink(event)
    tasks = sink.progress.tasks
    assert [(t.description, t.completed, t.total) for t in tasks] == [("align", 4, 10)]


def test_stage_context_manager_times_the_block_and_reports_progress():
    events = []
    with stage(events.append, "align", job="j", total=3) as progress:
        progress(2)
    assert [type(e) for e in events] == [StageStarted, StageProgress, StageFinished]
    assert events[1] == StageProgress("align", 2, 3, job="j") and events[2].seconds >= 0
    events.clear()
    with pytest.raises(KeyboardInterrupt), stage(events.append, "denoise"):
        raise KeyboardInterrupt
    assert events == [StageStarted("denoise")]  # no StageFinished for a stage that failed
    with pytest.raises(ValueError, match="stage"), stage(events.append, "sample"):
        pass


def test_rich_mode_stops_the_display_when_the_body_raises():
    console = Console(file=io.StringIO(), force_terminal=True)
    with pytest.raises(KeyboardInterrupt), make_sink("rich", console, out=io.StringIO()) as sink:
        sink(StageStarted("denoise", total=31))
        raise KeyboardInterrupt
    assert not console.is_alt_screen and console._live_stack == []


def test_make_sink_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mode"), make_sink("loud"):
        pass


def test_choose_mode():
    terminal = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert choose_mode(console=terminal) == "rich"
    assert choose_mode(console=pipe) == "plain"
    assert choose_mode(quiet=True, console=terminal) == "quiet"
    assert choose_mode(json_lines=True, quiet=True, console=terminal) == "json"


def test_format_seconds():
    assert [format_seconds(s) for s in (0.44, 12.34, 245, 3720)] == ["0.4 s", "12.3 s", "4m05s", "1h02m"]


def test_rich_mode_with_jobs_at_once_shows_a_bar_per_job_and_counts_them():
    def job(name: str, k: int) -> list:
        return [JobStarted(name, index=k, total=3, job=name), StageStarted("denoise", total=7, job=name)]

    events = [
        *job("a.mp4", 1),
        *job("b.mp4", 2),  # starts while a.mp4 runs: one bar per job from here on
        StepProgress(2, 7, 831, 1, job="a.mp4"),
        StepProgress(5, 7, 333, 1, job="b.mp4"),
        JobDone("b.mp4", 3.0, job="b.mp4"),
        *job("c.mp4", 3),
        JobFailed("no face", job="c.mp4"),
    ]
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with make_sink("rich", console, out=io.StringIO()) as sink:
        for event in events:
            sink(event)
    bars = {t.description: t for t in sink.progress.tasks}
    assert set(bars) == {"jobs", "a.mp4"}  # finished jobs' bars are gone
    assert (bars["a.mp4"].completed, bars["a.mp4"].total) == (2, 7)
    assert bars["a.mp4"].fields["info"].startswith("denoise t=831")
    assert bars["jobs"].completed == 2 and bars["jobs"].fields["info"] == "1 done, 1 running, 1 failed"


if __name__ == "__main__":  # regenerate EVENT_LOG from a real run
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import shared_dir

    with tempfile.TemporaryDirectory() as tmp:
        log = record_job_events(shared_dir(), Path(tmp))
    EVENT_LOG.write_text("".join(json.dumps(event) + "\n" for event in log))
    print(f"{EVENT_LOG}: {len(log)} events")
