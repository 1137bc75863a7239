"""The checkpoint on the Hugging Face Hub: its identity, download into the hub cache, verification.

huggingface_hub does the transfer (``hf_hub_download``: resume with Range requests, ``HF_ENDPOINT``,
``HF_TOKEN``, its cache layout); this module adds the SHA-256 check against the Hub's LFS ``ETag``
(one re-download on a mismatch), the offline fallback to the cached copy, and one-line errors.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xportrait_cli.errors import DownloadError
from xportrait_cli.files import sha256_file
from xportrait_cli.weights.registry import (
    FILENAME,
    REPO_ID,
    ProgressCallback,
    cached_checkpoint,
    read_manifest,
    stat_key,
    update_manifest,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Remote:
    """The checkpoint as the Hub describes it.

    Attributes:
        url: its resolve URL (offline: the cached file's path).
        sha256: the LFS SHA-256 (``None``: the ETag is not one, the file is not in LFS).
        size: bytes, ``None`` when the Hub gives no size.
        commit: the commit the revision resolves to.
    """

    url: str
    sha256: str | None
    size: int | None
    commit: str


class _HubProgress:
    """A tqdm stand-in for huggingface_hub's ``tqdm_class``: forwards byte counts to a callback."""

    def __init__(self, callback: ProgressCallback, label: str, *args: Any, **kwargs: Any) -> None:
        self.callback, self.label = callback, label
        self.total = kwargs.get("total")
        self.n = kwargs.get("initial", 0) or 0
        self.callback(self.label, self.n, self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.callback(self.label, self.n, self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> _HubProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hub_error(exc: Exception, revision: str, endpoint: str) -> DownloadError:
    """A one-line :class:`DownloadError` for a huggingface_hub failure, naming the fix."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{endpoint}/{REPO_ID}"
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(f"revision {revision!r} not found in {where}", hint="check --revision")
    if isinstance(exc, EntryNotFoundError):
        return DownloadError(
            f"{FILENAME} not found in {where} at revision {revision!r}",
            hint="check --revision, or HF_ENDPOINT if you use a mirror",
        )
    if isinstance(exc, GatedRepoError):
        return DownloadError(f"{where} is gated: access refused", hint="set HF_TOKEN to a token with access")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(
            f"repository {where} not found or not accessible", hint="check HF_ENDPOINT and HF_TOKEN"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return DownloadError(
        f"cannot download {FILENAME} from {where}: {type(exc).__name__}: {first}",
        hint="check your connection, HF_ENDPOINT and HF_TOKEN; run again to retry",
    )


def remote_checkpoint(revision: str, endpoint: str, token: str | bool | None) -> Remote:
    """Ask the Hub for the checkpoint's size, SHA-256 and commit (one HEAD request).

    Raises:
        DownloadError: the Hub refuses or cannot be reached, or the server is not a Hub.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(REPO_ID, FILENAME, revision=revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    except Exception as exc:
        raise hub_error(exc, revision, endpoint) from exc
    if not meta.commit_hash or not meta.etag:
        raise DownloadError(
            f"{url} does not look like a Hugging Face Hub (no X-Repo-Commit or ETag header)",
            hint="check HF_ENDPOINT",
        )
    etag = meta.etag.lower()
    return Remote(url, etag if _SHA256.match(etag) else None, meta.size, meta.commit_hash)


def offline_remote(error: DownloadError, cache: Path, revision: str) -> Remote:
    """The cached checkpoint's identity when the Hub cannot be reached; re-raises ``error`` otherwise
    (a refusal, or nothing cached)."""
    network_errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for client in ("httpx2", "httpx"):  # huggingface_hub 2.x / 1.x HTTP clients
        with contextlib.suppress(ImportError):
            network_errors.append(importlib.import_module(client).TransportError)
    cached = cached_checkpoint(cache, revision)
    if cached is None or not isinstance(error.__cause__, tuple(network_errors)):
        raise error
    blob = cached.resolve()
    sha = blob.name if _SHA256.match(blob.name) else None
    return Remote(str(cached), sha, blob.stat().st_size, cached.parent.name)


def _remove_cached(pointer: Path) -> None:
    """Delete a cached file: the snapshot entry and the blob it points to."""
    blob = pointer.resolve()
    for path in (pointer, blob):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def verify_checkpoint(
    path: Path, expected: str | None, progress: ProgressCallback | None, *, use_record: bool = True
) -> tuple[bool, str, str | None]:
    """Check a cached checkpoint's SHA-256: ``(valid, detail, sha256)``.

    ``expected`` defaults to the blob's name when it is a SHA-256 (huggingface_hub names LFS blobs
    by it). With ``use_record`` a file whose path and size/mtime match the manifest's record of an
    earlier verification is not hashed again.
    """
    blob = path.resolve()
    if expected is None and _SHA256.match(blob.name):
        expected = blob.name
    record = read_manifest().get("checkpoint", {})
    if (
        use_record
        and expected is not None
        and record.get("sha256") == expected
        and record.get("path") == str(path)
        and record.get("stat") == stat_key(blob)
    ):
        return True, f"sha256 {expected[:12]}… (verified earlier)", expected
    report = (lambda done, total: progress("verify", done, total)) if progress else None
    actual = sha256_file(blob, report)
    if expected is None:
        return True, f"sha256 {actual[:12]}… (the hub gave no SHA-256 to compare)", actual
    if actual != expected:
        return False, f"sha256 mismatch: expected {expected}, got {actual}", actual
    return True, f"sha256 {expected[:12]}… verified", actual


def download_checkpoint(
    *,
    remote: Remote,
    revision: str,
    cache_dir: Path,
    endpoint: str,
    token: str | bool | None,
    progress: ProgressCallback | None,
) -> tuple[Path, str]:
    """Download (or find in the cache) and verify the checkpoint: ``(path, detail)``.

    A checksum mismatch deletes the cached file and downloads once more; the verified file is
    recorded in the manifest.

    Raises:
        DownloadError: a Hub failure, or a second mismatch (the corrupt file is removed).
    """
    from huggingface_hub import hf_hub_download

    tqdm_class = functools.partial(_HubProgress, progress, "download checkpoint") if progress else None
    detail = ""
    for attempt in range(2):
        try:
            path = Path(
                hf_hub_download(
                    REPO_ID,
                    FILENAME,
                    revision=revision,
                    cache_dir=str(cache_dir),
                    endpoint=endpoint,
                    token=token,
                    tqdm_class=tqdm_class,
                )
            )
        except Exception as exc:
            raise hub_error(exc, revision, endpoint) from exc
        valid, detail, sha = verify_checkpoint(path, remote.sha256, progress, use_record=attempt == 0)
        if valid:
            update_manifest(
                checkpoint={
                    "path": str(path),
                    "repo_id": REPO_ID,
                    "filename": FILENAME,
                    "revision": revision,
                    "commit": remote.commit,
                    "sha256": sha,
                    "stat": stat_key(path.resolve()),
                }
            )
            return path, detail
        _remove_cached(path)
    raise DownloadError(
        f"{FILENAME} from {endpoint}/{REPO_ID} failed verification twice ({detail}); "
        "the corrupt file was removed",
        hint="run `xportrait download-weights` again later, or check HF_ENDPOINT if you use a mirror",
    )
