"""``just bench-fullscale``: the full-size model on the CPU, the way a user runs it (not part of CI).

1. Builds once, in ``XPORTRAIT_BENCH_CACHE`` (default ``~/.cache/xportrait-bench``), a full-size
   checkpoint in the official layout with seeded random weights (``fullscale_checkpoint.py``).
2. ``xportrait download-weights --no-landmark-weights`` against the loopback hub of the tests
   (``tests/fakehub.py``): download, SHA-256, conversion to the default (fp16) folder.
3. ``xportrait animate`` on the official demo pair (``../shared/media``), ``--size 64`` (and the
   other ``--sizes``), 20 frames, 2 steps, ``--device cpu --landmarks dlib``, same seed, in fp32 (3
   runs: the denoise spread), fp32 ``--reference-mode per-frame``, bf16 and fp16.
4. Each network's forward at full size against the stock diffusers module (``fullscale_forward.py``).

Every command runs in its own process (``--child``), which times the wrapped library calls and
samples its own ``RssAnon`` and ``VmRSS`` from /proc. Writes ``bench-fullscale.json`` and prints
a table. Figures: ``convert_seconds``, ``convert_peak_anon_bytes``, ``convert_peak_rss_bytes``; per
dtype ``load_seconds``, ``load_peak_anon_bytes``, ``load_peak_rss_bytes``,
``load_anon_vs_weights`` (the contract: ≤ 1.15), ``denoise_seconds_per_frame_step``; per half
dtype ``max_rel_error_latents_vs_fp32`` (``max|x - x32| / max|x32|`` of the final latents) and
``max_abs_error_uint8_vs_fp32`` (of the decoded MP4 frames);
``reference_shared_vs_per_frame_time_ratio`` (the fastest of the 3 shared fp32 runs over the
per-frame one);
``denoise_spread`` (``(max - min) / min`` of the 3 fp32 runs) with, for those runs, the CPU seconds
(user, system) and minor page faults of sampling and ``stock_probe_spread``: the spread of a fixed
stock-UNet forward timed twice after each run (the machine's own noise); ``forward``
(``overhead_vs_stock``).

Timings on a shared 2-core machine are noisy: ratios are measured in the same process, interleaved.

Usage: ``python benchmarks/fullscale.py [--sizes 64 128] [--skip-forward] [-o bench-fullscale.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE), str(ROOT / "tests")]
SHARED = Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared"))
MEDIA = SHARED / "media"
CACHE = Path(os.environ.get("XPORTRAIT_BENCH_CACHE", Path.home() / ".cache" / "xportrait-bench"))
FRAMES, STEPS = 20, 2
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


class MemorySampler:
    """Samples ``RssAnon`` and ``VmRSS`` of this process every ``interval`` s in a thread; keeps the
    peaks overall and inside each :meth:`window`."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peaks = {"anon": 0, "rss": 0}
        self._windows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> dict[str, int]:
        """Current ``{"anon": bytes, "rss": bytes}`` of this process."""
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "VmRSS"):
                fields["anon" if name == "RssAnon" else "rss"] = int(value.split()[0]) * 1024
        return fields

    def _sample(self) -> None:
        now = self.read()
        for peaks in (self.peaks, *self._windows):
            for k, v in now.items():
                peaks[k] = max(peaks.get(k, 0), v)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def wrap(self, owner, name: str, label: str, record: dict) -> None:
        """Record seconds, peaks, CPU seconds (user, system) and minor page faults of every call of
        ``owner.name`` into ``record[label]``."""
        original = getattr(owner, name)

        def measured(*args, **kwargs):
            window = {"anon": 0, "rss": 0}
            self._windows.append(window)
            self._sample()
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_SELF)
                self._sample()
                self._windows = [w for w in self._windows if w is not window]  # nested calls: by identity
                record[label] = {
                    "seconds": seconds,
                    "peak_anon_bytes": window["anon"],
                    "peak_rss_bytes": window["rss"],
                    "user_cpu_seconds": after.ru_utime - before.ru_utime,
                    "sys_cpu_seconds": after.ru_stime - before.ru_stime,
                    "minor_faults": after.ru_minflt - before.ru_minflt,
                }

        setattr(owner, name, measured)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def measured_targets() -> list[tuple[object, str]]:
    """``(owner, attribute)`` of what :func:`child` wraps: the conversion ``download-weights`` runs, the
    load of the networks, the cache class whose ``place`` puts them on the device, and the pipeline
    call that samples (a test checks that they still exist, so a rename in the package cannot
    silently break the benchmark)."""
    from xportrait_cli.jobs import networks
    from xportrait_cli.pipeline import XPortraitPipeline, loading
    from xportrait_cli.weights import download

    return [
        (download, "_convert"),
        (loading, "load_pipeline"),
        (networks.NetworksCache, "place"),
        (XPortraitPipeline, "__call__"),
    ]


