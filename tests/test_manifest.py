"""Manifests of `xportrait batch` (xportrait_cli.jobs.manifest): formats, paths, precedence, errors."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from xportrait_cli.cli import main
from xportrait_cli.errors import InputError, UsageError
from xportrait_cli.jobs.manifest import ManifestError, load_manifest, parse_manifest, sniff_format


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder with inputs (content is irrelevant: manifests only check that files exist)."""
    media = tmp_path / "media"
    media.mkdir()
    for name in ("face.png", "other.png", "ref.png", "drive.mp4", "talk.mp4", "tiny.th", "tiny.yaml"):
        (media / name).write_bytes(b"x")
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cli(*args: str, monkeypatch, stdin: str | None = None) -> int:
    """Run `xportrait ARGS` in this process through main(); return the exit code."""
    monkeypatch.setattr(sys, "argv", ["xportrait", *args])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


def test_yaml_list_with_default_outputs_beside_the_manifest(files):
    manifest = write(
        files / "manifest.yaml",
        "- {portrait: media/face.png, driving: media/drive.mp4}\n"
        "- portrait: media/other.png\n  driving: media/talk.mp4\n  output: out/b.mp4\n  seed: 5\n",
    )
    jobs = load_manifest(manifest)
    assert [j.index for j in jobs] == [1, 2] and all(j.error is None for j in jobs)
    a, b = (j.spec for j in jobs)
    assert a.portrait == files / "media/face.png" and a.driving == files / "media/drive.mp4"
    assert a.output == files / "face--drive.mp4"
    assert b.output == files / "out/b.mp4" and b.options.seed == 5 and a.options.seed == 999
    assert jobs[1].where == f"{manifest} job 2, line 2"


def test_yaml_defaults_and_jobs_precedence(files):
    manifest = write(
        files / "m.yaml",
        """
defaults:
  seed: 7
  guidance_scale: 3
  portrait: media/face.png
jobs:
  - driving: media/drive.mp4
    seed: 1
  - driving: media/talk.mp4
    portrait: media/other.png
    steps: 25
""",
    )
    one, two = (j.spec for j in load_manifest(manifest, preset="fast"))
    # job > manifest defaults > preset (fast: steps 15) > built-in (num_mix 4)
    assert (one.options.seed, one.options.guidance_scale, one.options.num_inference_steps) == (1, 3.0, 15)
    assert (two.options.seed, two.options.num_inference_steps, two.options.num_mix) == (7, 25, 4)
    assert one.portrait == files / "media/face.png" and two.portrait == files / "media/other.png"


def test_csv_with_header_empty_cells_and_references(files):
    manifest = write(
        files / "jobs.csv",
        "portrait,driving,output,steps,model-config,reference,crop\n"
        "media/face.png,media/drive.mp4,a.mp4,15,media/tiny.yaml,media/ref.png;media/other.png,yes\n"
        "media/other.png,media/talk.mp4,,,,,\n",
    )
    a, b = load_manifest(manifest)
    assert a.where == f"{manifest} row 2" and b.where == f"{manifest} row 3"
    assert a.spec.options.num_inference_steps == 15 and a.spec.options.crop == "on"
    assert a.spec.options.model_config == files / "media/tiny.yaml"
    assert a.spec.options.reference == (files / "media/ref.png", files / "media/other.png")
    assert b.spec.output == files / "other--talk.mp4" and b.spec.options.num_inference_steps == 30


def test_jsonl_with_blank_lines(files):
    manifest = write(
        files / "jobs.jsonl",
        '{"portrait": "media/face.png", "driving": "media/drive.mp4", "num_mix": 2}\n\n'
        '{"portrait": "media/other.png", "driving": "media/talk.mp4", "name": "second"}\n',
    )
    a, b = load_manifest(manifest)
    assert a.spec.options.num_mix == 2 and b.spec.label == "second" and b.where == f"{manifest} line 3"


def test_stdin_paths_are_relative_to_the_current_directory(files, monkeypatch):
    monkeypatch.chdir(files / "media")
    (job,) = load_manifest("-", stdin=io.StringIO("portrait,driving\nface.png,drive.mp4\n"))
    assert (
        job.spec.portrait == files / "media/face.png" and job.spec.output == files / "media/face--drive.mp4"
    )
    (job,) = load_manifest("-", stdin=io.StringIO('{"portrait": "face.png", "driving": "talk.mp4"}\n'))
    assert job.spec.driving == files / "media/talk.mp4"


