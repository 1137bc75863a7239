"""Experimental LCM-LoRA support: a small LoRA made here for the golden tiny model's main UNet, loaded
strictly through diffusers/PEFT, scale 0 equal to no LoRA, the LCM schedule end to end on real media,
and ``download-weights --lcm-lora`` against the loopback fake hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import decoded, tiny_spec
from fakehub import FakeHub, FakeHubServer
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from xportrait_cli import cli
from xportrait_cli.errors import CheckpointError, InputError
from xportrait_cli.jobs import run_job
from xportrait_cli.jobs.fingerprint import job_fingerprint
from xportrait_cli.models.lora import LCM_LORA_REPO, LORA_FILENAME, load_lora, resolve_lora
from xportrait_cli.pipeline import load_pipeline
from xportrait_cli.pipeline.schedule import sampling_timesteps

#: Layers of the tiny UNet the test LoRA adapts: self- and cross-attention projections and a
#: feed-forward, in down, middle and up blocks (LCM-LoRA adapts these kinds, among others).
TARGETS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
]


def make_lora(unet, path, rank: int = 4, extra: dict | None = None):
    """A PEFT-format LoRA (``unet.<module>.lora_A/B.weight``) for ``TARGETS`` of ``unet``, seeded."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name in TARGETS:
        layer = unet.get_submodule(name)
        tensors[f"unet.{name}.lora_A.weight"] = (
            torch.randn(rank, layer.in_features, generator=generator) * 0.3
        )
        tensors[f"unet.{name}.lora_B.weight"] = (
            torch.randn(layer.out_features, rank, generator=generator) * 0.3
        )
    save_file({**tensors, **(extra or {})}, str(path))
    return path


@pytest.fixture
def fresh_networks(golden, tiny_config):
    """A private copy of the tiny model (LoRA loading changes the UNet)."""
    return load_pipeline(golden / "tiny_xportrait.th", config=tiny_config)


@pytest.fixture(scope="module")
def lora_file(golden, tmp_path_factory):
    networks = load_pipeline(golden / "tiny_xportrait.th", config=golden / "tiny_config.yaml")
    return make_lora(networks.unet.unet, tmp_path_factory.mktemp("lora") / "tiny_lora.safetensors")


def unet_eps(networks, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, 8, 8, generator=g)
    with torch.no_grad():
        return networks.predict_noise(x, torch.full((16,), 501), window_length=16)


def test_keys_load_strictly_and_scale_zero_equals_no_lora(fresh_networks, lora_file, golden, tiny_config):
    base = unet_eps(fresh_networks)
    assert load_lora(fresh_networks.unet.unet, lora_file, scale=0.0) == len(TARGETS)
    assert torch.equal(unet_eps(fresh_networks), base)  # 0·B·A·x adds exact zeros
    params = dict(fresh_networks.unet.unet.named_parameters())
    for key, value in load_file(str(lora_file)).items():  # every tensor landed, with its values
        module, part = key.removeprefix("unet.").rsplit(".lora_", 1)
        kind, _ = part.split(".")
        assert torch.equal(params[f"{module}.lora_{kind}.xportrait_lora.weight"].data, value)
    fresh_networks.unet.unet.set_adapters(["xportrait_lora"], [1.0])
    changed = (unet_eps(fresh_networks) - base).abs().max().item()
    assert changed > 1e-3, changed


def test_a_key_for_no_layer_is_refused(fresh_networks, lora_file, tmp_path):
    unet = fresh_networks.unet.unet
    extra = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_nowhere.lora_A.weight": torch.ones(
            4, 32
        ),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_nowhere.lora_B.weight": torch.ones(
            32, 4
        ),
    }
    bad = make_lora(unet, tmp_path / "bad.safetensors", extra=extra)
    with pytest.raises(CheckpointError, match="to_nowhere"):
        load_lora(unet, bad)
    text = make_lora(
        unet, tmp_path / "te.safetensors", extra={"text_encoder.x.lora_A.weight": torch.ones(4, 4)}
    )
    with pytest.raises(CheckpointError, match="not for the UNet"):
        load_lora(unet, text)