def stock_probe_seconds(pipe, size: int, repeats: int = 2) -> list[float]:
    """Seconds of ``repeats`` forwards of a stock diffusers ``UNet2DConditionModel`` on ``pipe``'s own
    weights (one 16-frame window at ``size``², ``fullscale_forward.calls``): the same fixed work in
    every run, so their spread is the machine's noise, not ours."""
    import torch
    from fullscale_forward import calls, stock_copies

    probe = calls(pipe, *stock_copies(pipe), size)["unet"][1]
    seconds = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            probe()
            seconds.append(time.perf_counter() - start)
    return seconds


def wrap_probe(pipeline_class, record: dict) -> None:
    """After each pipeline call, :func:`stock_probe_seconds` into ``record["probe_seconds"]``."""
    call = pipeline_class.__call__

    def probed(pipe, source, *args, **kwargs):
        out = call(pipe, source, *args, **kwargs)
        record["probe_seconds"] = stock_probe_seconds(pipe, source.shape[-1])
        return out

    pipeline_class.__call__ = probed


def child(result: Path, argv: list[str]) -> None:
    """Run ``xportrait <argv>`` in this process, measuring conversion, loading and placement."""
    import torch

    from xportrait_cli import cli

    record: dict = {}
    sampler = MemorySampler()
    targets = measured_targets()
    (convert_owner, convert_name), (load_owner, load_name), (cache_class, _), (pipeline_class, _) = targets
    sampler.wrap(convert_owner, convert_name, "convert", record)
    sampler.wrap(load_owner, load_name, "load", record)
    # sampling: the pipeline call, measured inside the probe (which runs after it)
    sampler.wrap(pipeline_class, "__call__", "sampling", record)
    if os.environ.get("XPORTRAIT_BENCH_PROBE") == "1":
        wrap_probe(pipeline_class, record)
    place = cache_class.place

    def placed(cache, offload):
        networks = place(cache, offload)
        if networks._execution_device.type == "cuda":
            record["cuda_max_memory_allocated_after_place"] = torch.cuda.max_memory_allocated()
        record["weight_bytes"] = sum(
            t.numel() * t.element_size()
            for name in networks.OFFLOADED
            for t in getattr(networks, name).parameters()
        )
        return networks

    cache_class.place = placed
    sys.argv = ["xportrait", *argv]
    code = 0
    with sampler:
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code or 0
    record.update(exit_code=code, peak_anon_bytes=sampler.peaks["anon"], peak_rss_bytes=sampler.peaks["rss"])
    result.write_text(json.dumps(record))
    sys.exit(code)


def run_child(argv: list[str], env: dict[str, str], work: Path, name: str) -> dict:
    """``xportrait <argv>`` in a fresh process; returns the child's record plus its ``--json`` events."""
    result = work / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(result), "--", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    record = json.loads(result.read_text())
    record["events"] = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return record


def download(checkpoint: Path, env: dict[str, str], work: Path) -> dict:
    """``xportrait download-weights`` from a loopback hub serving ``checkpoint``."""
    from fakehub import FakeHub, FakeHubServer

    from xportrait_cli.weights.registry import FILENAME, REPO_ID

    hub = FakeHub(files={REPO_ID: {FILENAME: checkpoint, "LICENSE-MODEL.txt": b"license"}})
    hub.sha(checkpoint)  # the server's SHA-256 (as the Hub's ETag), before a client waits on it
    start = time.perf_counter()
    with FakeHubServer(hub) as running:
        argv = ["download-weights", "--no-landmark-weights"]
        record = run_child(argv, {**env, "HF_ENDPOINT": running.url}, work, "download")
    record["seconds"] = time.perf_counter() - start
    return record


def animate(
    env: dict, work: Path, name: str, size: int, dtype: str, mode: str = "shared", device="cpu", probe=False
) -> dict:
    """One ``xportrait animate`` run; adds ``denoise_seconds`` and the paths of its outputs (``probe``:
    also the stock-UNet probe after sampling, :func:`stock_probe_seconds`)."""
    out = work / f"{name}.mp4"
    argv = [
        "animate",
        str(MEDIA / "xportrait_source.png"),
        str(MEDIA / "xportrait_driving.mp4"),
        "-o",
        str(out),
        *("--size", str(size), "--frames", str(FRAMES), "--steps", str(STEPS)),
        *("--device", device, "--dtype", dtype, "--reference-mode", mode, "--landmarks", "dlib"),
        *("--keep-work", "--force", "--json"),
    ]
    record = run_child(argv, {**env, "XPORTRAIT_BENCH_PROBE": "1" if probe else "0"}, work, name)
    stages = {e["stage"]: e["seconds"] for e in record.pop("events") if e["kind"] == "stage_finished"}
    record.update(stages=stages, denoise_seconds=stages["denoise"], output=str(out))
    record["latents"] = str(work / f"{name}.mp4.xportrait" / "latents.safetensors")
    print(f"  {name}: load {record['load']['seconds']:.1f} s, denoise {stages['denoise']:.1f} s", flush=True)
    return record