def test_relative_paths_are_relative_to_the_manifest_and_output_dir(files, monkeypatch):
    monkeypatch.chdir(files / "media")  # elsewhere than the manifest
    manifest = write(
        files / "sub/m.yaml",
        """
defaults: {model: ../media/tiny.th, model-config: ../media/tiny.yaml, reference: [../media/ref.png]}
jobs:
  - {portrait: ../media/face.png, driving: ../media/drive.mp4}
  - {portrait: ../media/face.png, driving: ../media/talk.mp4, output: named.mp4}
  - {portrait: ~/face.png, driving: /abs/drive.mp4, output: /abs/x.mp4}
""",
    )
    monkeypatch.setenv("HOME", str(files / "media"))
    a, b, c = load_manifest(manifest)
    assert a.spec.portrait == files / "media/face.png" and a.spec.output == files / "sub/face--drive.mp4"
    assert a.spec.options.model == files / "media/tiny.th"
    assert a.spec.options.model_config == files / "media/tiny.yaml"
    assert a.spec.options.reference == (files / "media/ref.png",)
    assert b.spec.output == files / "sub/named.mp4"
    assert c.spec.portrait == files / "media/face.png" and c.spec.output == Path("/abs/x.mp4")
    a, b, _ = load_manifest(manifest, output_dir=files / "results")
    assert a.spec.output == files / "results/face--drive.mp4" and b.spec.output == files / "results/named.mp4"


@pytest.mark.parametrize("key", ["model_config", "model-config", "--model-config", "Model-Config"])
def test_dash_and_underscore_keys(files, key):
    text = (
        f"- {{portrait: media/face.png, driving: media/drive.mp4, {key}: media/tiny.yaml, guidance-scale: 2}}"
    )
    (job,) = load_manifest(write(files / "m.yaml", text))
    assert job.spec.options.model_config == files / "media/tiny.yaml" and job.spec.options.guidance_scale == 2


def test_missing_input_marks_only_that_job(files):
    manifest = write(
        files / "m.yaml",
        "- {portrait: media/face.png, driving: media/drive.mp4}\n"
        "- {portrait: media/face.png, driving: media/nope.mp4}\n"
        "- {portrait: media/face.png, driving: media/talk.mp4, reference: media}\n",
    )
    ok, missing, folder = load_manifest(manifest)
    assert ok.error is None
    assert (
        isinstance(missing.error, InputError) and "nope.mp4: driving video not found" in missing.error.message
    )
    assert "m.yaml job 2" in missing.error.hint
    assert "reference portrait is a folder" in folder.error.message


def problem(files: Path, name: str, text: str, **kwargs) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(write(files / name, text), **kwargs)
    assert info.value.exit_code == 2
    return info.value.one_line()


def test_unknown_key_has_a_suggestion_and_the_job_number(files):
    text = "jobs:\n  - {portrait: media/face.png, driving: media/drive.mp4}\n"
    text += "  - {portrait: media/face.png, driving: media/talk.mp4, guidence: 3}\n"
    message = problem(files, "manifest.yaml", text)
    assert "unknown option 'guidence' in" in message and "manifest.yaml job 2" in message
    assert "did you mean 'guidance_scale'?" in message
    message = problem(files, "jobs.csv", "portait,driving\nx,y\n")
    assert "unknown option 'portait'" in message and "did you mean 'portrait'?" in message
    message = problem(files, "m.yaml", "defaults: {stepz: 3}\njobs: [{portrait: a, driving: b}]\n")
    assert "m.yaml defaults" in message and "did you mean 'num_inference_steps'?" in message
    message = problem(files, "m.yaml", "default: {}\njobs: []\n")
    assert "unknown top-level key 'default'" in message and "did you mean 'defaults'?" in message


