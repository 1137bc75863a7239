"""``--help`` held to behaviour: what the help says is what the code does, and the README lists it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from xportrait_cli.cli import app
from xportrait_cli.config import PANELS
from xportrait_cli.option_names import OPTION_NAMES, flag_of, help_text, option_field

README = Path(__file__).resolve().parent.parent / "README.md"


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _flags(name: str) -> list[str]:
    """Every option flag of command ``name`` as ``--help`` lists it (the first long one of each)."""
    flags = []
    for param in _command(name).params:
        if param.param_type_name == "option" and param.name != "help":
            flags.append(next(o for o in param.opts if o.startswith("--")))
    return flags


def _readme_table(heading: str) -> str:
    """The option table's rows of README section ``heading``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_dtype_help_says_what_resolve_dtype_does():
    from xportrait_cli.jobs.runner import resolve_dtype
    from xportrait_cli.weights.registry import CUDA_DTYPE

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    on_cpu = names[resolve_dtype("auto", torch.device("cpu"))]
    on_cuda = names[resolve_dtype("auto", torch.device("cuda"))]  # only reads device.type
    assert (on_cpu, on_cuda) == ("fp32", CUDA_DTYPE)
    text = help_text("dtype")
    assert f"auto ({on_cuda} on CUDA" in text and f"{on_cpu} on the CPU" in text
    assert "download-weights" in text  # the precision it converts to, so the default loads uncast


def test_paste_back_help_says_it_pastes_into_the_portrait():
    # test_animate.py::test_crop_and_paste_back_give_a_video_at_the_portrait_resolution runs it:
    # a 640x512 portrait with a square driving clip gives a 640x512 video.
    text = help_text("paste_back")
    assert "into the original portrait" in text and "portrait's size" in text
    assert "driving" not in text


def test_every_animate_option_is_declared_from_its_field():
    command = _command("animate")
    by_name = {p.name: p for p in command.params}
    for name in OPTION_NAMES:
        param, meta = by_name[name], option_field(name).metadata
        assert flag_of(name) in param.opts, name
        assert param.help == help_text(name), name
        assert param.rich_help_panel == meta["panel"] in PANELS, name
    assert {p.rich_help_panel for p in command.params if p.param_type_name == "option"} >= set(PANELS)


@pytest.mark.parametrize("command", ["animate", "batch"])
def test_help_fits_80_columns(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    if command == "animate":
        shown = re.findall(r"─ ([A-Z][a-z][\w ]+?) ─", result.output)
        assert [p for p in shown if p in PANELS] == list(PANELS)


def test_every_animate_option_is_in_the_readme_table():
    table = _readme_table("`xportrait animate`")
    missing = [flag for flag in _flags("animate") if f"`{flag}" not in table and f", `{flag}" not in table]
    assert not missing, f"add to README's animate option table: {missing}"


def test_every_batch_option_is_in_the_readme():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Batch jobs\n", 1)[1].split("\n## ", 1)[0]
    missing = [flag for flag in _flags("batch") if flag not in section]
    assert not missing, f"document in README's Batch jobs section: {missing}"
