"""The converted folder: `xportrait convert`, diffusers' from_pretrained/save_pretrained, strict keys,
the old format, `--model` as a file, a folder or a Hub repo id, and diffusers' offload hooks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import golden as golden_checker
import pytest
import torch
from conftest import decoded, run_main, tiny_cli_args
from diffusers import AutoencoderKL, ControlNetModel
from fakehub import FakeHub, FakeHubServer
from safetensors.torch import load_file, save_file
from test_checkpoint import pipe_state
from typer.testing import CliRunner

from xportrait_cli import cli
from xportrait_cli.errors import CheckpointError
from xportrait_cli.pipeline import XPortraitPipeline, load_pipeline
from xportrait_cli.pipeline.loading import COMPONENTS
from xportrait_cli.weights import registry

REPO = "someone/x-portrait-tiny"


@pytest.fixture(scope="module")
def converted(golden: Path, tiny_config: Path, tmp_path_factory) -> Path:
    """The golden tiny model converted by the CLI, in fp32 (exact against the golden vectors)."""
    out = tmp_path_factory.mktemp("convert") / "tiny-fp32"
    args = ["convert", str(golden / "tiny_xportrait.th"), str(out), "--dtype", "fp32"]
    result = CliRunner().invoke(cli.app, [*args, "--model-config", str(tiny_config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    return out


def test_cli_converted_folder_reloads_and_passes_the_golden_checker(converted: Path, golden: Path):
    assert json.loads((converted / "model_index.json").read_text())["unet"] == [
        "xportrait_cli.models.unet",
        "XPortraitUNet",
    ]
    for name in COMPONENTS:
        assert {p.name for p in (converted / name).iterdir()} == {
            "config.json",
            "diffusion_pytorch_model.safetensors",
        }
    assert (converted / "scheduler" / "scheduler_config.json").is_file()
    pipe = XPortraitPipeline.from_pretrained(converted)
    report = golden_checker.run_case(golden / "case_a.json", pipe=pipe)
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert {"comp_c2/eps", "step0/x_prev", "final/frames_uint8"} <= report["checks"].keys()


def test_components_load_alone_with_stock_diffusers(converted: Path, tiny_pipe):
    vae = AutoencoderKL.from_pretrained(converted, subfolder="vae")
    controlnet = ControlNetModel.from_pretrained(converted, subfolder="global_controlnet")
    for loaded, original in ((vae, tiny_pipe.vae), (controlnet, tiny_pipe.global_controlnet)):
        expected = original.state_dict()
        assert loaded.state_dict().keys() == expected.keys()
        assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_save_pretrained_round_trip_gives_identical_tensors(converted: Path, tmp_path: Path):
    pipe = XPortraitPipeline.from_pretrained(converted)
    pipe.save_pretrained(tmp_path / "again")
    again = XPortraitPipeline.from_pretrained(tmp_path / "again")
    first, second = pipe_state(pipe), pipe_state(again)
    assert first.keys() == second.keys() and "unet.empty_prompt_embeds" in first
    assert all(torch.equal(v, second[k]) for k, v in first.items())
    assert again.scheduler.config.steps_offset == 1 and not again.scheduler.config.set_alpha_to_one


def test_fp16_folder_keeps_buffers_in_fp32(golden: Path, tiny_config: Path, tmp_path: Path):
    out = tmp_path / "tiny-fp16"
    code = CliRunner().invoke(
        cli.app, ["convert", str(golden / "tiny_xportrait.th"), str(out), "--model-config", str(tiny_config)]
    )
    assert code.exit_code == 0, code.output
    unet = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert unet["unet.conv_in.weight"].dtype == torch.float16
    assert unet["empty_prompt_embeds"].dtype == torch.float32
    assert unet["down_motion_modules.0.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"].dtype == (
        torch.float32
    )
    pipe = XPortraitPipeline.from_pretrained(out, dtype=torch.float16)
    assert {p.dtype for name in COMPONENTS for p in getattr(pipe, name).parameters()} == {torch.float16}


def test_old_format_folder_is_one_clear_error(tmp_path: Path, golden: Path, media: Path, monkeypatch, capsys):
    old = tmp_path / "x-portrait-0123456789ab-fp16"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"format": registry.OLD_FORMAT, "version": 1}))
    (old / "networks.safetensors").write_bytes(b"old")
    for load in (load_pipeline, XPortraitPipeline.from_pretrained):
        with pytest.raises(CheckpointError, match="converted by an older xportrait") as info:
            load(old)
        assert f"xportrait convert <checkpoint> {old}" in info.value.hint
    args = tiny_cli_args(golden)
    args[args.index("--model") + 1] = str(old)
    portrait, driving = media / "xportrait_source.png", media / "xportrait_driving.mp4"
    code, _out, err = run_main(monkeypatch, capsys, "animate", str(portrait), str(driving), *args,
                               "--frames", "2", "-o", str(tmp_path / "out.mp4"))  # fmt: skip
    assert code == 1
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "older xportrait" in line and f"xportrait convert <checkpoint> {old}" in line
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", r"vae does not fit the networks: 1 missing: vae.decoder.conv_in.weight"),
        ("add", r"1 unexpected: vae.encoder.extra.weight"),
        ("reshape", r"1 of the wrong shape: vae.decoder.conv_in.bias"),
    ],
)
def test_a_missing_extra_or_reshaped_tensor_names_the_component_and_key(
    converted: Path, tmp_path: Path, change: str, message: str
):
    folder = shutil.copytree(converted, tmp_path / "folder")
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    if change == "drop":
        del tensors["decoder.conv_in.weight"]
    elif change == "add":
        tensors["encoder.extra.weight"] = torch.zeros(2)
    else:
        tensors["decoder.conv_in.bias"] = torch.zeros(3)
    save_file(tensors, str(weights))
    for load in (load_pipeline, XPortraitPipeline.from_pretrained):
        with pytest.raises(CheckpointError, match=message) as info:
            load(folder)
        assert str(folder / "vae") in info.value.message


def test_model_option_takes_a_hub_repo_id_of_a_folder(
    converted: Path, golden: Path, media: Path, tmp_path: Path, monkeypatch, capsys
):
    """`--model org/name` downloads the folder (snapshot_download from HF_ENDPOINT) and gives the same
    frames as the official .th it was converted from."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    files = {p.relative_to(converted).as_posix(): p for p in converted.rglob("*") if p.is_file()}
    portrait, driving = media / "xportrait_source.png", media / "xportrait_driving.mp4"
    outputs = {}
    with FakeHubServer(FakeHub(files={REPO: files})) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        for name, model in (("th", str(golden / "tiny_xportrait.th")), ("hub", REPO)):
            args = tiny_cli_args(golden)
            args[args.index("--model") + 1] = model
            outputs[name] = tmp_path / f"{name}.mp4"
            code, _out, err = run_main(monkeypatch, capsys, "animate", str(portrait), str(driving), *args,
                                       "--frames", "4", "-o", str(outputs[name]))  # fmt: skip
            assert code == 0, err
    assert (decoded(outputs["hub"]) == decoded(outputs["th"])).all()
    snapshots = list((tmp_path / "hub").glob("models--someone--x-portrait-tiny/snapshots/*/model_index.json"))
    assert len(snapshots) == 1