def test_duplicate_outputs(files):
    message = problem(
        files,
        "manifest.yaml",
        "- {portrait: media/face.png, driving: media/drive.mp4}\n"
        "- {portrait: media/other.png, driving: media/talk.mp4, output: face--drive.mp4}\n",
    )
    assert "manifest.yaml job 2, line 2 writes the same output as" in message and "job 1" in message


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("size: 100", "invalid size (--size) 100"),
        ("steps: 27", "invalid num_inference_steps (--steps) 27"),
        ("seed: -1", "invalid seed (--seed) -1"),
        ("landmarks: dilb", "did you mean 'dlib'?"),
        ("paste_back: true, crop: off", "paste_back (--paste-back) with crop off"),
        ("steps: 15, num_inference_steps: 15", "given twice"),
        ("guidance_scale: [1]", "invalid guidance_scale"),
    ],
)
def test_bad_values_name_the_job(files, entry, expected):
    text = (
        "- {portrait: media/face.png, driving: media/drive.mp4}\n"
        f"- {{portrait: media/face.png, driving: media/talk.mp4, {entry}}}\n"
    )
    message = problem(files, "manifest.yaml", text)
    assert expected in message and "manifest.yaml job 2" in message, message


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("m.yaml", "- {portrait: a, driving: [b\n", "invalid YAML in"),
        ("m.yaml", "just a string\n", "must be a list of jobs"),
        ("m.yaml", "- portrait: a\n", "job 1, line 1 has no 'driving'"),
        ("m.yaml", "- a.png\n", "must be a mapping"),
        ("m.yaml", "- {portrait: a, driving: [b, c]}\n", "invalid driving"),
        ("m.yaml", "jobs: {a: 1}\n", "'jobs' in"),
        ("m.yaml", "", "has no jobs"),
        ("m.jsonl", '{"portrait": "a", "driving": "b"}\n{"portrait": \n', "invalid JSON in"),
        ("m.csv", "portrait,driving\na,b,c\n", "row 2 has more cells than the header"),
    ],
)
def test_structural_problems(files, name, text, expected):
    assert expected in problem(files, name, text)


def test_every_problem_is_reported_at_once(files):
    message = problem(
        files,
        "m.yaml",
        "- {portrait: a, driving: b, sise: 64}\n- {portrait: a, driving: c, seed: x}\n- {portrait: a}\n",
    )
    assert message.startswith("3 problems in the manifest")
    assert "job 1" in message and "job 2" in message and "job 3" in message


def test_unreadable_manifest_and_unknown_preset(files):
    with pytest.raises(ManifestError, match="manifest .*nope.yaml not found"):
        load_manifest(files / "nope.yaml")
    with pytest.raises(UsageError, match="unknown preset 'fsat'"):
        load_manifest(write(files / "ok.yaml", "- {portrait: media/face.png, driving: media/drive.mp4}\n"),
                      preset="fsat")  # fmt: skip


def test_sniffing():
    assert sniff_format('{"portrait": "a"}\n') == "jsonl"
    assert sniff_format("# jobs\n- portrait: a\n") == "yaml"
    assert sniff_format("defaults:\n  seed: 1\n") == "yaml"
    assert sniff_format("portrait,driving\na,b\n") == "csv"
    jobs = parse_manifest("portrait,driving\na.png,b.mp4\n", name="<stdin>", base_dir=Path("/x"))
    assert jobs[0].spec.output == Path("/x/a--b.mp4") and isinstance(jobs[0].error, InputError)


def test_cli_manifest_errors_exit_2_before_running(files, monkeypatch, capsys):
    manifest = write(
        files / "manifest.yaml",
        "- {portrait: media/face.png, driving: media/drive.mp4}\n"
        "- {portrait: media/face.png, driving: media/talk.mp4}\n"
        "- {portrait: media/face.png, driving: media/talk.mp4, output: x.mp4, guidance: 2}\n",
    )
    assert cli("batch", str(manifest), monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert "manifest.yaml job 3" in err and "did you mean 'guidance_scale'?" in err
    assert not list(files.glob("*.mp4*"))  # nothing was run
    code = cli("batch", "-", monkeypatch=monkeypatch, stdin="portrait,driving,seedd\na,b,1\nc,d,2\n")
    err = capsys.readouterr().err
    assert code == 2 and "<stdin> row 2" in err and "<stdin> row 3" in err and "did you mean 'seed'?" in err
    assert cli("batch", str(manifest), "--shard", "2/2", monkeypatch=monkeypatch) == 2
    assert "--shard 2/2" in capsys.readouterr().err
