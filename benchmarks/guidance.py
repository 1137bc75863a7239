"""Denoising time at ``--guidance-scale 1`` (one UNet pass per window) against 5 (two passes), in one run.

The golden tiny model denoises case A's inputs (the official hints, repeated to ``--frames``) with
the same seed at both scales, alternately, ``--repeats`` times; the median wall time of each and
their ratio are printed. The ControlNets, the appearance net and the DDIM update run at both scales,
so the ratio is above 0.5 by their share. Also a guidance interval (``--interval LO HI``, one pass
outside it) for comparison. Nothing is asserted.

Usage: ``python benchmarks/guidance.py [--frames 20] [--steps 4] [--repeats 3] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from xportrait_cli.pipeline import TensorFrames, load_pipeline  # noqa: E402


def shared_dir() -> Path:
    return Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared")).resolve()


def run(frames: int = 20, steps: int = 4, repeats: int = 3, device: str = "cpu", interval=(0.0, 0.5)) -> dict:
    """Median denoising seconds per setting and the ratios to guidance 5."""
    golden = shared_dir() / "golden"
    tensors = load_file(str(golden / "case_a.safetensors"))
    take = [i % tensors["inputs/conditions"].shape[0] for i in range(frames)]
    hints = TensorFrames(tensors["inputs/conditions"][take], tensors["inputs/local"][take])
    pipe = load_pipeline(golden / "tiny_xportrait.th", config=golden / "tiny_config.yaml", device=device)
    settings = {
        "guidance 5": {"guidance_scale": 5.0},
        "guidance 1": {"guidance_scale": 1.0},
        f"guidance 5, interval {interval[0]}-{interval[1]}": {
            "guidance_scale": 5.0,
            "guidance_interval": interval,
        },
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for name, kwargs in settings.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            pipe(tensors["inputs/source"], hints, num_inference_steps=steps, output_type="latent", **kwargs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t[1:]) for name, t in times.items()}
    base = median["guidance 5"]
    return {
        "frames": frames,
        "steps": steps,
        "repeats": repeats,
        "device": device,
        "threads": torch.get_num_threads(),
        "seconds": median,
        "ratio_to_guidance_5": {name: s / base for name, s in median.items()},
    }


def report(result: dict) -> str:
    lines = [
        f"guidance: tiny model, {result['frames']} frames, --steps {result['steps']}, {result['device']}, "
        f"{result['threads']} thread(s), median of {result['repeats']}",
        "| setting | denoise s | ratio to guidance 5 |",
        "|---|---|---|",
    ]
    for name, seconds in result["seconds"].items():
        lines.append(f"| {name} | {seconds:.2f} | {result['ratio_to_guidance_5'][name]:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--interval", type=float, nargs=2, default=[0.0, 0.5])
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    result = run(args.frames, args.steps, args.repeats, args.device, tuple(args.interval))
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
