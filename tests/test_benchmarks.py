"""The full-size benchmark's hooks into the package still exist, and its forward timing runs.

``just bench-fullscale`` is not part of CI (it builds a 12 GB checkpoint), so a rename in the package
(``num_frames`` → ``window_length``, ``runner.load_networks`` moving to ``jobs.networks`` in the
redesign) would otherwise break it unnoticed until the next rehearsal. These run the same code on
the golden tiny model.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def on_path():
    """``benchmarks/`` on ``sys.path``, as the benchmarks run (they import each other)."""
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def bench(on_path):
    """The ``benchmarks/fullscale*.py`` modules."""
    import fullscale
    import fullscale_forward

    return fullscale, fullscale_forward


def test_fullscale_wraps_functions_that_exist(bench):
    fullscale, _ = bench
    for owner, name in fullscale.measured_targets():
        assert callable(getattr(owner, name, None)), f"{owner!r} has no {name}"


def test_fullscale_sampling_record_and_probe_on_the_tiny_model(bench, tiny_pipe):
    """The wrapped pipeline call still samples, and records CPU time and the stock-UNet probe."""
    from xportrait_cli.pipeline import TensorFrames, XPortraitPipeline

    fullscale, _ = bench
    record: dict = {}
    measured = type("Measured", (XPortraitPipeline,), {})  # wraps a subclass: the real class stays
    fullscale.MemorySampler().wrap(measured, "__call__", "sampling", record)
    fullscale.wrap_probe(measured, record)
    gen = torch.Generator().manual_seed(0)
    source, hints = (torch.rand(n, 3, 64, 64, generator=gen) * 2 - 1 for n in (1, 2))
    out = measured.__call__(tiny_pipe, source, TensorFrames(hints, hints), num_inference_steps=1,
                            output_type="latent")  # fmt: skip
    assert out.latents.shape == (2, 4, 8, 8) and out.latents.isfinite().all()
    sampling = record["sampling"]
    assert sampling["user_cpu_seconds"] + sampling["sys_cpu_seconds"] > 0
    assert sampling["seconds"] > 0 and sampling["minor_faults"] >= 0
    assert len(record["probe_seconds"]) == 2 and min(record["probe_seconds"]) > 0


def test_forward_overhead_on_the_tiny_model(bench, tiny_pipe):
    _, forward = bench
    stock = forward.stock_copies(tiny_pipe)
    results = forward.time_size(tiny_pipe, stock, 64, repeats=1, profile=False, flops_of=tiny_pipe)
    assert set(results) == {"unet", "controlnet", "reference"}
    for name, r in results.items():
        assert r["flops_ours"] > 0 and r["flops_stock"] > 0, name
        assert 0 < r["overhead_vs_stock"] < math.inf, name
    # our ControlNet call is the two stock calls plus a sum of residuals; the main UNet adds the
    # motion modules' work to the stock UNet's
    assert results["controlnet"]["flop_ratio"] == pytest.approx(1.0, abs=0.01)
    assert results["unet"]["flop_ratio"] > 1.0


def test_offload_traffic_counts_on_the_tiny_model(on_path, golden):
    """``benchmarks/offload_traffic.py`` on its smallest run: real hooks, counted moves."""
    import offload_traffic

    result = offload_traffic.run(frames=8, num_mix=0, steps=1, modes=("shared",))
    rows = result["modes"]["shared"]
    sizes = result["component_bytes"]
    resident = rows["no offload"]
    assert resident["peak_bytes"] == sum(sizes.values())
    assert resident["step"]["h2d_bytes"] == resident["step"]["d2h_bytes"] == 0
    # every call of the recorded run is replayed, so the removed per-phase offload moves each
    # network of a step in whole, and holds the largest phase (the main UNet) at most
    per_phase = rows["per-phase (removed)"]
    assert per_phase["step"]["calls"] == resident["step"]["calls"]
    assert per_phase["peak_bytes"] == sizes["unet"]
    assert per_phase["step"]["h2d_bytes"] >= sum(sizes.values()) - sizes["vae"]
    for label in ("no offload", "group leaf_level", "group leaf_level + stream"):
        assert rows[label]["misses"] == {}, label
    leaf, stream = rows["group leaf_level"]["step"], rows["group leaf_level + stream"]["step"]
    assert leaf["d2h_bytes"] == leaf["h2d_bytes"] > 0  # every layer copied back after it runs
    assert stream["d2h_bytes"] == 0  # the pinned CPU copy is kept
    assert stream["h2d_bytes"] >= leaf["h2d_bytes"]
