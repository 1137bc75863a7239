"""CPU, tiny model: frames/s, stage split and peak memory of ``xportrait animate`` by video length.

For each length N the official driving clip (``../shared/media/xportrait_driving.mp4``, 60 frames) is
looped with PyAV into an N-frame 512×512 video in a temporary folder, and ``xportrait animate`` runs
on it in a fresh subprocess with the golden tiny model (``--size 64 --steps 2 --landmarks dlib
--json``), so each length's peak memory is its own. The child times the non-model work by wrapping
the functions that do it (video decode, landmark detection, frame-store reads, video encode) and
reads the job's ``stage_finished`` events (``--json`` lines) for the rest.

Printed per length: wall seconds of the job, frames/s, peak RSS (``ru_maxrss``) and the peak of
anonymous memory (``RssAnon``, sampled; file pages of the frame store excluded), and seconds per
stage: video decode, resize (the official anti-aliased skimage resizes, to the model size and to 256
for landmarks), landmarks (detection), prepare other (landmark model load, warps, store writes),
model load and other job overhead, denoise (of which frame-store reads), decode latents (VAE),
encode (video writer).

Usage: ``python benchmarks/cpu.py [--lengths 60 250 1000] [--steps 2]``
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import tiny_cli_args  # noqa: E402  (the tests' quick tiny-model flags)

SHARED = Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared"))
MEDIA = SHARED / "media"
GOLDEN = SHARED / "golden"


def make_video(path: Path, num_frames: int, source: Path = MEDIA / "xportrait_driving.mp4") -> None:
    """Write ``num_frames`` frames of ``source`` looped (12000/1001 fps, H.264) to ``path``."""
    import av

    with av.open(str(source)) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(12000, 1001))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


class Timers:
    """Seconds and call counts per label, filled by :meth:`wrap`ped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, label: str, seconds: float) -> None:
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds
        self.calls[label] = self.calls.get(label, 0) + 1

    def wrap(self, owner, name: str, label: str) -> None:
        """Time every call of ``owner.name`` under ``label``."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - start)

        setattr(owner, name, timed)

    def wrap_generator(self, owner, name: str, label: str) -> None:
        """Time the work of each ``next()`` of the generator ``owner.name`` returns."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            iterator = original(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    self.add(label, time.perf_counter() - start)
                    return
                self.add(label, time.perf_counter() - start)
                yield item

        setattr(owner, name, timed)


