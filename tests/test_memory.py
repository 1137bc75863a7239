"""The memory plan (12 GB cards at 512², any length), offloading, and falling back on out-of-memory.

The plan is checked on the full-size networks built on the meta device from the real checkpoint's
key list; offloading and the fallbacks run the golden tiny model on the CPU, with out-of-memory
errors raised by hooks at chosen calls (no GPU here).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import decoded, tiny_spec
from test_checkpoint import full_scale_meta_state_dict

from xportrait_cli.errors import OutOfMemoryPlanError
from xportrait_cli.events import Log
from xportrait_cli.jobs import JobSpec, run_job
from xportrait_cli.jobs.networks import NetworksCache, resolve_dtype
from xportrait_cli.pipeline import load_pipeline
from xportrait_cli.pipeline.memory import GIB, MemoryPlan, ModelSize, estimate_peak, plan_memory


@pytest.fixture(scope="module")
def full_size(shared) -> ModelSize:
    networks = load_pipeline(full_scale_meta_state_dict(shared, "5.x"), device="meta").to(
        dtype=torch.bfloat16
    )
    return ModelSize.of(networks)


def test_full_size_weights_are_the_issue_figure(full_size):
    total = sum(full_size.weights.values())
    assert 5.7e9 < total < 6.2e9  # "bf16 weights are about 6.1 GB" (CLIP is not kept)
    assert full_size.residual_bytes_per_frame(512) == 6_717_440 * 2  # 12 skip + middle residuals
    assert (full_size.width, full_size.dtype_bytes) == (320, 2)


@pytest.mark.parametrize(
    ("card_gib", "free_gib", "expected"),
    [
        (80, 78.0, MemoryPlan(batch_guidance=True, offload=False, decode_chunk_size=4)),
        (24, 22.5, MemoryPlan(batch_guidance=True, offload=False, decode_chunk_size=4)),
        (12, 11.2, MemoryPlan(batch_guidance=False, offload=False, decode_chunk_size=4)),
        (8, 7.2, MemoryPlan(batch_guidance=False, offload=True, decode_chunk_size=4)),
    ],
)
def test_the_fastest_plan_that_fits(full_size, card_gib, free_gib, expected):
    # any length: the pipeline keeps all N frames' latents in CPU memory, one window on the device
    plan = plan_memory(full_size, size=512, budget_bytes=int(free_gib * GIB))
    assert (plan.batch_guidance, plan.offload, plan.decode_chunk_size) == (
        expected.batch_guidance,
        expected.offload,
        expected.decode_chunk_size,
    ), f"{card_gib} GB card: {plan.describe()}"
    assert plan.peak_bytes <= plan.budget_bytes
    # a 12 GB card runs 512² without offloading: weights 5.9 GB + one 16-frame pass 2.6 GB + the rest
    twelve = plan_memory(full_size, size=512, budget_bytes=int(11.2 * GIB))
    assert 8.5 * GIB < twelve.peak_bytes < 10.5 * GIB


def test_explicit_settings_are_kept_and_estimates_grow_as_they_should(full_size):
    plan = plan_memory(full_size, size=512, budget_bytes=40 * GIB, batch_guidance="off", decode_chunk_size=1)
    assert (plan.batch_guidance, plan.offload, plan.decode_chunk_size) == (False, False, 1)

    def peak(**kw):
        args = dict(size=512, batch_guidance=False, offload=False, decode_chunk_size=1)
        return estimate_peak(full_size, **{**args, **kw})

    assert peak(batch_guidance=True) - peak() == pytest.approx(2.6e9, rel=0.01)  # one more 16-frame pass
    w = full_size.weights
    assert peak() - peak(offload=True) == sum(w.values()) - w["unet"]  # only the main UNet resident
    assert peak(size=256) < peak()


def test_a_card_that_cannot_fit_is_refused_before_starting(full_size):
    with pytest.raises(OutOfMemoryPlanError) as info:
        plan_memory(full_size, size=512, budget_bytes=int(5.2 * GIB), device_name="cuda:0 (Tiny GPU)")
    line = info.value.one_line()
    assert "\n" not in line and "cuda:0 (Tiny GPU) has 5.2 GiB free" in line and "--size" in line
    assert "weights offloaded to the CPU, decode 1 frame at a time" in line  # the smallest plan
    with pytest.raises(OutOfMemoryPlanError) as info:  # an 8 GB card fits it only offloaded
        plan_memory(full_size, size=512, budget_bytes=int(7.2 * GIB), offload="off")
    assert "allow offloading (--offload auto)" in info.value.one_line()


def test_cpu_takes_the_settings_as_given(full_size):
    assert plan_memory(full_size, size=512, budget_bytes=None) == MemoryPlan(False, False, 2)
    on = plan_memory(full_size, size=512, budget_bytes=None, batch_guidance="on", decode_chunk_size=3)
    assert on == MemoryPlan(True, False, 3)


def test_fallback_ladder():
    plan = MemoryPlan(batch_guidance=True, offload=False, decode_chunk_size=4)
    steps = []
    while plan is not None:
        steps.append((plan.batch_guidance, plan.offload, plan.decode_chunk_size))
        plan = plan.fallback()
    assert steps == [(True, False, 4), (False, False, 4), (False, True, 2)]


def test_decode_halves_its_chunk_when_out_of_memory(tiny_pipe, caplog):
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pipe = tiny_pipe
    expected = np.concatenate(list(pipe.decode_latents(latents, 1)))

    def too_big(_module, args):
        if args[0].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    handle = tiny_pipe.vae.decoder.register_forward_pre_hook(too_big)
    try:
        with caplog.at_level(logging.WARNING):
            chunks = list(pipe.decode_latents(latents, 4))
    finally:
        handle.remove()
    assert [len(c) for c in chunks] == [1] * 5
    assert np.array_equal(np.concatenate(chunks), expected)
    assert "decoding 2 frame(s) at a time" in caplog.text and "decoding 1 frame(s)" in caplog.text


# --------------------------------------------------------------------------------------------------
# run_job: the plan in the log, --offload, out of memory while denoising
# --------------------------------------------------------------------------------------------------


def _spec(golden, media, out, **options) -> JobSpec:
    return tiny_spec(golden, media, out, num_inference_steps=2, frames=8, **options)


def _cache(spec: JobSpec) -> NetworksCache:
    cache = NetworksCache()
    o = spec.options
    cache.get(o.model, o.model_config, torch.device("cpu"), resolve_dtype(o.dtype, torch.device("cpu")))
    return cache


def test_out_of_memory_while_denoising_steps_down_and_finishes(tmp_path, golden, media):
    reference = _spec(golden, media, tmp_path / "separate.mp4", batch_guidance="off")
    assert run_job(reference).status == "done"

    spec = _spec(golden, media, tmp_path / "batched.mp4", batch_guidance="on")
    cache = _cache(spec)

    def batched_is_too_big(_module, args):
        if args[0].shape[0] > 16:  # the cond + uncond batch of 2 x 16 frames (one circular window)
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    cache._networks.unet.register_forward_pre_hook(batched_is_too_big)
    seen = []
    assert run_job(spec, seen.append, networks=cache).status == "done"
    warnings = [e.message for e in seen if isinstance(e, Log) and e.level == "warning"]
    assert any("out of memory at step 1: going on with separate guidance passes" in w for w in warnings)
    assert np.array_equal(decoded(spec.output), decoded(reference.output))  # same frames, less memory

    offloaded = _spec(golden, media, tmp_path / "offloaded.mp4", batch_guidance="off", offload="on")
    seen = []
    assert run_job(offloaded, seen.append).status == "done"
    assert any(isinstance(e, Log) and "weights offloaded to the CPU" in e.message for e in seen)
    assert np.array_equal(decoded(offloaded.output), decoded(reference.output))


def test_out_of_memory_at_the_bottom_of_the_ladder_is_a_clear_error(tmp_path, golden, media):
    spec = _spec(golden, media, tmp_path / "out.mp4", batch_guidance="off", offload="on")
    cache = _cache(spec)
    calls = []

    def third_call_fails(_module, _args):
        calls.append(1)
        if len(calls) > 2:  # after step 1 (cond + uncond) completed and was checkpointed
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    cache._networks.unet.register_forward_pre_hook(third_call_fails)
    with pytest.raises(OutOfMemoryPlanError, match="ran out of memory with separate guidance passes"):
        run_job(spec, networks=cache)
    assert not spec.output.exists() and (spec.work_dir / "latents.safetensors").is_file()  # step 1 kept
