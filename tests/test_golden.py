"""Golden parity against the official implementation, through the runnable checker tests/golden.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import golden  # noqa: E402


def golden_cases(shared_dir: Path) -> list[Path]:
    """Case A and the option cases c1–c3 (``options/``): every JSON that names a tensor file."""
    found = [*(shared_dir / "golden").glob("*.json"), *(shared_dir / "golden" / "options").glob("*.json")]
    return sorted(p for p in found if "tensors_file" in json.loads(p.read_text()))


def pytest_generate_tests(metafunc):
    if "case_path" in metafunc.fixturenames:
        from conftest import shared_dir

        cases = golden_cases(shared_dir()) if (shared_dir() / "golden").is_dir() else []
        metafunc.parametrize("case_path", cases or [None], ids=[p.stem for p in cases] or ["no-shared"])


def test_checker_cli_passes_every_case(case_path, shared):
    if case_path is None:
        pytest.skip("no golden case files")
    run = subprocess.run(
        [sys.executable, str(HERE / "golden.py"), str(case_path)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    report = json.loads(run.stdout)
    failed = {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert run.returncode == 0 and report["ok"], failed
    # the case's component checks (case A only) and end-to-end checks all ran
    case = json.loads(case_path.read_text())
    expected = {"final/frames_uint8", "step3/eps_avg"}
    if "comp_a/eps" in case["tensors"]:
        expected |= {"comp_a/eps", "comp_c2/eps", "comp_d/decoded"}
    if case.get("initial_facevid2vid_results"):
        expected |= {"vae/init_posterior_mean", "lat/init_z"}
    if not case.get("wonoise", True):
        expected |= {f"step{k}/window{j}/ref_noisy" for k in range(4) for j in range(2)}
    assert expected <= report["checks"].keys()
    assert report["checks"]["final/latents"]["max_abs_error"] < 2e-4


def test_batched_guidance_keeps_parity(case_path, shared):
    if case_path is None:
        pytest.skip("no golden case files")
    report = golden.run_case(case_path, batch_guidance=True)
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["ok"]}


def test_each_option_case_fails_without_its_option(shared):
    """c1–c3 are not vacuous: run as case A (option off), each one's final latents are off."""
    options = shared / "golden" / "options"
    for name, off in (
        ("case_c1", {"initial_facevid2vid_results": False}),
        ("case_c2", {"control_mode": "controlnet_important"}),
        ("case_c3", {"wonoise": True}),
    ):
        case = {**json.loads((options / f"{name}.json").read_text()), **off}
        report = golden.run_case(options / f"{name}.json", case=case)
        assert not report["checks"]["final/latents"]["ok"], name


def test_checker_fails_on_a_broken_network(shared, monkeypatch):
    """The checker is not vacuous: a wrong motion-module position table is caught (on the cases
    with component checks: case A)."""
    cases = golden_cases(shared)
    with_components = [p for p in cases if "comp_a/eps" in json.loads(p.read_text())["tensors"]]
    assert with_components, "no golden case with component checks"
    case_path = with_components[0]
    import xportrait_cli.models.motion_module as mm

    monkeypatch.setattr(mm.PositionalEncoding, "forward", lambda self, x: x)  # drop the position encoding
    report = golden.run_case(case_path)
    assert not report["ok"] and not report["checks"]["comp_a/eps"]["ok"]