def errors_vs(run: dict, reference: dict) -> dict:
    """Max relative error of the final latents and max abs error of the decoded uint8 frames."""
    import numpy as np
    from conftest import decoded
    from safetensors.torch import load_file

    a, b = (load_file(r["latents"])["latents"] for r in (run, reference))
    frames, ref_frames = (decoded(Path(r["output"])).astype(np.int16) for r in (run, reference))
    return {
        "max_rel_error_latents_vs_fp32": float((a - b).abs().max() / b.abs().max()),
        "max_abs_error_uint8_vs_fp32": int(np.abs(frames - ref_frames).max()),
        "mean_abs_error_uint8_vs_fp32": float(np.abs(frames - ref_frames).mean()),
        "finite": bool(a.isfinite().all()),
    }


def spread(values: list[float]) -> float:
    """``(max - min) / min``."""
    return (max(values) - min(values)) / min(values)


def run_size(env: dict, work: Path, size: int, device: str = "cpu") -> dict:
    """Every dtype at ``size``²: load figures, denoise per frame-step, errors, spread, shared/per-frame."""
    runs = {
        f"fp32_{i}": animate(env, work, f"s{size}_fp32_{i}", size, "fp32", device=device, probe=True)
        for i in range(3)
    }
    runs["fp32_per_frame"] = animate(env, work, f"s{size}_fp32_pf", size, "fp32", "per-frame", device)
    for dtype in ("bf16", "fp16"):
        runs[dtype] = animate(env, work, f"s{size}_{dtype}", size, dtype, device=device)
    out: dict = {"dtypes": {}}
    for dtype, run in (("fp32", runs["fp32_0"]), ("bf16", runs["bf16"]), ("fp16", runs["fp16"])):
        load = run["load"]
        figures = {
            "load_seconds": load["seconds"],
            "load_peak_anon_bytes": load["peak_anon_bytes"],
            "load_peak_rss_bytes": load["peak_rss_bytes"],
            "weight_bytes": run["weight_bytes"],
            "load_anon_vs_weights": load["peak_anon_bytes"] / run["weight_bytes"],
            "denoise_seconds_per_frame_step": run["denoise_seconds"] / (FRAMES * STEPS),
            "run_peak_anon_bytes": run["peak_anon_bytes"],
            "run_peak_rss_bytes": run["peak_rss_bytes"],
        }
        if "cuda_max_memory_allocated_after_place" in run:
            figures["cuda_max_memory_allocated_after_place"] = run["cuda_max_memory_allocated_after_place"]
        if dtype != "fp32":
            figures.update(errors_vs(run, runs["fp32_0"]))
        out["dtypes"][dtype] = figures
    denoise = [runs[f"fp32_{i}"]["denoise_seconds"] for i in range(3)]
    out["denoise_seconds_fp32_runs"] = denoise
    out["denoise_spread"] = spread(denoise)
    out["sampling_fp32_runs"] = [runs[f"fp32_{i}"]["sampling"] for i in range(3)]
    probes = [runs[f"fp32_{i}"]["probe_seconds"] for i in range(3)]
    out["stock_probe_seconds_fp32_runs"] = probes
    out["stock_probe_spread"] = spread([s for run in probes for s in run])
    # the fastest shared run against the per-frame run: on a shared machine the slow runs are
    # the ones other processes slowed down
    per_frame = runs["fp32_per_frame"]["denoise_seconds"]
    out["reference_shared_vs_per_frame_time_ratio"] = min(denoise) / per_frame
    out["reference_shared_vs_per_frame_time_ratio_first_run"] = denoise[0] / per_frame
    return out