class AnonPeak:
    """Samples ``RssAnon`` from /proc/self/status in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.read_mb())

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.read_mb())


def child(args: argparse.Namespace) -> None:
    """Run ``xportrait animate`` in this process with timers; writes the timers to ``args.result``."""
    from xportrait_cli import cli, image
    from xportrait_cli.face import landmarks
    from xportrait_cli.jobs import prepare_driving as prepare
    from xportrait_cli.jobs.framestore import FrameStore
    from xportrait_cli.pipeline import XPortraitPipeline
    from xportrait_cli.video.reader import VideoReader
    from xportrait_cli.video.writer import VideoWriter

    timers = Timers()
    timers.wrap(VideoReader, "read", "video_decode")
    timers.wrap(prepare, "resize_official", "resize")
    timers.wrap(image, "landmark_input", "resize")  # imported by find_landmarks when it runs
    for name in ("DlibDetector", "FanDetector"):
        timers.wrap(getattr(landmarks, name), "detect", "landmarks")
    timers.wrap(FrameStore, "global_hints", "store_reads")
    timers.wrap(FrameStore, "local_hints", "store_reads")
    timers.wrap_generator(XPortraitPipeline, "decode_latents", "decode_latents")
    timers.wrap(VideoWriter, "write", "encode")
    timers.wrap(VideoWriter, "close", "encode")
    sys.argv = ["xportrait", "animate", *args.animate]
    start = time.perf_counter()
    with AnonPeak() as anon:
        cli.main()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "wall_seconds": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "peak_anon_mb": anon.peak_mb,
        "timers": timers.seconds,
        "calls": timers.calls,
    }
    Path(args.result).write_text(json.dumps(result))


def run_length(num_frames: int, work: Path, steps: int = 2) -> dict:
    """Animate an ``num_frames``-frame looped clip in a subprocess; returns figures and stage split."""
    video = work / f"driving_{num_frames}.mp4"
    if not video.exists():
        make_video(video, num_frames)
    result_path = work / f"result_{num_frames}.json"
    output = work / f"out_{num_frames}.mp4"
    animate = [
        str(MEDIA / "xportrait_source.png"),
        str(video),
        "-o",
        str(output),
        *tiny_cli_args(GOLDEN, steps),
        "--force",
        "--json",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", XPORTRAIT_HOME=str(work / ".home"))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--result", str(result_path), "--", *animate],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"animate failed for N={num_frames} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    stages = {e["stage"]: e["seconds"] for e in events if e["kind"] == "stage_finished"}
    job_seconds = next(e["seconds"] for e in events if e["kind"] == "job_done")
    measured = json.loads(result_path.read_text())
    t = measured["timers"]
    # everything before denoising: any --crop (landmarks, encode), the portrait, the driving frames
    prepare = sum(stages.get(k, 0.0) for k in ("landmarks", "encode", "portrait", "align"))
    split = {
        "video_decode": t.get("video_decode", 0.0),
        "landmarks": t.get("landmarks", 0.0),
        "resize": t.get("resize", 0.0),
        "prepare_other": prepare - sum(t.get(k, 0.0) for k in ("video_decode", "landmarks", "resize")),
        "model_load_other": job_seconds - sum(stages.values()),
        "denoise": stages.get("denoise", 0.0),
        "denoise_store_reads": t.get("store_reads", 0.0),
        "decode_latents": t.get("decode_latents", 0.0),
        "encode": t.get("encode", 0.0),
    }
    model = split["denoise"] - split["denoise_store_reads"] + split["decode_latents"]
    return {
        "frames": num_frames,
        "steps": steps,
        "job_seconds": job_seconds,
        "frames_per_second": num_frames / job_seconds,
        "denoise_frames_per_second": num_frames / split["denoise"],
        "peak_rss_mb": measured["peak_rss_mb"],
        "peak_anon_mb": measured["peak_anon_mb"],
        "stages_seconds": split,
        "non_model_share": 1 - model / job_seconds,
        "stage_events": stages,
    }


def run(lengths: list[int] = (60, 250, 1000), steps: int = 2) -> dict:
    """Every length in turn (fresh subprocess each); returns ``{str(N): figures}``."""
    with tempfile.TemporaryDirectory(prefix="xportrait-bench-") as tmp:
        return {str(n): run_length(n, Path(tmp), steps) for n in lengths}


def report(results: dict, steps: int = 2) -> str:
    """A table of :func:`run`'s results."""
    keys = [
        "video_decode",
        "resize",
        "landmarks",
        "prepare_other",
        "model_load_other",
        "denoise",
        "decode_latents",
        "encode",
    ]
    head = f"{'N':>5} {'job s':>7} {'fps':>6} {'RSS MB':>7} {'anon MB':>8} {'non-model':>9}  " + " ".join(
        f"{k:>14}" for k in keys
    )
    lines = [f"CPU, tiny model (size 64, {steps} steps, dlib landmarks), one thread", head]
    for n, r in results.items():
        s = r["stages_seconds"]
        lines.append(
            f"{n:>5} {r['job_seconds']:>7.1f} {r['frames_per_second']:>6.2f} {r['peak_rss_mb']:>7.0f} "
            f"{r['peak_anon_mb']:>8.0f} {r['non_model_share']:>9.0%}  "
            + " ".join(f"{s[k]:>14.2f}" for k in keys)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the CPU benchmark and print its table (``--json``: raw results)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[60, 250, 1000])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("animate", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    results = run(args.lengths, args.steps)
    print(json.dumps(results, indent=1) if args.json else report(results, args.steps))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
