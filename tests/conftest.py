"""Shared fixtures and helpers: the ../shared test data, a single torch thread, manifests of the tiny
golden model, decoding results."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The shared test data folder: env ``XPORTRAIT_SHARED``, default ``../shared`` beside the project."""
    return Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    """Path to the shared test data; skips the test with a clear reason when it is absent."""
    path = shared_dir()
    if not (path / "golden").is_dir():
        pytest.skip(f"shared test data not found at {path} (set XPORTRAIT_SHARED to its folder)")
    return path


@pytest.fixture(scope="session")
def golden(shared: Path) -> Path:
    return shared / "golden"


@pytest.fixture(scope="session")
def media(shared: Path) -> Path:
    return shared / "media"


@pytest.fixture(scope="session")
def tiny_config(golden: Path) -> Path:
    return golden / "tiny_config.yaml"


@pytest.fixture(scope="session")
def tiny_state_dict(golden: Path) -> dict:
    """The golden tiny model's official-layout state dict (fp16 parameters), read once."""
    return torch.load(golden / "tiny_xportrait.th", map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="session")
def tiny_pipe(golden: Path, tiny_config: Path):
    """The golden tiny model's pipeline in fp32 on the CPU (shared: tests must not modify its weights)."""
    from xportrait_cli.pipeline import load_pipeline

    return load_pipeline(golden / "tiny_xportrait.th", config=tiny_config)


def cli_env(cwd: Path) -> dict:
    """Environment of a console-script subprocess: one thread, a private home, and this checkout's
    package first on the path (not whichever copy the venv installed)."""
    return {
        "OMP_NUM_THREADS": "1",
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
        "XPORTRAIT_HOME": str(cwd / ".home"),
        "PYTHONPATH": str(ROOT),
    }


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console script's ``main()`` in-process with ``args``: (exit code, stdout, stderr)."""
    from xportrait_cli import cli

    monkeypatch.setattr(sys, "argv", ["xportrait", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_defaults(golden: Path, frames: int, steps: int) -> dict:
    """Manifest ``defaults:`` for quick jobs: the golden tiny model at 64 px, dlib landmarks."""
    return {
        "model": str(golden / "tiny_xportrait.th"),
        "model-config": str(golden / "tiny_config.yaml"),
        "size": 64,
        "steps": steps,
        "landmarks": "dlib",
        "frames": frames,
    }


def tiny_cli_args(golden: Path, steps: int = 2) -> list[str]:
    """``animate`` flags for quick CLI runs: the golden tiny model at 64 px, dlib landmarks."""
    return [
        "--model",
        str(golden / "tiny_xportrait.th"),
        "--model-config",
        str(golden / "tiny_config.yaml"),
        "--size",
        "64",
        "--steps",
        str(steps),
        "--landmarks",
        "dlib",
    ]


def write_manifest(path: Path, defaults: dict, jobs: list[dict]) -> Path:
    """Write a batch manifest (as JSON, which is YAML) and return its path."""
    path.write_text(json.dumps({"defaults": defaults, "jobs": jobs}, indent=1))  # JSON is YAML
    return path


def json_lines(stdout: str) -> list[dict]:
    """The JSON objects of a ``--json`` stdout, one per line."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def decoded(path: Path) -> np.ndarray:
    """Every frame of a video, ``(N, H, W, 3)`` uint8 RGB."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def tiny_spec(golden: Path, media: Path, out: Path, *, driving: Path | None = None, **options):
    """A :class:`JobSpec` animating the official demo portrait with the golden tiny model at 64 px
    (4 steps, 20 frames, dlib landmarks; ``options`` override), driven by the demo clip or ``driving``."""
    from xportrait_cli.jobs import JobSpec
    from xportrait_cli.option_layers import resolve_options

    resolved = resolve_options(
        {
            "model": golden / "tiny_xportrait.th",
            "model_config": golden / "tiny_config.yaml",
            "size": 64,
            "num_inference_steps": 4,
            "landmarks": "dlib",
            "frames": 20,
            **options,
        }
    )
    driving = driving or media / "xportrait_driving.mp4"
    return JobSpec(media / "xportrait_source.png", driving, out, resolved)


@pytest.fixture(scope="session")
def default_run(golden: Path, media: Path, tmp_path_factory):
    """The default :func:`tiny_spec` job (demo pair, 20 frames, 4 steps, 64 px), run once per session
    (per xdist worker) with its work directory kept (the final latents): a
    :class:`~xportrait_cli.jobs.runner.JobResult`. Tests only read its files."""
    from xportrait_cli.jobs import run_job

    out = tmp_path_factory.mktemp("default_run") / "default.mp4"
    return run_job(tiny_spec(golden, media, out), keep_work=True)


def with_rotation(src: Path, dst: Path, degrees: int) -> Path:
    """Remux ``src`` (no re-encoding) with a display matrix turning it ``degrees`` counter-clockwise,
    as phones store portrait-mode clips."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        stream.set_display_rotation(degrees)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


def padded_to_9_16(src: Path, dst: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``src`` edge-padded above and below to a 9:16 portrait frame
    (a phone clip: 512×512 → 512×910), at ``src``'s frame rate and with its audio."""
    import cv2

    from xportrait_cli.video.reader import VideoReader
    from xportrait_cli.video.writer import write_video

    with VideoReader(src) as reader:
        fps = reader.info.fps
        clip = reader.read(range(min(frames, len(reader))))
    h, w = clip.shape[1:3]
    extra = (round(w * 16 / 9) // 2 * 2) - h
    tall = [cv2.copyMakeBorder(f, extra // 3, extra - extra // 3, 0, 0, cv2.BORDER_REPLICATE) for f in clip]
    return write_video(dst, np.stack(tall), fps, audio_source=src)


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the size given to the returned function (``mount -t tmpfs -o size=300k``) on
    a folder under ``tmp_path``; unmounted afterwards. Skips when mounting is refused (not root)."""
    import subprocess

    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        run = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if run.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip() or run.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    import gc

    gc.collect()  # close memory maps of files on it
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(folder)], check=False)  # detached now, freed when closed
