"""Group offloading (:mod:`xportrait_cli.pipeline.offload`) on the golden tiny model: same frames."""

from __future__ import annotations

import copy

import numpy as np
from safetensors.torch import load_file

from xportrait_cli.pipeline import TensorFrames, XPortraitPipeline
from xportrait_cli.pipeline.offload import disable_group_offload, enable_group_offload, is_group_offloaded


def test_group_offload_gives_identical_frames_and_comes_off(tiny_networks, golden):
    case = load_file(str(golden / "case_a.safetensors"))
    source = case["inputs/source"]
    frames = TensorFrames(case["inputs/conditions"][:4], case["inputs/local"][:4])
    args = dict(num_inference_steps=1, seed=5, reference_mode="per-frame")
    networks = copy.deepcopy(tiny_networks)  # the session's networks stay without hooks
    components = {name: getattr(networks, name) for name in networks.OFFLOADED}
    expected = XPortraitPipeline(networks)(source, frames, **args).frames

    enable_group_offload(components, "cpu")
    assert all(is_group_offloaded(module) for module in components.values())
    offloaded = XPortraitPipeline(networks)(source, frames, **args).frames
    assert np.array_equal(offloaded, expected)

    disable_group_offload(components, "cpu")
    assert not any(is_group_offloaded(module) for module in components.values())
    assert np.array_equal(XPortraitPipeline(networks)(source, frames, **args).frames, expected)