def test_wrong_shapes_are_refused(fresh_networks, tmp_path):
    unet = fresh_networks.unet.unet
    name = TARGETS[0]
    bad = tmp_path / "shape.safetensors"
    save_file(
        {f"unet.{name}.lora_A.weight": torch.ones(4, 7), f"unet.{name}.lora_B.weight": torch.ones(32, 4)},
        str(bad),
    )
    with pytest.raises(CheckpointError, match="does not fit"):
        load_lora(unet, bad)


def test_resolve_lora_paths_and_repo_ids(lora_file, tmp_path, monkeypatch):
    assert resolve_lora(str(lora_file)) == lora_file
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / LORA_FILENAME).write_bytes(lora_file.read_bytes())
    assert resolve_lora(str(tmp_path / "folder")) == tmp_path / "folder" / LORA_FILENAME
    with pytest.raises(InputError, match="LoRA file not found"):
        resolve_lora(str(tmp_path / "missing.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # empty: a job never downloads
    from xportrait_cli.errors import WeightsMissingError

    with pytest.raises(WeightsMissingError) as err:
        resolve_lora(LCM_LORA_REPO)
    assert err.value.hint == "run `xportrait download-weights --lcm-lora`"


def test_lcm_with_a_lora_runs_end_to_end(lora_file, golden, media, tmp_path, default_run):
    assert sampling_timesteps(4, "lcm") == [999, 759, 499, 259]
    options = {"lora": str(lora_file), "scheduler": "lcm", "num_inference_steps": 4, "guidance_scale": 1}
    spec = tiny_spec(golden, media, tmp_path / "lcm.mp4", **options)
    result = run_job(spec)
    frames = decoded(result.output)
    assert result.status == "done" and frames.shape == (20, 64, 64, 3) and frames.std() > 1
    # the LoRA's file content and scale, and the scheduler, are part of the fingerprint
    model = golden / "tiny_xportrait.th"
    base = job_fingerprint(spec, model, lora_file=lora_file)["digest"]
    for change in ({"lora_scale": 0.5}, {"scheduler": "ddim"}):
        other = type(spec)(spec.portrait, spec.driving, spec.output, spec.options.replace(**change))
        assert job_fingerprint(other, model, lora_file=lora_file)["digest"] != base
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(lora_file.read_bytes()[:-1] + b" ")
    assert job_fingerprint(spec, model, lora_file=copy)["digest"] != base
    assert run_job(spec).status == "skipped"
    # the preset names the LCM-LoRA repo and the lcm scheduler
    from xportrait_cli.option_layers import resolve_options

    lcm = resolve_options(preset="lcm")
    assert (lcm.lora, lcm.scheduler) == (LCM_LORA_REPO, "lcm") and 4 <= lcm.num_inference_steps <= 8
    assert not np.array_equal(frames, decoded(default_run.output))  # the same job with DDIM, no LoRA


def test_download_weights_lcm_lora_into_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("XPORTRAIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    from xportrait_cli.weights.registry import FILENAME, REPO_ID

    content = b"lora-bytes" * 1000
    fake = FakeHub(
        files={
            REPO_ID: {FILENAME: b"ckpt" * 100, "LICENSE-MODEL.txt": b"license"},
            LCM_LORA_REPO: {LORA_FILENAME: content},
        }
    )
    with FakeHubServer(fake) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        args = ["download-weights", "--no-convert", "--no-landmark-weights", "--lcm-lora"]
        result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("lcm-lora\t"))
    path = line.split("\t")[3]
    assert str(tmp_path / "hub") in path and Path(path).read_bytes() == content
    assert resolve_lora(LCM_LORA_REPO) == Path(path)  # a job's --lora REPO now finds it in the cache
