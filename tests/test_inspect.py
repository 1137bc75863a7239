"""``xportrait inspect``: JSON output, previews and one-line failures (offline dlib backend)."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
from conftest import run_main
from PIL import Image
from typer.testing import CliRunner

from xportrait_cli import cli
from xportrait_cli.face.landmarks import DlibDetector
from xportrait_cli.inspect import inspect_inputs

runner = CliRunner()


def test_inspect_json(media):
    res = runner.invoke(
        cli.app,
        [
            "inspect",
            str(media / "xportrait_source.png"),
            str(media / "xportrait_driving.mp4"),
            "--json",
            "--landmarks",
            "dlib",
            "--stride",
            "10",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"portrait", "best_frame", "affine", "frames", "cropped", "warnings"}
    assert data["cropped"] == [] and data["warnings"] == []  # square inputs, a face: as the official code
    assert data["portrait"]["face"] is True and len(data["portrait"]["landmarks"]) == 68
    assert [f["index"] for f in data["frames"]] == list(range(0, 60, 10))
    assert data["best_frame"] in range(0, 60, 10)
    assert np.asarray(data["affine"]).shape == (2, 3)
    for f in data["frames"]:
        assert f["face"] and not f["filled"] and np.asarray(f["landmarks"]).shape == (68, 2)
        assert (np.asarray(f["landmarks"]) > 0).all() and (np.asarray(f["landmarks"]) < 512).all()


def test_previews(media, tmp_path):
    det = DlibDetector()
    png = tmp_path / "preview.png"
    res = inspect_inputs(
        media / "astronaut.png", media / "carphone.mp4", detector=det, num_frames=6, stride=3, output=png
    )
    assert res.preview == png
    assert Image.open(png).size == (1024, 512)
    mp4 = tmp_path / "preview.mp4"
    inspect_inputs(media / "astronaut.png", media / "carphone.mp4", detector=det, num_frames=5, output=mp4)
    with av.open(str(mp4)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (1024, 512)
        assert sum(1 for _ in c.decode(s)) == 5
        assert s.average_rate == Fraction(30000, 1001)
    only = inspect_inputs(media / "astronaut.png", detector=det, output=tmp_path / "p.png")
    assert only.best_frame is None and only.to_json()["frames"] == []
    assert not list(tmp_path.glob(".*incomplete*"))


def test_failures_are_one_line(media, tmp_path, monkeypatch, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(blank)
    args = ["inspect", str(blank), "--landmarks", "dlib", "--best-frame", "0"]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "no face" in err and "blank.png" in err and "--best-frame -2" in err
    code, _, err = run_main(
        monkeypatch, capsys, "inspect", str(tmp_path / "missing.png"), "--landmarks", "dlib"
    )
    assert code == 1 and err.count("\n") == 1 and "missing.png" in err
    not_video = tmp_path / "clip.mp4"
    not_video.write_text("nope")
    code, _, err = run_main(
        monkeypatch, capsys, "inspect", str(media / "astronaut.png"), str(not_video), "--landmarks", "dlib"
    )
    assert code == 1 and err.strip().splitlines()[-1].startswith("error:") and "clip.mp4" in err