def run(sizes: list[int], forward: bool = True, device: str = "cpu") -> dict:
    """The whole benchmark; returns the JSON-ready results."""
    from fullscale_checkpoint import build_checkpoint

    started = time.monotonic()
    checkpoint, build_seconds = build_checkpoint(CACHE)
    built = f"built in {build_seconds:.0f} s" if build_seconds else "reused"
    print(f"checkpoint: {checkpoint} ({built})", flush=True)
    results: dict = {"checkpoint": str(checkpoint), "build_seconds": build_seconds}
    with tempfile.TemporaryDirectory(prefix="run-", dir=CACHE) as tmp:
        work = Path(tmp)
        env = dict(
            os.environ,
            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
            XPORTRAIT_HOME=str(work / "home"),
            HF_HUB_CACHE=str(work / "hub"),
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DOWNLOAD_TIMEOUT="60",
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        for name in ("XPORTRAIT_MODEL", "HF_TOKEN", "HF_HOME"):
            env.pop(name, None)
        got = download(checkpoint, env, work)
        convert = got["convert"]
        results.update(
            download_seconds=got["seconds"],
            convert_seconds=convert["seconds"],
            convert_peak_anon_bytes=convert["peak_anon_bytes"],
            convert_peak_rss_bytes=convert["peak_rss_bytes"],
        )
        print(f"download-weights: {got['seconds']:.0f} s, conversion {convert['seconds']:.0f} s", flush=True)
        results["sizes"] = {}
        for size in sizes:
            results["sizes"][str(size)] = run_size(env, work, size, device)
        if forward:
            from xportrait_cli.weights.registry import default_model_path

            os.environ["XPORTRAIT_HOME"] = env["XPORTRAIT_HOME"]
            folder = default_model_path()
            result = work / "forward.json"
            script = str(HERE / "fullscale_forward.py")
            sizes_args = ["--sizes", *map(str, sizes)]
            subprocess.run(
                [sys.executable, script, str(folder), "-o", str(result), *sizes_args], env=env, check=True
            )
            results["forward"] = json.loads(result.read_text())
    first = results["sizes"][str(sizes[0])]
    headline = ("reference_shared_vs_per_frame_time_ratio", "denoise_spread", "stock_probe_spread")
    results.update({k: first[k] for k in headline})
    results["dtypes"] = first["dtypes"]
    results["seconds"] = time.monotonic() - started
    return results


def report(results: dict) -> str:
    """The table of :func:`run`'s results."""
    gb = 1e9
    lines = [
        f"checkpoint build: {results['build_seconds'] or 0:.0f} s (0 = reused); download-weights "
        f"{results['download_seconds']:.0f} s; convert {results['convert_seconds']:.0f} s, peak anon "
        f"{results['convert_peak_anon_bytes'] / gb:.1f} GB, "
        f"peak RSS {results['convert_peak_rss_bytes'] / gb:.1f} GB",
    ]
    for size, r in results["sizes"].items():
        lines.append(
            f"{size}²: denoise fp32 runs {', '.join(f'{s:.1f}' for s in r['denoise_seconds_fp32_runs'])} s "
            f"(spread {r['denoise_spread']:.1%}); "
            f"shared / per-frame {r['reference_shared_vs_per_frame_time_ratio']:.2f}"
        )
        cpu = ", ".join(
            f"{c['user_cpu_seconds']:.1f} / {c['sys_cpu_seconds']:.1f} ({c['minor_faults']})"
            for c in r["sampling_fp32_runs"]
        )
        probes = ", ".join("/".join(f"{s:.2f}" for s in p) for p in r["stock_probe_seconds_fp32_runs"])
        lines.append(
            f"{size}²: sampling CPU s user / sys (minor faults) {cpu}; stock UNet probe after each run "
            f"{probes} s (spread {r['stock_probe_spread']:.1%}: the machine's noise on fixed work)"
        )
        lines.append(
            f"{'dtype':>6} {'load s':>7} {'anon GB':>8} {'RSS GB':>7} {'anon/w':>7} {'s/frame-step':>13} "
            f"{'rel err':>8} {'uint8 max':>9}"
        )
        for dtype, d in r["dtypes"].items():
            lines.append(
                f"{dtype:>6} {d['load_seconds']:>7.1f} {d['load_peak_anon_bytes'] / gb:>8.2f} "
                f"{d['load_peak_rss_bytes'] / gb:>7.2f} {d['load_anon_vs_weights']:>7.2f} "
                f"{d['denoise_seconds_per_frame_step']:>13.3f} "
                f"{d.get('max_rel_error_latents_vs_fp32', 0):>8.4f} "
                f"{d.get('max_abs_error_uint8_vs_fp32', 0):>9}"
            )
    if "forward" in results:
        from fullscale_forward import report as forward_report

        lines.append(forward_report(results["forward"]))
    lines.append(f"total {results['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--skip-forward", action="store_true", help="skip the per-network forward timings")
    parser.add_argument(
        "--device", default="cpu", help="animate's --device (cuda: also GPU memory after placing)"
    )
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "bench-fullscale.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.argv)
        return 0
    results = run(args.sizes, forward=not args.skip_forward, device=args.device)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(report(results))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
