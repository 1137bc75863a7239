"""`xportrait download-weights` against a fake Hub on 127.0.0.1 (no test touches the internet)."""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import typing
from pathlib import Path

import pytest
import torch
from fakehub import FakeHub, FakeHubServer, file_sha256
from typer.testing import CliRunner

from xportrait_cli import cli, cli_tools
from xportrait_cli.errors import DownloadError, UsageError, WeightsMissingError
from xportrait_cli.files import temp_path_for
from xportrait_cli.weights import check, download, registry
from xportrait_cli.weights.registry import FILENAME, LANDMARK_FILES, REPO_ID

FAN, S3FD = LANDMARK_FILES["fan"], LANDMARK_FILES["s3fd"]


def _tiny_checkpoint() -> bytes:
    """A small official-format pickle: ``{'state_dict': {...}}`` of tensors (not a real model)."""
    buffer = io.BytesIO()
    state = {f"model.diffusion_model.t{i}": torch.arange(4096, dtype=torch.float32) + i for i in range(40)}
    torch.save({"state_dict": state}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    return _tiny_checkpoint()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint_bytes: bytes):
    """A running fake Hub + mirror, with every cache and home pointed into ``tmp_path``."""
    monkeypatch.setenv("XPORTRAIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("XPORTRAIT_MODEL", "HF_TOKEN", "XPORTRAIT_LANDMARK_URL", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeHub(
        files={REPO_ID: {FILENAME: checkpoint_bytes, "LICENSE-MODEL.txt": b"license"}},
        mirror={FAN: b"F" * 300_000, S3FD: b"S" * 200_000},
    )
    with FakeHubServer(fake) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        monkeypatch.setenv("XPORTRAIT_LANDMARK_URL", running.url + "/mirror")
        yield running


def _landmark_dir(tmp_path: Path) -> Path:
    return tmp_path / "torch" / "hub" / "checkpoints"


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".incomplete" in p.name] if folder.exists() else []


# -- library ----------------------------------------------------------------------------------------
def test_landmark_names_match_face_alignment() -> None:
    face_alignment = pytest.importorskip("face_alignment")
    from face_alignment.detection.sfd import sfd_detector

    assert face_alignment.api.models_urls["2DFAN-4"] == f"{registry.DEFAULT_LANDMARK_URL}/{FAN}"
    assert sfd_detector.models_urls["s3fd"] == f"{registry.DEFAULT_LANDMARK_URL}/{S3FD}"


def test_download_without_conversion(hub: FakeHub, tmp_path: Path, checkpoint_bytes: bytes) -> None:
    report = download.download_weights(convert=False)
    assert report.ok
    ckpt = report["checkpoint"]
    assert ckpt.status == "downloaded"
    assert ckpt.path.read_bytes() == checkpoint_bytes
    assert ckpt.path.is_relative_to(tmp_path / "hub")
    assert "verified" in ckpt.detail
    assert report["converted"].status == "skipped"
    for role, name in LANDMARK_FILES.items():
        assert report[role].status == "downloaded"
        assert report[role].path == _landmark_dir(tmp_path) / name
        assert report[role].path.read_bytes() == hub.mirror[name]
    assert registry.default_model_path() == ckpt.path
    assert report.model_path == ckpt.path
    assert _leftovers(tmp_path) == []

    # a second run finds everything and downloads nothing
    gets = len(hub.ranges(""))
    again = download.download_weights(convert=False)
    assert [i.status for i in again.items] == ["ok", "skipped", "ok", "ok"]
    assert len(hub.ranges("")) == gets


