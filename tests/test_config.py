"""Options, presets and precedence (xportrait_cli.config, option_checks, option_layers, presets)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from xportrait_cli import config, option_names
from xportrait_cli.config import AnimateOptions
from xportrait_cli.errors import UsageError
from xportrait_cli.option_layers import normalize_options, options_to_dict, resolve_options
from xportrait_cli.option_names import default_of, flag_of, help_text
from xportrait_cli.pipeline.timesteps import is_valid_step_count, official_timesteps
from xportrait_cli.presets import PRESETS_DIR, list_presets, load_preset


def test_builtin_defaults_are_the_official_settings():
    o = AnimateOptions()
    assert (o.num_inference_steps, o.guidance_scale, o.num_mix, o.seed) == (30, 5.0, 4, 999)
    assert (o.best_frame, o.start, o.frames, o.stride, o.size) == (-1, 0, 0, 1, 512)
    assert o.reference == () and o.model is None and o.model_config is None
    assert (o.landmarks, o.device, o.dtype, o.reference_mode, o.batch_guidance) == (
        "auto",
        "auto",
        "auto",
        "shared",
        "auto",
    )
    assert (o.decode_chunk_size, o.offload) == (0, "auto")  # automatic: the memory plan decides
    assert not (o.compile or o.paste_back or o.comparison) and o.crop == "auto"


def test_every_option_has_help_and_a_flag():
    for f in dataclasses.fields(AnimateOptions):
        assert f.metadata["help"].strip(), f.name
        assert f.metadata["flag"].startswith("--"), f.name
    assert flag_of("num_inference_steps") == "--steps"
    assert "31" in help_text("steps")
    assert default_of("reference") == () and default_of("size") == 512
    assert not {"quiet", "json", "output"} & set(option_names.OPTION_NAMES)


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AnimateOptions().seed = 1  # type: ignore[misc]


@pytest.mark.parametrize("steps", [3, 27, 105, 300, 1000])
def test_steps_reaching_timestep_1000_are_refused_with_a_neighbour(steps):
    with pytest.raises(UsageError) as err:
        AnimateOptions(num_inference_steps=steps)
    assert "num_inference_steps" in err.value.message and str(steps) in err.value.message
    assert "1000" in err.value.message
    near = [int(w) for w in err.value.hint.replace("use", "").replace("instead", "").split("or")]
    assert all(is_valid_step_count(n) for n in near)


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("size", 500, "multiple of 64"),
        ("size", 0, "multiple of 64"),
        ("num_mix", 16, "0..15"),
        ("num_mix", -1, "0..15"),
        ("num_inference_steps", 0, "1..1000"),
        ("guidance_scale", float("nan"), "finite"),
        ("guidance_scale", -1, ">= 0"),
        ("seed", -1, "2**32"),
        ("seed", 2**32, "2**32"),
        ("best_frame", -3, "-1 (auto)"),
        ("start", -1, ">= 0"),
        ("frames", -1, ">= 0"),
        ("stride", 0, ">= 1"),
        ("decode_chunk_size", -1, "0 for automatic"),
        ("offload", "yes", "one of"),
        ("landmarks", "fann", "one of"),
        ("device", "gpu", "one of"),
        ("dtype", "float16", "one of"),
        ("reference_mode", "per_frame", "one of"),
        ("compile", "maybe", "true or false"),
        ("steps", "thirty", "integer"),
        ("steps", True, "integer"),
    ],
)
def test_bad_values_name_the_option_and_the_value(name, value, needle):
    with pytest.raises(UsageError) as err:
        resolve_options({name: value})
    message = err.value.message
    assert needle in message
    assert option_names.ALIASES.get(name, name) in message and repr(value) in message
    assert err.value.exit_code == 2


def test_choice_errors_suggest_the_closest_value():
    with pytest.raises(UsageError) as err:
        resolve_options({"landmarks": "fann"})
    assert err.value.hint == "did you mean 'fan'?"
    with pytest.raises(UsageError) as err:
        resolve_options({"size": 500})
    assert "512" in err.value.hint


def test_values_are_coerced():
    o = resolve_options(
        {"device": "CUDA:1", "steps": "20", "guidance_scale": 4, "reference": "~/a.png", "compile": "yes"}
    )
    assert o.device == "cuda:1" and o.num_inference_steps == 20 and o.guidance_scale == 4.0
    assert o.reference == (Path("~/a.png").expanduser(),) and o.compile is True
    assert resolve_options({"reference": ["a.png", Path("b.png")]}).reference == (
        Path("a.png"),
        Path("b.png"),
    )
    assert resolve_options({"batch_guidance": True}).batch_guidance == "on"  # YAML `on`
    assert resolve_options({"offload": False}).offload == "off"


def test_paste_back_needs_crop():
    with pytest.raises(UsageError, match="paste_back"):
        resolve_options({"paste_back": True, "crop": "off"})
    assert resolve_options({"paste_back": True}).paste_back  # crop auto
    assert resolve_options({"paste_back": True, "crop": True}).crop == "on"  # the old boolean flag
    assert resolve_options({"crop": False}).crop == "off" and resolve_options({"crop": "no"}).crop == "off"
    with pytest.raises(UsageError, match="crop"):
        resolve_options({"crop": "sometimes"})


def test_key_spellings_and_aliases():
    assert normalize_options({"steps": 15, "guidance-scale": 3, "--num-mix": 2, "decode_chunk_size": 4}) == {
        "num_inference_steps": 15,
        "guidance_scale": 3.0,
        "num_mix": 2,
        "decode_chunk_size": 4,
    }
    with pytest.raises(UsageError, match="given twice"):
        normalize_options({"steps": 15, "num_inference_steps": 20})


def test_unknown_key_suggests_the_option():
    with pytest.raises(UsageError) as err:
        normalize_options({"guidance": 3}, source="presets/x.yaml")
    assert err.value.message == "unknown option 'guidance' in presets/x.yaml"
    assert err.value.hint == "did you mean 'guidance_scale'?"
    with pytest.raises(UsageError) as err:
        normalize_options({"step": 3})
    assert "num_inference_steps" in err.value.hint


def test_shipped_presets():
    assert Path(config.__file__).resolve().parent.parent / "presets" == PRESETS_DIR
    assert {"default", "fast"} <= set(list_presets())
    assert resolve_options(preset="default") == AnimateOptions()
    fast = resolve_options(preset="fast")
    assert fast == AnimateOptions(num_inference_steps=15)
    assert len(official_timesteps(fast.num_inference_steps)) == 16


def test_every_shipped_preset_loads():
    for name in list_presets():
        resolve_options(preset=name)


def test_unknown_preset_name_suggests():
    with pytest.raises(UsageError) as err:
        load_preset("fats")
    assert "'fats'" in err.value.message and err.value.hint == "did you mean 'fast'?"


def test_preset_from_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "description: x\nsteps: 20\nbest-frame: 36\nreference: [a.png, /abs/b.png]\nmodel: m.th\n"
    )
    opts = load_preset(path)
    assert opts["num_inference_steps"] == 20 and opts["best_frame"] == 36
    assert opts["reference"] == (tmp_path / "a.png", Path("/abs/b.png"))
    assert opts["model"] == tmp_path / "m.th"
    assert load_preset(str(path)) == opts


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("guidance: 3\n", "unknown option 'guidance'"),
        ("size: 500\n", "invalid size (--size) 500"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("steps: [\n", "invalid YAML"),
    ],
)
def test_bad_preset_files(tmp_path, text, needle):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_preset(path)
    assert needle in err.value.message and "x.yaml" in err.value.message


def test_missing_preset_file(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_preset(tmp_path / "nope.yaml")


def test_empty_preset_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert resolve_options(preset=path) == AnimateOptions()


def test_precedence_flags_over_layers_over_preset_over_defaults(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("steps: 20\nseed: 1\nnum_mix: 2\nsize: 256\n")
    job = {"steps": 40, "seed": None}
    manifest_defaults = {"seed": 7, "num-mix": 3}
    outer = {"num_mix": 5, "size": 384, "stride": 2}
    o = resolve_options(job, preset=preset, defaults_layers=[manifest_defaults, outer])
    assert o.num_inference_steps == 40  # job
    assert o.seed == 7  # manifest defaults (job's None = not set)
    assert o.num_mix == 3  # first layer beats the second
    assert o.size == 384 and o.stride == 2  # second layer beats the preset
    assert o.guidance_scale == 5.0  # built in
    assert resolve_options({"steps": None}, preset=preset).num_inference_steps == 20


def test_layer_errors_name_their_source():
    with pytest.raises(UsageError, match="defaults layer 0"):
        resolve_options({}, defaults_layers=[{"size": 1}])
    with pytest.raises(UsageError, match="in flags"):
        resolve_options({"size": 1})


def test_options_to_dict_is_json_and_round_trips():
    o = resolve_options({"reference": ["a.png"], "model": "w.th", "steps": 15, "crop": True})
    d = options_to_dict(o)
    assert list(d) == sorted(d)
    assert d["reference"] == ["a.png"] and d["model"] == "w.th" and d["model_config"] is None
    assert json.loads(json.dumps(d)) == d
    assert resolve_options(d) == o
    assert options_to_dict(resolve_options(d)) == d


def test_options_to_dict_output_only_drops_speed_options():
    base = options_to_dict(AnimateOptions(), output_only=True)
    assert not {"compile", "decode_chunk_size", "batch_guidance", "offload"} & set(base)
    fast_path = AnimateOptions(compile=True, decode_chunk_size=8, batch_guidance="on", offload="on")
    assert options_to_dict(fast_path, output_only=True) == base
    assert options_to_dict(AnimateOptions(seed=1), output_only=True) != base


def test_replace_validates():
    o = AnimateOptions().replace(steps=15)
    assert o.num_inference_steps == 15
    with pytest.raises(UsageError):
        o.replace(size=100)


def test_errors_keep_their_hint_across_processes():
    import pickle

    from xportrait_cli.errors import NoFaceError, OutOfMemoryPlanError, UsageError
    from xportrait_cli.jobs.manifest import ManifestError

    problems = [UsageError("job 1: bad seed", "use 0..2**32-1"), UsageError("job 2: no driving", "add one")]
    for error in (
        NoFaceError("p.png: no face", "frontal"),
        OutOfMemoryPlanError("m", "h"),
        ManifestError(problems),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.one_line() == error.one_line()
