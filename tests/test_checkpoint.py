"""Checkpoint loading: full-scale key coverage on the meta device, strictness, formats, conversion."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from xportrait_cli.errors import CheckpointError, InputError
from xportrait_cli.models import build_architecture, components_from_checkpoint
from xportrait_cli.models.convert import IGNORED, convert_official_state_dict
from xportrait_cli.models.loading import prefixed_state_dict
from xportrait_cli.pipeline import convert_checkpoint, load_pipeline
from xportrait_cli.weights.registry import is_converted

CLIP5 = "cond_stage_model.transformer."
CLIP4 = "cond_stage_model.transformer.text_model."


def pipe_state(pipe) -> dict[str, torch.Tensor]:
    """Every network's tensors of a pipeline, under ``<component>.``."""
    return prefixed_state_dict({k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)})


def full_scale_meta_state_dict(shared, clip_spelling: str) -> dict[str, torch.Tensor]:
    """Meta tensors for every key of the real checkpoint (reference TSV), in either CLIP spelling."""
    state_dict = {}
    for line in (shared / "reference" / "xportrait_state_dict_keys.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in re.findall(r"\d+", shape))
        if clip_spelling == "4.30" and key.startswith(CLIP5):
            key = CLIP4 + key[len(CLIP5) :]
        state_dict[key] = torch.empty(dims, dtype=getattr(torch, dtype.split(".")[-1]), device="meta")
    if clip_spelling == "4.30":
        state_dict[CLIP4 + "embeddings.position_ids"] = torch.empty(1, 77, dtype=torch.int64, device="meta")
    return state_dict


@pytest.mark.parametrize("clip_spelling", ["5.x", "4.30"])
def test_full_scale_keys_all_land_with_matching_shapes(shared, clip_spelling):
    state_dict = full_scale_meta_state_dict(shared, clip_spelling)
    assert len(state_dict) == (3081 if clip_spelling == "5.x" else 3082)
    architecture = build_architecture(state_dict)
    assert architecture.unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert architecture.unet["cross_attention_dim"] == 768
    assert architecture.vae["block_out_channels"] == [128, 256, 512, 512]
    assert architecture.text["num_hidden_layers"] == 12 and architecture.text["num_attention_heads"] == 12

    converted = convert_official_state_dict(state_dict, architecture)
    ignored = [k for k in state_dict if any(p.search(k) for p in IGNORED)]
    assert len(ignored) == 13 + 16 + (clip_spelling == "4.30")  # schedule, unused hint block, position_ids
    assert len(converted) + len(ignored) == len(state_dict)  # every other key converted, one to one

    components = components_from_checkpoint(state_dict, device="meta")  # strict: every key and shape
    embeds = "unet.empty_prompt_embeds"
    params = sum(v.numel() for k, v in prefixed_state_dict(components).items() if k != embeds)
    clip = sum(v.numel() for k, v in converted.items() if k.startswith("text_encoder."))
    hint_block = sum(state_dict[k].numel() for k in ignored if "input_hint_block" in k)
    schedule = 13 * 1000
    assert params + clip + hint_block + schedule == 3_067_384_227  # every element of the real checkpoint


def test_wrong_prefix_is_an_error_naming_the_keys(tiny_state_dict):
    bad = {("module." + k): v for k, v in tiny_state_dict.items()}
    with pytest.raises(CheckpointError, match="model.diffusion_model.input_blocks.0.0.weight"):
        load_pipeline(bad)


def test_unknown_key_is_named(tiny_state_dict, tiny_config):
    extra = dict(tiny_state_dict)
    extra["model.diffusion_model.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(
        CheckpointError, match="1 checkpoint tensors match no network: model.diffusion_model.extra_head"
    ):
        load_pipeline(extra, config=tiny_config)


def test_missing_key_is_named(tiny_state_dict, tiny_config):
    partial = {k: v for k, v in tiny_state_dict.items() if "output_blocks_motion_module.3." not in k}
    with pytest.raises(CheckpointError, match=r"missing: .*unet.up_motion_modules.3"):
        load_pipeline(partial, config=tiny_config)


def test_wrong_shape_is_named(tiny_state_dict, tiny_config):
    broken = dict(tiny_state_dict)
    key = "local_pose_control_model.zero_convs.0.0.weight"
    broken[key] = torch.zeros(broken[key].shape[0], broken[key].shape[1] + 1, 1, 1)
    with pytest.raises(CheckpointError, match="local_controlnet.controlnet_down_blocks.0.weight"):
        load_pipeline(broken, config=tiny_config)


def test_bare_dict_safetensors_and_converted_folder_match_the_pickle(
    tmp_path, golden, tiny_state_dict, tiny_config
):
    reference = load_pipeline(golden / "tiny_xportrait.th", config=tiny_config)
    assert all(p.dtype == torch.float32 for p in reference.unet.parameters())  # fp16 storage upcast
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state_dict.items()}, str(path))
    from_safetensors = load_pipeline(path, config=tiny_config)
    from_bare = load_pipeline(dict(tiny_state_dict), config=tiny_config)
    folder = convert_checkpoint(
        golden / "tiny_xportrait.th", tmp_path / "converted", config=tiny_config, dtype=torch.float16
    )
    assert is_converted(folder) and not list(tmp_path.glob("*.incomplete"))
    converted = load_pipeline(folder)
    expected = pipe_state(reference)
    for other in (from_safetensors, from_bare, converted):
        state = pipe_state(other)
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, atol=0, rtol=0)  # fp16-exact parameters


def test_unreadable_checkpoints_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_pipeline(tmp_path / "missing.th")
    junk = tmp_path / "junk.th"
    junk.write_text("not a pickle")
    with pytest.raises(InputError, match="cannot be read as a checkpoint"):
        load_pipeline(junk)
    with pytest.raises(InputError, match="is a folder"):
        load_pipeline(tmp_path)