def test_offline_run_uses_the_cache(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    first = download.download_weights(convert=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    again = download.download_weights(convert=False)
    assert again.ok
    assert again["checkpoint"].path == first["checkpoint"].path


def test_unreachable_hub_without_cache_is_a_clear_error(hub: FakeHub, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(DownloadError, match="cannot download"):
        download.download_weights(convert=False)


def test_wrong_checksum_is_refused_and_removed(hub: FakeHub, tmp_path: Path) -> None:
    hub.wrong_sha.add(FILENAME)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download.download_weights(convert=False, landmarks=False)
    assert not [p for p in (tmp_path / "hub").rglob(FILENAME) if p.exists()]
    assert not [p for p in (tmp_path / "hub").rglob("blobs/*") if p.is_file()]
    assert len(hub.ranges(FILENAME)) == 2  # one re-download before giving up


def test_interrupted_checkpoint_transfer_resumes(
    hub: FakeHub, checkpoint_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # huggingface_hub writes 10 MB chunks: make them small so that the cut lands after some were kept
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub.cut_first.add(FILENAME)
    report = download.download_weights(convert=False, landmarks=False)
    assert report["checkpoint"].path.read_bytes() == checkpoint_bytes
    ranges = hub.ranges(FILENAME)
    assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes=")
    assert int(ranges[-1][6:-1]) > 0


def test_interrupted_landmark_transfer_resumes(hub: FakeHub, tmp_path: Path) -> None:
    hub.cut_first.add(f"/mirror/{FAN}")
    report = download.download_weights(convert=False)
    assert report[("fan")].path.read_bytes() == hub.mirror[FAN]
    assert hub.ranges(FAN) == [None, f"bytes={len(hub.mirror[FAN]) // 2}-"]
    assert _leftovers(tmp_path) == []


def test_landmark_partial_from_an_earlier_run_resumes(hub: FakeHub, tmp_path: Path) -> None:
    folder = _landmark_dir(tmp_path)
    folder.mkdir(parents=True)
    temp_path_for(folder / S3FD).write_bytes(hub.mirror[S3FD][:50_000])
    report = download.download_weights(convert=False)
    assert report["s3fd"].path.read_bytes() == hub.mirror[S3FD]
    assert hub.ranges(S3FD) == ["bytes=50000-"]
    assert _leftovers(tmp_path) == []


def test_missing_checkpoint_is_a_clear_error(hub: FakeHub) -> None:
    del hub.files[REPO_ID][FILENAME]
    with pytest.raises(DownloadError, match=f"{FILENAME} not found"):
        download.download_weights(convert=False)


def test_missing_revision_is_a_clear_error(hub: FakeHub) -> None:
    with pytest.raises(DownloadError, match="revision 'v9' not found"):
        download.download_weights(revision="v9", convert=False)


def test_missing_landmark_file_names_the_mirror(hub: FakeHub) -> None:
    del hub.mirror[S3FD]
    with pytest.raises(DownloadError, match="404") as info:
        download.download_weights(convert=False)
    assert "--landmark-url" in info.value.hint


def test_not_enough_disk_space_fails_before_downloading(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(download, "_free_bytes", lambda path: 1000)
    with pytest.raises(DownloadError, match="not enough free disk space"):
        download.download_weights(convert=False)
    assert hub.ranges("") == []  # HEAD requests only
    assert not list((tmp_path / "hub").rglob(FILENAME))


def test_token_is_sent(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_testtoken")
    download.download_weights(convert=False, landmarks=False)
    assert "Bearer hf_testtoken" in hub.authorizations


def test_dry_run_lists_sizes_and_writes_nothing(
    hub: FakeHub, tmp_path: Path, checkpoint_bytes: bytes
) -> None:
    report = download.download_weights(dry_run=True)
    assert report["checkpoint"].status == "would-download"
    assert report["checkpoint"].size == len(checkpoint_bytes)
    assert report["converted"].status == "would-download"
    assert report["fan"].size == len(hub.mirror[FAN])
    assert report["fan"].path == _landmark_dir(tmp_path) / FAN
    assert hub.ranges("") == []
    assert not (tmp_path / "hub").exists() and not _landmark_dir(tmp_path).exists()
    assert not (tmp_path / "home").exists()


def test_check_reports_missing_then_ok_then_corrupt(hub: FakeHub) -> None:
    before = check.check_weights(convert=False)
    assert not before.ok
    assert before["checkpoint"].status == "missing" and before["fan"].status == "missing"
    download.download_weights(convert=False)
    after = check.check_weights(convert=False)
    assert after.ok, after.items
    assert not check.check_weights(convert=True).ok  # no conversion yet
    blob = after["checkpoint"].path.resolve()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(1_000_000_000, 1_000_000_000))  # the change must show in the recorded stat
    corrupt = check.check_weights(convert=False)
    assert corrupt["checkpoint"].status == "invalid"
    assert "mismatch" in corrupt["checkpoint"].detail


def test_default_model_path(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsMissingError) as info:
        registry.default_model_path()
    assert "download-weights" in info.value.hint
    monkeypatch.setenv("XPORTRAIT_MODEL", str(tmp_path / "nope"))
    with pytest.raises(WeightsMissingError, match="XPORTRAIT_MODEL"):
        registry.default_model_path()
    mine = tmp_path / "mine.th"
    mine.write_bytes(b"x")
    monkeypatch.setenv("XPORTRAIT_MODEL", str(mine))
    assert registry.default_model_path() == mine


# -- command line -----------------------------------------------------------------------------------
def test_cli_check_dry_run_and_download(hub: FakeHub, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli.app, ["download-weights", "--check", "--no-convert"])
    assert result.exit_code == 1
    assert "checkpoint\tmissing" in result.stdout

    result = runner.invoke(cli.app, ["download-weights", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "checkpoint\twould-download" in result.stdout

    result = runner.invoke(cli.app, ["download-weights", "--no-convert", "--cache-dir", str(tmp_path / "c2")])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert str(tmp_path / "c2") in lines["checkpoint"]
    assert str(_landmark_dir(tmp_path) / FAN) in lines["fan"]
    assert str(tmp_path / "c2") in lines["model"]

    result = runner.invoke(
        cli.app, ["download-weights", "--check", "--no-convert", "--cache-dir", str(tmp_path / "c2")]
    )
    assert result.exit_code == 0, result.output
    assert "checkpoint\tok" in result.stdout


def test_cli_errors_are_one_line(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    del hub.files[REPO_ID][FILENAME]
    monkeypatch.setattr(sys, "argv", ["xportrait", "download-weights", "--no-convert"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and FILENAME in err[0]

    monkeypatch.setattr(sys, "argv", ["xportrait", "download-weights", "--check"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1
    assert "missing or invalid: checkpoint (missing)" in capsys.readouterr().err

    monkeypatch.setattr(sys, "argv", ["xportrait", "download-weights", "--dtype", "fp8"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2


def test_cli_landmark_url_option(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XPORTRAIT_LANDMARK_URL")
    hub.mirror = {}
    runner = CliRunner()
    other = FakeHub(mirror={FAN: b"f" * 1000, S3FD: b"s" * 1000})
    with FakeHubServer(other) as mirror:
        result = runner.invoke(
            cli.app, ["download-weights", "--no-convert", "--landmark-url", mirror.url + "/mirror/"]
        )
    assert result.exit_code == 0, result.output
    assert (_landmark_dir(tmp_path) / FAN).read_bytes() == b"f" * 1000


# -- conversion (the real converter on the tiny golden checkpoint) ----------------------------------
def test_download_and_convert_golden_checkpoint(golden: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XPORTRAIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("XPORTRAIT_MODEL", raising=False)
    checkpoint = golden / "tiny_xportrait.th"
    fake = FakeHub(files={REPO_ID: {FILENAME: checkpoint}})
    with FakeHubServer(fake) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        seen: list[str] = []
        report = download.download_weights(
            landmarks=False, dtype="fp32", progress=lambda label, done, total: seen.append(label)
        )
    assert report.ok
    assert file_sha256(report["checkpoint"].path) == file_sha256(checkpoint)
    folder = report["converted"].path
    assert report["converted"].status == "converted"
    assert folder.name == f"x-portrait-{fake.commit[:12]}-fp32"
    assert (folder / "model_index.json").is_file() and (folder / "vae" / "config.json").is_file()
    assert "convert to fp32" in seen and "download checkpoint" in seen
    assert registry.default_model_path() == folder
    assert check.check_weights(landmarks=False, dtype="fp32").ok
    assert not check.check_weights(landmarks=False, dtype="fp16").ok
    from xportrait_cli.pipeline import XPortraitPipeline

    pipe = XPortraitPipeline.from_pretrained(folder)
    assert pipe.unet.dtype == torch.float32


def test_download_weights_converts_an_old_format_folder_again(
    golden: Path, tmp_path: Path, monkeypatch
) -> None:
    """A folder of the old format (config.json + networks.safetensors) at the target is stale: it is
    converted again into the new layout."""
    monkeypatch.setenv("XPORTRAIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("XPORTRAIT_MODEL", raising=False)
    fake = FakeHub(files={REPO_ID: {FILENAME: golden / "tiny_xportrait.th"}})
    old = registry.converted_dir(registry.model_dir(), fake.commit, "fp32")
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"format": registry.OLD_FORMAT, "version": 1}))
    (old / "networks.safetensors").write_bytes(b"old")
    assert registry.is_old_format(old) and not registry.is_converted(old)
    with FakeHubServer(fake) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        report = download.download_weights(landmarks=False, dtype="fp32")
    assert report["converted"].status == "converted" and report["converted"].path == old
    assert registry.is_converted(old) and not (old / "networks.safetensors").exists()


def test_cuda_default_dtype_is_the_downloaded_one() -> None:
    """One truth: the folder `download-weights` converts by default is the dtype `animate --dtype auto`
    runs on CUDA (no cast on every run), and both `--help` texts say so."""
    import inspect

    from xportrait_cli.jobs.networks import resolve_dtype
    from xportrait_cli.option_names import help_text

    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    assert names[resolve_dtype("auto", torch.device("cuda"))] == registry.CUDA_DTYPE
    assert names[resolve_dtype("auto", torch.device("cpu"))] == "fp32"
    for function in (download.download_weights, check.check_weights, download.run):
        assert inspect.signature(function).parameters["dtype"].default == registry.CUDA_DTYPE
    assert (
        inspect.signature(cli_tools.download_weights_command).parameters["dtype"].default
        == registry.CUDA_DTYPE
    )
    hints = typing.get_type_hints(cli_tools.download_weights_command, include_extras=True)
    (option,) = hints["dtype"].__metadata__
    assert "what animate runs on CUDA" in option.help
    assert f"{registry.CUDA_DTYPE} on CUDA" in help_text("dtype")


# -- one home per fact -------------------------------------------------------------------------------
def test_dtype_names_are_one_map_checked_once(hub: FakeHub) -> None:
    """One name -> torch.dtype map (the conversion and `animate --dtype`), one check raising
    UsageError (exit 2) in the library, before any request."""
    from xportrait_cli.jobs.runner import resolve_dtype

    expected = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    assert {name: registry.torch_dtype(name) for name in registry.DTYPES} == expected
    for name, dtype in expected.items():
        assert resolve_dtype(name, torch.device("cpu")) == dtype
    verbs = (download.download_weights, check.check_weights, download.run)
    calls = [functools.partial(verb, dtype="fp8") for verb in verbs]
    for call in (*calls, functools.partial(registry.torch_dtype, "fp8")):
        with pytest.raises(UsageError, match="'fp8' is not one of fp16, bf16, fp32") as info:
            call()
        assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="--check and --dry-run"):
        download.run(check=True, dry_run=True)
    assert hub.requests == []


def test_one_converted_folder_rule(tmp_path: Path) -> None:
    """`animate` (the loader) and `download-weights` (check, default model) ask the same question:
    a model_index.json (diffusers' pipeline layout), not any config.json or .safetensors."""
    from xportrait_cli.pipeline import loading

    assert loading.registry.is_converted is registry.is_converted
    folder = tmp_path / "x-portrait-0123456789ab-fp16"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "other.safetensors").write_bytes(b"x")
    assert not registry.is_converted(folder) and not registry.is_old_format(folder)
    (folder / registry.MODEL_INDEX).write_text("{}")
    assert registry.is_converted(folder)


def test_sha256_file_is_the_one_digest(tmp_path: Path) -> None:
    """The job fingerprint and the checkpoint check stream the same digest; it matches hashlib's
    and reports progress up to the file's size."""
    import hashlib

    from xportrait_cli.files import sha256_file
    from xportrait_cli.jobs import fingerprint

    path = tmp_path / "blob"
    data = os.urandom(9 << 20)  # more than one 8 MiB block
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    digest = sha256_file(path, lambda done, total: seen.append((done, total)))
    assert digest == hashlib.sha256(data).hexdigest()
    assert seen[-1] == (len(data), len(data)) and len(seen) == 2
    assert fingerprint.file_digest is sha256_file


def test_registry_imports_without_torch_or_models() -> None:
    """face/ and the CLI's option defaults read the registry; it must not load torch or the networks."""
    import subprocess

    code = (
        "import sys, xportrait_cli.weights.registry as r, xportrait_cli.face.landmarks as f; "
        "bad = [m for m in ('torch', 'xportrait_cli.models', 'diffusers') if m in sys.modules]; "
        "assert not bad, bad; assert f.LANDMARK_FILES is r.LANDMARK_FILES"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
