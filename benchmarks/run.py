"""``just bench``: every benchmark in turn; prints the figures and writes ``bench-results.json``.

1. FLOPs per output frame at full scale, ours against the official schedule (``flops.py``, meta
   device, seconds);
2. CPU with the golden tiny model: frames/s, stage split and peak memory of ``xportrait animate``
   for 60, 250 and 1000 driving frames (``cpu.py``, a few minutes);
3. GPU: the full-size model at 512² by setting (``gpu.py``; prints ``no CUDA device: skipped``
   without one);
4. offloading: host↔device weight bytes per denoising step of each offloading strategy, full-size
   fp16 sizes, counted on the tiny model's real runs (``offload_traffic.py``, about 2 minutes).

``bench-results.json`` holds ``flops_per_frame_ours``, ``flops_per_frame_official`` and
``flops_ratio`` (FLOPs, N = 60, 31 steps) at the top, then each benchmark's full result under
``flops``, ``cpu``, ``gpu`` and ``offload``. Benchmarks never run in ``just test``; no timing is
asserted anywhere.

Usage: ``python benchmarks/run.py [--only flops cpu gpu offload] [--lengths 60 250 1000]
[-o bench-results.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cpu  # noqa: E402
import flops  # noqa: E402
import gpu  # noqa: E402
import offload_traffic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print each one's figures, write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kinds = ("flops", "cpu", "gpu", "offload")
    parser.add_argument("--only", nargs="+", choices=kinds, default=list(kinds))
    parser.add_argument("--lengths", type=int, nargs="+", default=[60, 250, 1000], help="CPU video lengths")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "bench-results.json")
    args = parser.parse_args(argv)

    results: dict = {}
    started = time.monotonic()
    if "flops" in args.only:
        result = flops.run(frames=[60, 1000])
        at_60 = result["per_frames"]["60"]
        results["flops_per_frame_ours"] = at_60["tflop_per_frame_ours"] * flops.TERA
        results["flops_per_frame_official"] = at_60["tflop_per_frame_official"] * flops.TERA
        results["flops_ratio"] = at_60["ratio"]
        results["flops"] = result
        print(flops.report(result), flush=True)
    if "cpu" in args.only:
        results["cpu"] = cpu.run(args.lengths)
        print(cpu.report(results["cpu"]), flush=True)
    if "gpu" in args.only:
        results["gpu"] = gpu.run(gpu.parse_args([]))
        print(gpu.report(results["gpu"]), flush=True)
    if "offload" in args.only:
        results["offload"] = offload_traffic.run()
        print(offload_traffic.report(results["offload"]), flush=True)
    results["seconds"] = time.monotonic() - started
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
