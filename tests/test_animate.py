"""`xportrait animate` end to end on real media with the golden tiny model and the offline landmarks.

The runs whose process matters (Ctrl-C, a native decoder error, usage errors) go through the console
script in a subprocess; the others call its ``main()`` in this process (:func:`animate`: same exit
codes and output, without a ~10 s interpreter start each). Runs that assert only what the video
holds use one denoising step.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import cli_env, decoded, run_main, tiny_cli_args, tiny_spec, with_rotation

from xportrait_cli.jobs import run_job
from xportrait_cli.jobs.workdir import CHECKPOINT_NAME
from xportrait_cli.video.writer import write_video


@pytest.fixture(scope="module")
def tiny_args(golden):
    return tiny_cli_args(golden)


@pytest.fixture(scope="module")
def one_step_args(golden):
    return tiny_cli_args(golden, steps=1)


def xportrait(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The console script, as a user runs it (a subprocess, so exit codes are the real ones)."""
    return subprocess.run(
        [sys.executable, "-m", "xportrait_cli", *map(str, args)],
        cwd=cwd,
        env=cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=600,
    )


def animate(monkeypatch, capsys, cwd: Path, *args) -> tuple[int, str, str]:
    """``xportrait animate ARGS`` through the console script's ``main()`` in this process, run from
    ``cwd`` with a private home (as :func:`xportrait`): (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(cwd))
    monkeypatch.setenv("XPORTRAIT_HOME", str(cwd / ".home"))
    return run_main(monkeypatch, capsys, "animate", *map(str, args))


def video_facts(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        audio = [s.codec_context.name for s in c.streams.audio]
        return {
            "frames": frames,
            "rate": v.average_rate,
            "size": (v.width, v.height),
            "audio": audio,
            "duration": float(c.duration / av.time_base),
        }


def test_talking_head_with_audio(tmp_path, media, one_step_args, monkeypatch, capsys):
    portrait, driving = media / "xportrait_source.png", media / "talking_aac.mp4"
    code, stdout, stderr = animate(monkeypatch, capsys, tmp_path, portrait, driving, *one_step_args)
    assert code == 0, stderr
    out = tmp_path / "xportrait_source--talking_aac.mp4"  # default name, in the current directory
    assert stdout.strip().splitlines()[-1] == str(out)
    facts = video_facts(out)
    assert facts["frames"] == 183 and facts["rate"] == Fraction(25) and facts["size"] == (64, 64)
    assert facts["audio"] == ["aac"]
    assert abs(facts["duration"] - 183 / 25) < 0.05
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".home") == [out.name]  # nothing else left


def test_official_demo_pair_keeps_ntsc_rate_and_has_no_audio(
    tmp_path, media, one_step_args, monkeypatch, capsys
):
    out = tmp_path / "demo.mp4"
    code, stdout, stderr = animate(
        monkeypatch,
        capsys,
        tmp_path,
        media / "xportrait_source.png",
        media / "xportrait_driving.mp4",
        "-o",
        out,
        "--best-frame",
        "36",
        "--quiet",
        *one_step_args,
    )
    assert code == 0, stderr
    assert stdout.strip() == str(out)  # --quiet prints only the path
    facts = video_facts(out)
    assert facts["frames"] == 60 and facts["rate"] == Fraction(12000, 1001) and facts["audio"] == []


def test_non_square_carphone_with_comparison(tmp_path, media, one_step_args, monkeypatch, capsys):
    out = tmp_path / "car.mp4"
    code, stdout, stderr = animate(
        monkeypatch,
        capsys,
        tmp_path,
        media / "astronaut.png",
        media / "carphone.mp4",
        "-o",
        out,
        "--frames",
        "24",
        "--comparison",
        "--json",
        *one_step_args,
    )
    assert code == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[-1]["kind"] == "job_done" and any(e["kind"] == "step_progress" for e in events)
    # a CPU job keeps freed host memory for reuse (pipeline/host_memory.py), said in the JSON log
    logs = [e["message"] for e in events if e["kind"] == "log" and e["level"] == "debug"]
    assert any(m.startswith("host memory: glibc keeps freed buffers") for m in logs), logs
    facts = video_facts(out)
    assert facts["frames"] == 24 and facts["rate"] == Fraction(30000, 1001) and facts["size"] == (64, 64)
    side = video_facts(tmp_path / "car.comparison.mp4")
    assert side["frames"] == 24 and side["size"] == (192, 64)
    # the right panel is the result (teed before encoding: each file is one H.264 pass from it)
    panel, result = decoded(tmp_path / "car.comparison.mp4").astype(int), decoded(out)
    error = np.abs(panel[:, :, 128:] - result).mean()
    assert error < 6 and error < np.abs(panel[:, :, 64:128] - result).mean() / 4  # not the driving


def _bad_inputs(tmp_path: Path, media: Path) -> dict[str, tuple[Path, Path]]:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((media / "talking_aac.mp4").read_bytes()[:20000])
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(blank)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    audio_only = tmp_path / "audio_only.mp4"
    with av.open(str(media / "talking_aac.mp4")) as inp, av.open(str(audio_only), "w") as out:
        stream = out.add_stream_from_template(inp.streams.audio[0])
        for packet in inp.demux(inp.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    portrait, driving = media / "xportrait_source.png", media / "xportrait_driving.mp4"
    return {
        "missing": (portrait, tmp_path / "nope.mp4"),
        "directory": (portrait, tmp_path),
        "text file named .mp4": (portrait, text),
        "truncated mp4": (portrait, truncated),
        "audio-only file": (portrait, audio_only),
        "empty image": (empty, driving),
        "no face in the portrait, --best-frame 0": (blank, driving),
    }


#: The bad input run through the real console script (a subprocess: the process's own exit code and
#: stderr); the others call its ``main()`` in-process, which saves a ~10 s interpreter start each.
SUBPROCESS_CASES = {"truncated mp4"}


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "text file named .mp4",
        "truncated mp4",
        "audio-only file",
        "empty image",
        "no face in the portrait, --best-frame 0",
    ],
)
def test_bad_inputs_exit_1_with_one_line_and_no_output(tmp_path, media, tiny_args, case, monkeypatch, capsys):
    portrait, driving = _bad_inputs(tmp_path, media)[case]
    out = tmp_path / "out.mp4"
    extra = ["--best-frame", "0"] if "best-frame" in case else []
    args = ["animate", portrait, driving, "-o", out, *tiny_args, *extra, "--json"]
    if case in SUBPROCESS_CASES:
        run = xportrait(*args, cwd=tmp_path)
        code, stdout, stderr = run.returncode, run.stdout, run.stderr
    else:  # in this process: an exception escaping main() fails the test
        code, stdout, stderr = animate(monkeypatch, capsys, tmp_path, *args[1:])
    assert code == 1, (stdout, stderr)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert str(portrait if case.startswith(("no face", "empty")) else driving) in errors[0]
    assert not out.exists() and not list(tmp_path.glob("*.incomplete*"))
    assert not (tmp_path / "out.mp4.xportrait").exists()  # nothing to resume: no work folder left
    stages = [e["stage"] for e in map(json.loads, stdout.splitlines()) if e["kind"] == "stage_started"]
    if "no face" in case:
        assert "--best-frame -2" in errors[0] and "denoise" not in stages
    else:  # found when the inputs are opened, before any landmark or model work
        assert stages == []


def test_usage_errors_exit_2(tmp_path, media, tiny_args):
    run = xportrait(
        "animate",
        media / "xportrait_source.png",
        media / "talking_aac.mp4",
        "--size",
        "100",
        "--model",
        tmp_path / "x.th",
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "--size" in run.stderr
    run = xportrait("animate", media / "xportrait_source.png", cwd=tmp_path)
    assert run.returncode == 2


class Stop(Exception):
    pass


def test_interrupted_job_resumes_bit_identical_and_reruns_are_skipped(tmp_path, golden, media, default_run):
    reference = default_run.output  # the same job, uninterrupted
    assert default_run.status == "done"

    spec = tiny_spec(golden, media, tmp_path / "resumed.mp4")

    def crash_after_two(steps_done):
        if steps_done == 2:
            raise Stop

    with pytest.raises(Stop):
        run_job(spec, after_step=crash_after_two)
    assert (spec.work_dir / CHECKPOINT_NAME).is_file() and not spec.output.exists()
    seen = []
    resumed = run_job(spec, seen.append)
    assert resumed.resumed_from == 2
    assert any("resumed" in getattr(e, "message", "") and "step 2" in e.message for e in seen)
    assert np.array_equal(decoded(spec.output), decoded(reference))
    assert not spec.work_dir.exists()  # a finished job removes its work folder

    again = run_job(spec)  # same inputs and options: nothing is run twice
    assert again.status == "skipped"
    changed = run_job(tiny_spec(golden, media, spec.output, seed=1))  # an option changed: re-run
    assert changed.status == "done" and not np.array_equal(decoded(spec.output), decoded(reference))
    shutil.rmtree(tmp_path / ".home", ignore_errors=True)


def test_ctrl_c_exits_130_keeps_the_checkpoint_and_writes_nothing(tmp_path, media, golden):
    import signal

    out = tmp_path / "out.mp4"
    args = [
        "animate",
        media / "xportrait_source.png",
        media / "xportrait_driving.mp4",
        "-o",
        out,
        "--json",
        "--model",
        golden / "tiny_xportrait.th",
        "--model-config",
        golden / "tiny_config.yaml",
        "--size",
        "64",
        "--steps",
        "10",
        "--landmarks",
        "dlib",
        "--frames",
        "32",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "xportrait_cli", *map(str, args)],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if json.loads(line)["kind"] == "step_progress":
            proc.send_signal(signal.SIGINT)
            break
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert not out.exists() and not list(tmp_path.glob("*.incomplete*"))
    assert (tmp_path / "out.mp4.xportrait" / CHECKPOINT_NAME).is_file()  # finished steps are kept


def test_crop_and_paste_back_give_a_video_at_the_portrait_resolution(
    tmp_path, media, one_step_args, monkeypatch, capsys
):
    from PIL import Image

    wide = tmp_path / "wide.png"  # a non-square portrait: the astronaut with a border on the right
    astronaut = np.asarray(Image.open(media / "astronaut.png").convert("RGB"))
    Image.fromarray(np.pad(astronaut, ((0, 0), (0, 128), (0, 0)), mode="edge")).save(wide)
    out = tmp_path / "pasted.mp4"
    code, _, stderr = animate(
        monkeypatch,
        capsys,
        tmp_path,
        wide,
        media / "carphone.mp4",
        "-o",
        out,
        "--frames",
        "8",
        "--crop",
        "on",
        "--paste-back",
        *one_step_args,
    )
    assert code == 0, stderr
    facts = video_facts(out)
    assert facts["frames"] == 8 and facts["size"] == (640, 512)
    first = decoded(out)[0].astype(int)
    assert (
        np.abs(first[:, 560:] - np.asarray(Image.open(wide))[:, 560:]).mean() < 3
    )  # outside the face: original


def test_phone_video_with_a_rotation_matrix_is_read_upright(tmp_path, golden, media):
    # a portrait-mode phone clip: pixels stored sideways, a display matrix turning them upright
    # (decord cannot decode it; without turning the frames, no face would be found in them)
    sideways = tmp_path / "sideways.mp4"
    with av.open(str(media / "xportrait_driving.mp4")) as c:
        frames = [
            np.rot90(f.to_ndarray(format="rgb24"), k=-1)
            for _, f in zip(range(8), c.decode(video=0), strict=False)
        ]
    write_video(sideways, np.stack(frames), 25, crf=12)
    phone = with_rotation(sideways, tmp_path / "phone.mp4", 90)
    spec = tiny_spec(golden, media, tmp_path / "out.mp4", driving=phone, frames=8)
    seen = []
    assert run_job(spec, seen.append).status == "done"
    assert not [e for e in seen if "no face" in getattr(e, "message", "")]  # every frame upright
    assert video_facts(spec.output)["frames"] == 8