def test_convert_is_atomic_and_never_replaces_other_folders(
    tmp_path: Path, tiny_state_dict, monkeypatch, capsys
):
    partial = {k: v for k, v in tiny_state_dict.items() if "output_blocks_motion_module.3." not in k}
    bad = tmp_path / "bad.th"
    torch.save({"state_dict": partial}, bad)
    code, _out, err = run_main(monkeypatch, capsys, "convert", str(bad))
    assert code == 1 and "missing" in err and "unet.up_motion_modules.3" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.th"]  # no folder, no temporary left
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    code, _out, err = run_main(monkeypatch, capsys, "convert", str(bad), str(keep))
    assert code == 2 and "is not a converted X-Portrait folder" in err
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]


def test_model_cpu_offload_sequence_names_every_network(converted: Path):
    """diffusers' ``enable_model_cpu_offload`` hooks the components in this order (the order they
    first run: appearance net, ControlNets, main UNet, then the VAE's decode)."""
    pipe = XPortraitPipeline.from_pretrained(converted)
    assert pipe.model_cpu_offload_seq.split("->") == [
        "reference_net",
        "global_controlnet",
        "local_controlnet",
        "unet",
        "vae",
    ]


def test_a_repo_id_in_a_preset_stays_as_written_and_paths_are_anchored(tmp_path: Path):
    from xportrait_cli.presets import load_preset

    path = tmp_path / "mine.yaml"
    for model, expected in ((REPO, Path(REPO)), ("sub/m.th", tmp_path / "sub/m.th"), ("m", tmp_path / "m")):
        path.write_text(f"model: {model}\n")
        assert load_preset(path)["model"] == expected
