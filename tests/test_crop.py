"""``xportrait crop`` on real portraits and videos (offline dlib backend): geometry of the result
(the face re-detected on the output is centred and of the asked size), several faces, no face,
videos (one steady box, frame rate and audio kept, a vertical 720×1280 clip), and paste back."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import run_main
from PIL import Image
from typer.testing import CliRunner

from xportrait_cli import cli
from xportrait_cli.errors import NoFaceError, UsageError
from xportrait_cli.face import crop as C
from xportrait_cli.face import crop_options as O
from xportrait_cli.face.crop_info import CropInfo, sidecar_path
from xportrait_cli.face.crop_video import crop_video
from xportrait_cli.face.detect import detect_faces, face_geometry
from xportrait_cli.face.landmarks import DlibDetector
from xportrait_cli.face.paste import paste_back
from xportrait_cli.image import load_image
from xportrait_cli.video.probe import probe_output
from xportrait_cli.video.reader import VideoReader

runner = CliRunner()
SIZE = 512


@pytest.fixture(scope="module")
def det() -> DlibDetector:
    return DlibDetector()


@pytest.fixture(scope="module")
def two_faces(media) -> np.ndarray:
    """The X-Portrait source shrunk to 307 px (face ~157 px) left of the astronaut (face ~92 px)."""
    src = load_image(media / "xportrait_source.png")
    small = cv2.resize(src, (307, 307), interpolation=cv2.INTER_AREA)
    left = np.full((512, 307, 3), 128, np.uint8)
    left[100:407] = small
    return np.concatenate([left, load_image(media / "astronaut.png")], axis=1)  # 819×512


def _face(image: np.ndarray, det) -> tuple[np.ndarray, float]:
    faces = detect_faces(image, det)
    assert faces, "no face re-detected in the crop"
    return max((face_geometry(f) for f in faces), key=lambda g: g[1])


def _assert_framed(
    center, face_size, *, size=SIZE, scale=O.DEFAULT_SCALE, vy=O.DEFAULT_VY, tol=0.03, rel=0.1
):
    """Face box centre at (size/2, size/2 − vy·size) within ``tol``·size; face size ≈ size/scale."""
    expect = np.array([size / 2, size / 2 - vy * size])
    assert np.abs(np.asarray(center) - expect).max() <= tol * size, (center, expect)
    assert face_size == pytest.approx(size / scale, rel=rel)


def _read_frames(path: Path, indices) -> np.ndarray:
    with VideoReader(path) as reader:
        return reader.read(indices)


# -- images ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["xportrait_source.png", "astronaut.png"])
def test_crop_portrait_is_centred_and_sized(media, tmp_path, det, name):
    out = tmp_path / "face.png"
    info = C.crop_image(media / name, out, detector=det)
    img = np.asarray(Image.open(out))
    assert img.shape == (SIZE, SIZE, 3)
    _assert_framed(*_face(img, det))
    sidecar = json.loads((tmp_path / "face.crop.json").read_text())
    assert sidecar == json.loads(json.dumps(info.to_json()))
    assert sidecar["faces"] == 1 and sidecar["face"] == 0 and sidecar["video"] is None
    x0, y0, x1, y1 = sidecar["box"]
    assert x1 - x0 == y1 - y0
    # the affine maps the face box into the crop where the crop shows it
    fb = np.asarray(sidecar["face_box"]).reshape(2, 2)
    mapped = fb @ np.asarray(sidecar["affine"])[:, :2].T + np.asarray(sidecar["affine"])[:, 2]
    _assert_framed(mapped.mean(axis=0), (mapped[1] - mapped[0]).max(), tol=0.005, rel=0.01)
    assert np.allclose(
        np.asarray(sidecar["inverse"]), cv2.invertAffineTransform(np.asarray(sidecar["affine"]))
    )
    assert not list(tmp_path.glob(".*incomplete*"))


def test_cli_image_json_and_defaults(media, tmp_path, det, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["crop", str(media / "astronaut.png"), "--landmarks", "dlib"]
    res = runner.invoke(cli.app, [*args, "--json", "--size", "256", "--scale", "3", "--vy", "0"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["faces"] == 1 and data["size"] == 256 and data["scale"] == 3.0 and data["vy"] == 0.0
    assert Path(data["output"]) == tmp_path / "astronaut.crop.png"  # <stem>.crop.png in the cwd
    assert json.loads((tmp_path / "astronaut.crop.json").read_text()) == data
    img = np.asarray(Image.open(tmp_path / "astronaut.crop.png"))
    assert img.shape == (256, 256, 3)
    _assert_framed(*_face(img, det), size=256, scale=3.0, vy=0.0, tol=0.04, rel=0.12)
    # plain mode: the output path alone on stdout, the count on stderr
    res = runner.invoke(cli.app, [*args, "-o", "sub/a.jpg"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(Path("sub/a.jpg"))
    assert "1 face found" in res.stderr
    assert Image.open(tmp_path / "sub/a.jpg").size == (512, 512)
    assert (tmp_path / "sub/a.crop.json").is_file()


def test_cli_defaults_match_library():
    import typer.main

    params = {p.name: p.default for p in typer.main.get_command(cli.app).commands["crop"].params}
    assert params["size"] == O.DEFAULT_SIZE and params["scale"] == O.DEFAULT_SCALE
    assert params["vy"] == O.DEFAULT_VY and params["detect_frames"] == O.DEFAULT_DETECT_FRAMES
    assert params["pad"] == O.PAD_MODES[0]


def test_no_face_exits_1(media, tmp_path, monkeypatch, capsys):
    gradient = tmp_path / "gradient.png"
    ramp = np.linspace(0, 255, 400).astype(np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (300, 1))] * 3, axis=-1)).save(gradient)
    background = tmp_path / "background.png"  # the astronaut's lower right: suit, flag, no face
    Image.fromarray(load_image(media / "astronaut.png")[250:, 250:]).save(background)
    for path in (gradient, background):
        out = tmp_path / f"{path.stem}_out.png"
        code, stdout, err = run_main(
            monkeypatch, capsys, "crop", str(path), "-o", str(out), "--landmarks", "dlib"
        )
        assert code == 1 and stdout == ""
        assert err.startswith("error: no face found in") and str(path) in err and len(err.splitlines()) == 1
        assert not out.exists() and not sidecar_path(out).exists()


def test_bad_options_exit_2(media, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, "crop", str(media / "astronaut.png"), "--pad", "mirror", "--landmarks", "dlib"
    )
    assert code == 2 and "--pad" in err
    with pytest.raises(UsageError, match="--scale"):
        C.crop_portrait(media / "astronaut.png", O.CropOptions(scale=0.5))
    with pytest.raises(UsageError, match="MP4"):
        crop_video(media / "carphone.mp4", tmp_path / "x.mov")


def test_two_faces(two_faces, tmp_path, det, monkeypatch, capsys):
    largest = C.crop_portrait(two_faces, detector=det)
    assert largest.faces == 2 and largest.info.face == 0  # the left, larger face
    assert largest.info.face_box[2] < 307
    _assert_framed(*_face(largest.image, det))
    right = C.crop_portrait(two_faces, O.CropOptions(face=1), detector=det)  # 0-based, left to right
    assert right.faces == 2 and right.info.face == 1 and right.info.face_box[0] > 307
    _assert_framed(*_face(right.image, det), tol=0.04, rel=0.12)
    # through the CLI: the count is reported, and an index past the last face is a usage error
    path = tmp_path / "two.png"
    Image.fromarray(two_faces).save(path)
    out = tmp_path / "two.crop.png"
    res = runner.invoke(
        cli.app, ["crop", str(path), "-o", str(out), "--face", "1", "--json", "--landmarks", "dlib"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["faces"] == 2 and data["face"] == 1 and data["box"] == right.info.box.tolist()
    assert out.is_file() and (tmp_path / "two.crop.json").is_file()
    code, _, err = run_main(monkeypatch, capsys, "crop", str(path), "--face", "2", "--landmarks", "dlib")
    assert code == 2 and "has 2 faces" in err and "0 to 1 from left to right" in err


# -- paste back -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["xportrait_source.png", "astronaut.png"])
def test_paste_back_round_trip(media, tmp_path, det, name):
    original = load_image(media / name)
    result = C.crop_portrait(media / name, detector=det)
    (pasted,) = list(paste_back([result.image], result, original))
    assert pasted.shape == original.shape and pasted.dtype == np.uint8
    x0, y0, x1, y1 = np.maximum(result.box, 0)
    inside = np.abs(pasted[y0:y1, x0:x1].astype(int) - original[y0:y1, x0:x1])
    assert inside.mean() < 2.0 and np.percentile(inside, 99) <= 16
    outside = np.ones(original.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (pasted[outside] == original[outside]).all()
    # from the sidecar, a hard edge, and frames of another size
    out = tmp_path / "c.png"
    C.crop_image(media / name, out, detector=det)
    half = cv2.resize(result.image, (256, 256), interpolation=cv2.INTER_AREA)
    frames = list(paste_back(iter([result.image, half]), sidecar_path(out), original, feather=0))
    assert len(frames) == 2
    assert np.abs(frames[1][y0:y1, x0:x1].astype(int) - original[y0:y1, x0:x1]).mean() < 4.0
    # a different animated square lands in the box: grey inside, the original at the feathered edge
    grey = np.full_like(result.image, 200)
    (g,) = list(paste_back([grey], result, original, feather=32))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    assert (g[cy, cx] == 200).all()
    with pytest.raises(ValueError, match="crop was taken from"):
        next(paste_back([grey], result, original[:100]))


# -- videos ---------------------------------------------------------------------------------------
def _check_video_crop(out: Path, src: Path, crop: CropInfo, det, fps: Fraction, *, tol=0.06):
    """Size, frame count and rate of the MP4; on its first, middle and last frames the face found in
    the crop is where the clip's affine puts the face found in the source frame (within 3 %), the
    faces' median size is ≈ size/scale and their median centre near the framed position (the head
    moves within the one box, hence ``tol``)."""
    n = crop.video["frames"]
    stream = probe_output(out)
    assert (stream.width, stream.height, stream.frames, stream.fps) == (SIZE, SIZE, n, fps)
    indices = [0, n // 2, n - 1]
    a = crop.affine
    geo = []
    for cropped, original in zip(_read_frames(out, indices), _read_frames(src, indices), strict=True):
        (c, f), (c0, f0) = _face(cropped, det), _face(original, det)
        assert np.abs(c - (a[:, :2] @ c0 + a[:, 2])).max() <= 0.03 * SIZE
        assert f == pytest.approx(f0 * a[0, 0], rel=0.12)
        geo.append((c, f))
    center = np.median([g[0] for g in geo], axis=0)
    _assert_framed(center, float(np.median([g[1] for g in geo])), tol=tol, rel=0.12)
    return stream


def test_cli_video(media, tmp_path, det):
    out = tmp_path / "drive.mp4"
    res = runner.invoke(
        cli.app,
        ["crop", str(media / "xportrait_driving.mp4"), "-o", str(out), "--json", "--detect-frames", "8",
         "--landmarks", "dlib"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["kind"] == "video" and data["faces"] == 1
    assert data["video"] == {
        "fps": "12000/1001",
        "frames": 60,
        "frames_sampled": 8,
        "frames_with_face": 8,
        "reference_frame": 0,
        "audio": False,
    }
    assert json.loads((tmp_path / "drive.crop.json").read_text()) == data
    _check_video_crop(
        out, media / "xportrait_driving.mp4", CropInfo.from_json(data), det, Fraction(12000, 1001)
    )
    assert not list(tmp_path.glob(".*incomplete*"))


def test_video_audio_kept(media, tmp_path, det):
    out = tmp_path / "talk.mp4"
    events = []
    info = crop_video(
        media / "talking_aac.mp4", out, O.CropOptions(detect_frames=8), detector=det, events=events.append
    )
    assert info.fps == Fraction(25) and info.video["audio"] is True
    stream = _check_video_crop(out, media / "talking_aac.mp4", info, det, Fraction(25), tol=0.1)
    assert stream.audio_codec == "aac" and stream.audio_duration == pytest.approx(183 / 25, abs=0.05)
    kinds = [(e.kind, getattr(e, "stage", None)) for e in events]
    assert kinds[0] == ("stage_started", "landmarks") and kinds[-1] == ("stage_finished", "encode")
    assert events[-2].kind == "frames_written" and events[-2].count == 183
    # one box for the clip: every re-detected face lies inside the crop
    for f in _read_frames(out, range(0, 183, 30)):
        lmk = max(detect_faces(f, det), key=lambda p: face_geometry(p)[1])
        assert lmk.min() > 0 and lmk.max() < SIZE


def test_small_video_black_padding(media, tmp_path, det):
    out = tmp_path / "car.mp4"
    info = crop_video(media / "carphone.mp4", out, O.CropOptions(pad="black", detect_frames=8), detector=det)
    _check_video_crop(out, media / "carphone.mp4", info, det, Fraction(30000, 1001))
    x0, y0, x1, y1 = info.box
    assert y0 < 0, "the box should leave the 176×144 frame at the top"
    rows = int(-y0 * SIZE / (y1 - y0))  # crop rows above the frame
    frame = _read_frames(out, [0])[0]
    assert frame[: max(rows - 3, 1)].mean() < 12  # black (H.264 blurs the border by a pixel or two)


def test_vertical_video(media, tmp_path, det):
    """A 720×1280 clip: the 512² driving video placed off centre on a grey canvas (PyAV)."""
    src, vertical = media / "xportrait_driving.mp4", tmp_path / "vertical.mp4"
    ox, oy, n = 150, 620, 20
    with av.open(str(src)) as inp, av.open(str(vertical), "w") as outc:
        stream = outc.add_stream("libx264", rate=Fraction(12000, 1001))
        stream.width, stream.height, stream.pix_fmt = 720, 1280, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for k, frame in enumerate(inp.decode(video=0)):
            if k == n:
                break
            canvas = np.full((1280, 720, 3), 90, np.uint8)
            canvas[oy : oy + 512, ox : ox + 512] = frame.to_ndarray(format="rgb24")
            vf = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            vf.pts = k
            for packet in stream.encode(vf):
                outc.mux(packet)
        for packet in stream.encode(None):
            outc.mux(packet)
    out = tmp_path / "vertical.crop.mp4"
    info = crop_video(vertical, out, O.CropOptions(detect_frames=6), detector=det)
    assert info.source_size == (720, 1280) and info.video["frames"] == n
    _check_video_crop(out, vertical, info, det, Fraction(12000, 1001))
    # the face (and so the box) is found where the clip was placed on the canvas
    x0, y0, x1, y1 = info.face_box
    assert ox < x0 < x1 < ox + 512 and oy < y0 < y1 < oy + 512


def test_no_face_video(tmp_path, det):
    blank = tmp_path / "blank.mp4"
    from xportrait_cli.video.writer import write_video

    write_video(blank, np.full((2, 128, 128, 3), 100, np.uint8), 25)
    with pytest.raises(NoFaceError, match="2 frames searched"):
        crop_video(blank, tmp_path / "out.mp4", detector=det)
    assert not (tmp_path / "out.mp4").exists()


def test_paths():
    assert sidecar_path("a/x.crop.png") == Path("a/x.crop.json")
    assert sidecar_path("x.png") == Path("x.crop.json")
    assert C.default_output("d/clip.MOV", "o") == Path("o/clip.crop.mp4")
    assert C.default_output("d/p.jpg", "o") == Path("o/p.crop.png")
    box = C.box_for_face((100.0, 100.0), 50.0, 2.0, 0.0)
    assert box.tolist() == [50, 50, 150, 150]
    m = CropInfo("image", (200, 200), 100, box, 1, 0, np.zeros(4), 2.0, 0.0, "edge", "dlib").affine
    assert np.allclose(m @ [149.5, 49.5, 1], [99.5, -0.5])  # box edges → crop edges (pixel centres)
