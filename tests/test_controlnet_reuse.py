"""ControlNet reuse across overlapping windows: same eps as recomputing, and work really skipped."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from xportrait_cli.pipeline import TensorFrames
from xportrait_cli.pipeline.control_residuals import ControlResiduals
from xportrait_cli.pipeline.windows import window_plan


def fake_compute(calls: list[list[int]]):
    """Residuals whose every value is the frame index (12 skips + middle), recording each call."""

    def compute(frames: list[int]):
        calls.append(list(frames))
        value = torch.tensor(frames, dtype=torch.float32).view(-1, 1, 1, 1)
        return [value.expand(-1, 2, 2, 2).clone() for _ in range(12)], value.expand(-1, 3, 1, 1).clone()

    return compute


@pytest.mark.parametrize("n", [1, 3, 16, 20, 59, 60, 100, 1000])
@pytest.mark.parametrize("num_mix", [0, 4, 8])
def test_each_frame_computed_once_per_step_and_rows_match(n, num_mix):
    rng = random.Random(n * 31 + num_mix)
    for _ in range(3):
        plan = window_plan(n, rng.randrange(n), num_mix)
        calls: list[list[int]] = []
        controls = ControlResiduals(plan, fake_compute(calls))
        for k, indices in enumerate(plan):
            down, mid = controls(indices)
            expected = torch.tensor(indices, dtype=torch.float32)
            assert len(down) == 12 and mid.shape[0] == len(indices)
            assert torch.equal(mid[:, 0, 0, 0], expected)
            assert all(torch.equal(d[:, 0, 0, 0], expected) for d in down)
            # only frames a later window reads are kept: at most two windows' worth, whatever N
            read_later = set().union(*plan[k + 1 :])
            assert set(controls._frames) <= read_later
            assert len(controls._frames) <= 2 * len(indices)
        computed = [f for call in calls for f in call]
        assert sorted(computed) == sorted(set().union(*plan))  # every covered frame exactly once
        assert controls.computed == len(computed)
        if len(plan) > 1:
            assert all(len(call) <= len(plan[0]) - num_mix for call in calls[1:])


def test_more_windows_than_the_plan_is_an_error():
    plan = window_plan(20, 0, 4)
    controls = ControlResiduals(plan, fake_compute([]))
    for indices in plan:
        controls(indices)
    with pytest.raises(ValueError, match="more windows"):
        controls(plan[0])


@pytest.fixture(scope="module")
def case(golden):
    return load_file(str(golden / "case_a.safetensors"))


def controlnet_batches(pipe):
    """Forward hooks recording the batch size of every ControlNet call (both ControlNets)."""
    sizes: list[int] = []
    hooks = [
        net.register_forward_hook(lambda _m, args, _out: sizes.append(args[0].shape[0]))
        for net in (pipe.global_controlnet, pipe.local_controlnet)
    ]
    return sizes, hooks


@pytest.mark.parametrize("reference_mode", ["shared", "per-frame"])
@pytest.mark.parametrize("batch_guidance", [False, True])
def test_reuse_gives_the_same_eps_as_recomputing_and_skips_work(
    tiny_pipe, case, reference_mode, batch_guidance
):
    pipe = tiny_pipe
    frames = TensorFrames(case["inputs/conditions"], case["inputs/local"])  # N = 20: 2 windows a step
    n, steps = len(frames), 2
    results = {}
    for reuse in (False, True):
        eps: list[torch.Tensor] = []
        sizes, hooks = controlnet_batches(pipe)
        try:
            out = pipe(
                case["inputs/source"],
                frames,
                num_inference_steps=steps,
                seed=5,
                reference_mode=reference_mode,
                batch_guidance=batch_guidance,
                reuse_controlnet=reuse,
                callback_on_step_end=lambda _p, _k, _t, state, eps=eps: eps.append(state["noise_pred"]),
                output_type="latent",
            )
        finally:
            for hook in hooks:
                hook.remove()
        results[reuse] = (out.latents, eps, sizes)

    latents_off, eps_off, sizes_off = results[False]
    latents_on, eps_on, sizes_on = results[True]
    for a, b in zip(eps_off, eps_on, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)  # only batch-size rounding differs
    torch.testing.assert_close(latents_on, latents_off, rtol=1e-4, atol=1e-4)
    # official: two windows of 16 frames per step, each through both ControlNets
    assert sizes_off == [16, 16] * 2 * steps
    # reused: each of the 20 frames once per step (16, then the 4 frames the first window missed)
    assert sizes_on == [16, 16, 4, 4] * steps
    assert sum(sizes_on) == 2 * n * steps
