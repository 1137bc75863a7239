"""The official facts and defaults, each stated once (xportrait_cli.pipeline.timesteps / .defaults),
and the torch-free imports that let the config and the manifest reader use them."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_defaults, write_manifest

from xportrait_cli.config import AnimateOptions, load_preset
from xportrait_cli.pipeline.defaults import DEFAULT_REFERENCE_MODE, OFFICIAL_DEFAULTS
from xportrait_cli.pipeline.timesteps import (
    is_valid_step_count,
    nearest_valid_step_counts,
    official_timesteps,
)


def test_official_timesteps():
    assert official_timesteps(4) == [751, 501, 251, 1]
    thirty = official_timesteps(30)
    assert len(thirty) == 31 and thirty[:3] == [991, 958, 925] and thirty[-1] == 1
    assert len(official_timesteps(15)) == 16 and official_timesteps(15)[0] == 991
    assert len(official_timesteps(25)) == 25 and len(official_timesteps(20)) == 20
    assert official_timesteps(1) == [1]
    for bad in (3, 9, 27, 36, 37, 101, 111, 251, 333, 501, 1000):
        with pytest.raises(ValueError, match="timestep 1000"):
            official_timesteps(bad)
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="1..1000"):
            official_timesteps(bad)


def test_invalid_step_counts_are_computed_not_tabulated():
    bad = {s for s in range(1, 1001) if not is_valid_step_count(s)}
    assert bad == {3, 9, 27, 36, 37, *range(101, 112), *range(251, 334), *range(501, 1001)}
    assert not is_valid_step_count(0) and not is_valid_step_count(1001) and not is_valid_step_count(True)
    assert not is_valid_step_count(30.0)
    assert nearest_valid_step_counts(27) == (26, 28) and nearest_valid_step_counts(105) == (100, 112)
    assert nearest_valid_step_counts(1000) == (500,)


def test_the_default_preset_is_the_official_defaults():
    assert load_preset("default") == OFFICIAL_DEFAULTS.as_dict()
    assert OFFICIAL_DEFAULTS.as_dict() == {
        "num_inference_steps": 30,
        "guidance_scale": 5.0,
        "num_mix": 4,
        "seed": 999,
        "control_mode": "controlnet-important",
        "noised_reference": False,
        "guidance_interval": (0.0, 1.0),
        "scheduler": "ddim",
    }


def test_options_and_pipeline_default_to_the_official_defaults():
    from xportrait_cli.pipeline import XPortraitPipeline

    options = AnimateOptions()
    pipeline = inspect.signature(XPortraitPipeline.__call__).parameters
    expected = {**OFFICIAL_DEFAULTS.as_dict(), "reference_mode": DEFAULT_REFERENCE_MODE}
    for name, value in expected.items():
        assert getattr(options, name) == value, name
        assert pipeline[name].default == value, name
    assert [f.name for f in dataclasses.fields(OFFICIAL_DEFAULTS)] == list(OFFICIAL_DEFAULTS.as_dict())


def test_config_and_manifest_validation_do_not_import_torch(tmp_path, golden, media):
    manifest = write_manifest(
        tmp_path / "m.yaml",
        tiny_defaults(golden, frames=4, steps=2),
        [{"portrait": str(media / "xportrait_source.png"), "driving": str(media / "xportrait_driving.mp4")}],
    )
    script = f"""
import json, sys
import xportrait_cli.config
from xportrait_cli.jobs.manifest import load_manifest
jobs = load_manifest({str(manifest)!r})
print(json.dumps({{"errors": [str(j.error) for j in jobs if j.error],
                   "heavy": sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)}}))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    report = json.loads(run.stdout)
    assert report == {"errors": [], "heavy": []}
