"""Files that are never half-written: write under a temporary name beside the target, then rename.

One convention for every file or folder xportrait writes (huggingface_hub's): the temporary name is
``.<name>.<8 hex>.incomplete<suffix>`` in the target's own folder, so

- the final :func:`os.replace` is atomic (same file system) and a crash leaves only a hidden
  ``*.incomplete*`` entry, never a half-written file at the final path;
- the suffix is kept, so writers that pick a format from the extension (PyAV's ``.mp4``, numpy's
  ``.npy``, Pillow's ``.png``) still see it;
- two processes never share a temporary name (the random part), and a resumable download can find
  its own partial file again with :func:`partial_files`.

:func:`sha256_file` is the one streamed content digest (job fingerprints, checkpoint verification).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

INCOMPLETE = ".incomplete"
_HASH_BLOCK = 8 << 20


def temp_path_for(path: Path) -> Path:
    """A fresh, unique temporary name beside ``path``: ``.<name>.<8 hex>.incomplete<suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{INCOMPLETE}{path.suffix}")


def partial_files(path: Path) -> list[Path]:
    """Temporary files left beside ``path`` by :func:`temp_path_for` (e.g. a download cut off by a
    crash), largest first."""
    path = Path(path)
    found = path.parent.glob(f".{path.name}.*{INCOMPLETE}{path.suffix}")
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_size, reverse=True)


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree if it exists (no error when it does not)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_path(tmp: Path, path: Path) -> None:
    """Move ``tmp`` (a file or a folder) to ``path``, replacing what is there.

    A file replaces a file atomically. A folder replaces an existing folder by moving the old one
    aside first (two renames), then deleting it; the target is never a mixture of the two.

    Raises:
        IsADirectoryError: ``tmp`` is a file and ``path`` an existing folder (callers check first).
    """
    tmp, path = Path(tmp), Path(path)
    if tmp.is_dir() and path.is_dir():
        old = temp_path_for(path)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write a file or build a folder at.

    On normal exit it is moved to ``path`` (:func:`replace_path`); on any exception (a full disk,
    Ctrl-C) it is removed and the exception propagates, so ``path`` is either untouched or complete.

    Example::

        with atomic_write(out) as tmp:
            np.save(tmp, array)
    """
    tmp = temp_path_for(path)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    try:
        replace_path(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None) -> str:
    """SHA-256 hex digest of a file's content, read in 8 MiB blocks (a 12 GB checkpoint never
    sits in memory); ``progress(done, total)`` in bytes after each block."""
    digest = hashlib.sha256()
    total = os.stat(path).st_size
    done = 0
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()
