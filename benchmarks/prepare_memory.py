"""Peak memory of preparing a driving video into a FrameStore, for several video lengths.

Each length runs in a fresh subprocess: the official driving clip is looped with PyAV into an
N-frame 512×512 video, then prepared with ``prepare_driving`` (a fixed-landmark detector by default,
``--detector dlib`` for the real one). Printed per length:

- ``heap``: peak of Python/numpy allocations (``tracemalloc``), the memory that must stay flat;
- ``rss``: peak resident set size (``ru_maxrss``); it also counts pages of the memory-mapped frame
  file touched while writing, which the kernel can drop, so it grows with disk I/O, not with heap;
- seconds, and the store's size on disk.

Usage: ``python benchmarks/prepare_memory.py [--lengths 100 400 1000] [--size 512] [--detector fixed]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpu import make_video  # benchmarks/cpu.py: loops a real clip into an N-frame video

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared"))


class FixedDetector:
    name = "fixed"

    def __init__(self, lmk):
        self.lmk = lmk

    def detect(self, image):
        return self.lmk * (image.shape[1] / 256)


def child(n: int, size: int, detector: str) -> None:
    import tracemalloc

    import numpy as np

    from xportrait_cli.face.landmarks import DlibDetector, detect_portrait
    from xportrait_cli.image import load_image
    from xportrait_cli.jobs.prepare_driving import prepare_driving

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "drive.mp4"
        make_video(video, n)
        dlib = DlibDetector()
        portrait = detect_portrait(load_image(SHARED / "media" / "xportrait_source.png"), dlib)
        det = dlib if detector == "dlib" else FixedDetector(np.asarray(portrait))
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        t = time.perf_counter()
        store = prepare_driving(video, portrait, Path(tmp) / "work", size=size, detector=det)
        seconds = time.perf_counter() - t
        _, heap = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        window = store.global_hints(range(len(store) - 16, len(store)))
        disk = sum(p.stat().st_size for p in (Path(tmp) / "work").iterdir())
        print(
            json.dumps(
                {
                    "frames": len(store),
                    "heap_MiB": heap / 2**20,
                    "rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "rss_before_MiB": base_rss / 1024,
                    "seconds": seconds,
                    "store_MiB": disk / 2**20,
                    "window": list(window.shape),
                }
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 400, 1000])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--detector", choices=["fixed", "dlib"], default="fixed")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.size, args.detector)
        return
    print(f"size {args.size}, detector {args.detector}")
    print(f"{'frames':>7} {'heap MiB':>9} {'rss MiB':>8} {'(start)':>8} {'store MiB':>9} {'s':>6}")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for n in args.lengths:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(n),
            "--size",
            str(args.size),
            "--detector",
            args.detector,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"{r['frames']:>7} {r['heap_MiB']:>9.1f} {r['rss_MiB']:>8.1f} {r['rss_before_MiB']:>8.1f} "
            f"{r['store_MiB']:>9.1f} {r['seconds']:>6.1f}"
        )


if __name__ == "__main__":
    main()
