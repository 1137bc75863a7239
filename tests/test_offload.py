"""Offloading (:meth:`XPortraitPipeline.enable_offload`, diffusers' leaf-level group offloading from
:mod:`xportrait_cli.pipeline.offload`) on the golden tiny model: every layer that computes is hooked,
the latents and frames are identical, and it comes off again."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from safetensors.torch import load_file

from xportrait_cli.pipeline import TensorFrames
from xportrait_cli.pipeline.network_calls import OFFLOADED
from xportrait_cli.pipeline.offload import is_group_offloaded


@pytest.fixture(scope="module")
def case(golden):
    tensors = load_file(str(golden / "case_a.safetensors"))
    return tensors["inputs/source"], TensorFrames(
        tensors["inputs/conditions"][:4], tensors["inputs/local"][:4]
    )


def test_offload_hooks_every_layer_that_runs_and_keeps_the_frames(tiny_pipe, case):
    source, frames = case
    args = dict(num_inference_steps=1, seed=5, reference_mode="per-frame")
    expected = tiny_pipe(source, frames, **args).frames
    pipe = copy.deepcopy(tiny_pipe)  # the session's pipeline stays without hooks

    pipe.enable_offload("cpu")
    assert pipe.offloaded and all(is_group_offloaded(getattr(pipe, name)) for name in OFFLOADED)
    ran, unhooked = set(), []

    def check(name):
        def hook(module, _args):
            ran.add(name)
            if not is_group_offloaded(module):  # on a GPU this layer's weights would not be there
                unhooked.append(f"{name}: {type(module).__name__}")

        return hook

    handles = [
        module.register_forward_pre_hook(check(name))
        for name in OFFLOADED
        for module in getattr(pipe, name).modules()
        if not list(module.children()) and list(module.parameters(recurse=False))
    ]
    assert np.array_equal(pipe(source, frames, **args).frames, expected)
    assert ran == set(OFFLOADED) and unhooked == []
    for handle in handles:
        handle.remove()

    pipe.disable_offload()
    assert not pipe.offloaded and not any(is_group_offloaded(getattr(pipe, name)) for name in OFFLOADED)
    assert np.array_equal(pipe(source, frames, **args).frames, expected)
