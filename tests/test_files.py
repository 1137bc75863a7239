"""files.atomic_write: a target is either untouched or complete, and no temporary file is left."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from xportrait_cli.files import (
    atomic_write,
    partial_files,
    temp_path_for,
    write_bytes_atomic,
    write_text_atomic,
)


def test_temp_name_is_hidden_unique_and_keeps_the_suffix(tmp_path):
    a, b = temp_path_for(tmp_path / "out.mp4"), temp_path_for(tmp_path / "out.mp4")
    assert a != b
    assert a.parent == tmp_path and a.name.startswith(".out.mp4.") and a.suffix == ".mp4"
    assert ".incomplete" in a.name


def test_success_replaces_the_target_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "latents.npy"
    write_bytes_atomic(target, b"old")
    with atomic_write(target) as tmp:
        np.save(tmp, np.arange(5))  # numpy keeps a name that already ends in .npy
    assert np.load(target).tolist() == [0, 1, 2, 3, 4]
    assert sorted(os.listdir(tmp_path)) == ["latents.npy"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_keeps_the_old_target_and_removes_the_temporary(tmp_path, error):
    target = tmp_path / "fingerprint.json"
    write_text_atomic(target, "old")
    with pytest.raises(type(error)), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise error
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["fingerprint.json"]


def test_a_folder_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "converted"
    with atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("1")
    with atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("2")
    assert sorted(os.listdir(target)) == ["b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["converted"]


def test_partial_files_finds_leftovers_largest_first(tmp_path):
    target = tmp_path / "model.th"
    small, large = temp_path_for(target), temp_path_for(target)
    small.write_bytes(b"x")
    large.write_bytes(b"xxxx")
    temp_path_for(tmp_path / "other.th").write_bytes(b"xxxxxxxx")
    assert partial_files(target) == [large, small]


def test_a_full_disk_leaves_no_partial_file(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with pytest.raises(OSError) as info:
            write_bytes_atomic(mount / "big.bin", b"\0" * 1_000_000)
        assert info.value.errno == 28
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)
