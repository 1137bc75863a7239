"""Weight registry and download: the X-Portrait checkpoint, its converted form, the landmark weights.

What lives where:

* **Checkpoint** ``model_state-415001.th`` (12.3 GB, fp32 pickle) from the Hugging Face repo
  :data:`REPO_ID`, in the huggingface_hub cache (``--cache-dir``, else ``HF_HUB_CACHE``, else
  ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``). Downloaded by :func:`hf_hub_download`, which
  resumes an interrupted transfer with Range requests and honours ``HF_ENDPOINT`` and ``HF_TOKEN``
  (both read when the function is called, not when huggingface_hub is imported). Verified against the
  Hub's SHA-256 (the LFS ``ETag``, which is also the blob's file name in the cache).
* **Converted folder** ``<model_dir>/x-portrait-<commit12>-<dtype>/`` written once by
  :func:`xportrait_cli.models.convert_checkpoint` (fast, memory-mapped loading).
  ``model_dir`` defaults to ``<xportrait home>/models``; the home is ``XPORTRAIT_HOME``, else
  ``$XDG_CACHE_HOME/xportrait``, else ``~/.cache/xportrait``.
* **Landmark weights** for face-alignment: FAN-68 ``2DFAN4-11f355bf06.pth.tar`` and the S3FD detector
  ``s3fd-619a316812.pth`` in ``$TORCH_HOME/hub/checkpoints/`` (``torch.hub.get_dir()``), the names
  face-alignment 1.5 looks for (``face_alignment.api.models_urls['2DFAN-4']`` and
  ``face_alignment.detection.sfd.sfd_detector.models_urls['s3fd']``). Fetched from
  :data:`DEFAULT_LANDMARK_URL` or a mirror (``landmark_url`` / env ``XPORTRAIT_LANDMARK_URL``) by a
  streamed GET to ``<name>.<uuid>.incomplete`` under a per-file lock, resumed with a Range request
  when a partial file exists, then renamed into place. No checksum is published for them: their size
  is checked against the server's and recorded.
* **Manifest** ``<xportrait home>/weights.json``: what was downloaded, verified and converted, so that
  :func:`default_model_path` finds the model without network access and :func:`check_weights` need
  not re-hash 12 GB when nothing changed.

Nothing here prints: progress goes to an optional ``progress(label, done, total)`` callback.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import importlib
import json
import os
import re
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from xportrait_cli.errors import DownloadError, InputError, WeightsMissingError

__all__ = [
    "REPO_ID",
    "FILENAME",
    "DEFAULT_REVISION",
    "DEFAULT_LANDMARK_URL",
    "LANDMARK_FILES",
    "DTYPES",
    "CUDA_DTYPE",
    "ProgressCallback",
    "WeightItem",
    "WeightsReport",
    "download_weights",
    "check_weights",
    "default_model_path",
    "xportrait_home",
    "hub_cache_dir",
    "landmark_dir",
]

#: The Hugging Face mirror of the official checkpoint (spec §2).
REPO_ID = "fffiloni/X-Portrait"
#: The official checkpoint's file name in :data:`REPO_ID`.
FILENAME = "model_state-415001.th"
#: Branch (or tag or commit) downloaded by default.
DEFAULT_REVISION = "main"
#: Where face-alignment 1.5 downloads its weights from (``face_alignment.api.models_urls``).
DEFAULT_LANDMARK_URL = "https://www.adrianbulat.com/downloads/python-fan"
#: Landmark weight files: role -> file name (the name face-alignment caches them under).
LANDMARK_FILES = {"fan": "2DFAN4-11f355bf06.pth.tar", "s3fd": "s3fd-619a316812.pth"}
#: ``--dtype`` choices: name -> bytes per element of the converted weights.
DTYPES = {"fp16": 2, "bf16": 2, "fp32": 4}
#: The CUDA precision, one truth: what ``download-weights`` converts to by default and what
#: ``animate --dtype auto`` runs on CUDA, so the default folder loads without a cast. fp16 as the
#: official fp16 autocast (spec §3.7); every CUDA card runs it (bf16 needs Ampere or newer).
CUDA_DTYPE = "fp16"
#: Converted-folder / approximate sizes used by ``--dry-run`` when a server gives no size.
APPROX_CHECKPOINT_BYTES = 12_300_000_000
MANIFEST_NAME = "weights.json"

ProgressCallback = Callable[[str, int, "int | None"], None]
"""``progress(label, done, total)``: ``done`` bytes (or steps) of ``total`` (``None``: unknown)."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
#: Statuses that count as usable in :attr:`WeightsReport.ok`.
OK_STATUSES = frozenset({"ok", "downloaded", "converted", "skipped", "would-download"})


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------
def xportrait_home() -> Path:
    """xportrait's own data folder: ``XPORTRAIT_HOME``, else ``$XDG_CACHE_HOME/xportrait``, else
    ``~/.cache/xportrait``."""
    if env := os.environ.get("XPORTRAIT_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "xportrait"


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The huggingface_hub cache: ``cache_dir``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    huggingface_hub's default. Environment variables are read now, not at import."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if env := os.environ.get("HF_HUB_CACHE"):
        return Path(env).expanduser()
    if env := os.environ.get("HF_HOME"):
        return Path(env).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def landmark_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where face-alignment looks for its weights
    (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _model_dir(model_dir: str | os.PathLike[str] | None) -> Path:
    return Path(model_dir).expanduser() if model_dir is not None else xportrait_home() / "models"


def _converted_dir(model_dir: Path, commit: str, dtype: str) -> Path:
    return model_dir / f"x-portrait-{commit[:12]}-{dtype}"


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _landmark_base(landmark_url: str | None) -> str:
    return (landmark_url or os.environ.get("XPORTRAIT_LANDMARK_URL") or DEFAULT_LANDMARK_URL).rstrip("/")


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
@dataclass
class WeightItem:
    """One file or folder in a :class:`WeightsReport`.

    Attributes:
        name: ``"checkpoint"``, ``"converted"``, ``"fan"`` or ``"s3fd"``.
        path: where it is (or would be put).
        status: ``ok`` (present and valid), ``downloaded``, ``converted``, ``skipped`` (not asked
            for), ``would-download`` (dry run), ``missing`` or ``invalid``.
        size: bytes (a folder: the total), ``None`` when unknown.
        detail: a short explanation (source URL, checksum, reason).
    """

    name: str
    path: Path | None
    status: str
    size: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the item is usable (or deliberately not asked for)."""
        return self.status in OK_STATUSES


@dataclass
class WeightsReport:
    """What :func:`download_weights` / :func:`check_weights` found or did.

    Attributes:
        items: one :class:`WeightItem` per file or folder, in the order checkpoint, converted, fan, s3fd.
        model_path: what ``animate --model`` uses by default now (``None`` when nothing is there).
    """

    items: list[WeightItem] = field(default_factory=list)
    model_path: Path | None = None

    @property
    def ok(self) -> bool:
        """True when every item is present and valid (or skipped)."""
        return all(item.ok for item in self.items)

    def __getitem__(self, name: str) -> WeightItem:
        for item in self.items:
            if item.name == name:
                return item
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------
def _manifest_path() -> Path:
    return xportrait_home() / MANIFEST_NAME


def _read_manifest() -> dict[str, Any]:
    try:
        data = json.loads(_manifest_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(data: dict[str, Any]) -> None:
    path = _manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.incomplete")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _update_manifest(**changes: Any) -> None:
    with FileLock(str(_manifest_path()) + ".lock"):
        data = _read_manifest()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        _write_manifest(data)


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    for candidate in [path, *path.parents]:
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return 0


def _require_space(path: Path, needed: int, what: str) -> None:
    free = _free_bytes(path)
    if free < needed:
        raise DownloadError(
            f"not enough free disk space for {what} at {path}: need {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free",
            hint="free some space or pass --cache-dir / --model-dir on a larger disk",
        )


def _sha256_file(path: Path, progress: ProgressCallback | None = None, label: str = "verify") -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while block := f.read(8 * _CHUNK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(label, done, total)
    return digest.hexdigest()


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _converter() -> Callable[..., Path] | None:
    """``convert_checkpoint`` from ``xportrait_cli.models`` (imported lazily), or ``None``."""
    try:
        from xportrait_cli import models

        if hasattr(models, "convert_checkpoint"):
            return models.convert_checkpoint
    except ImportError:
        pass
    try:
        from xportrait_cli.models.loading import convert_checkpoint
    except ImportError:
        return None
    return convert_checkpoint


def _is_converted(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


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


# ---------------------------------------------------------------------------------------------
# The checkpoint (huggingface_hub)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Remote:
    url: str
    sha256: str | None  # None: the ETag is not a SHA-256 (not an LFS file)
    size: int | None
    commit: str


def _hub_error(exc: Exception, revision: str, endpoint: str) -> DownloadError:
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


def _remote_checkpoint(revision: str, endpoint: str, token: str | bool | None) -> _Remote:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(REPO_ID, FILENAME, revision=revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    except Exception as exc:
        raise _hub_error(exc, revision, endpoint) from exc
    if not meta.commit_hash or not meta.etag:
        raise DownloadError(
            f"{url} does not look like a Hugging Face Hub (no X-Repo-Commit or ETag header)",
            hint="check HF_ENDPOINT",
        )
    etag = meta.etag.lower()
    return _Remote(url, etag if _SHA256.match(etag) else None, meta.size, meta.commit_hash)


def _offline_remote(error: DownloadError, cache: Path, revision: str) -> _Remote:
    """The cached checkpoint's identity when the Hub cannot be reached; re-raises ``error`` otherwise."""
    network_errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for client in ("httpx2", "httpx"):  # huggingface_hub 2.x / 1.x HTTP clients
        with contextlib.suppress(ImportError):
            network_errors.append(importlib.import_module(client).TransportError)
    cached = _cached_checkpoint(cache, revision)
    if cached is None or not isinstance(error.__cause__, tuple(network_errors)):
        raise error
    blob = cached.resolve()
    sha = blob.name if _SHA256.match(blob.name) else None
    return _Remote(str(cached), sha, blob.stat().st_size, cached.parent.name)


def _cached_checkpoint(cache_dir: Path, revision: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(REPO_ID, FILENAME, cache_dir=str(cache_dir), revision=revision)
    return Path(found) if isinstance(found, str) else None


def _remove_cached(pointer: Path) -> None:
    """Delete a cached file: the snapshot entry and the blob it points to."""
    blob = pointer.resolve()
    for path in (pointer, blob):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _verify_checkpoint(
    path: Path, expected: str | None, progress: ProgressCallback | None, *, use_record: bool = True
) -> tuple[bool, str, str | None]:
    """(valid, detail, sha256). ``expected`` defaults to the blob's name when it is a SHA-256."""
    blob = path.resolve()
    if expected is None and _SHA256.match(blob.name):
        expected = blob.name
    record = _read_manifest().get("checkpoint", {})
    if (
        use_record
        and expected is not None
        and record.get("sha256") == expected
        and record.get("path") == str(path)
        and record.get("stat") == _stat_key(blob)
    ):
        return True, f"sha256 {expected[:12]}… (verified earlier)", expected
    actual = _sha256_file(blob, progress)
    if expected is None:
        return True, f"sha256 {actual[:12]}… (the hub gave no SHA-256 to compare)", actual
    if actual != expected:
        return False, f"sha256 mismatch: expected {expected}, got {actual}", actual
    return True, f"sha256 {expected[:12]}… verified", actual


def _download_checkpoint(
    *,
    remote: _Remote,
    revision: str,
    cache_dir: Path,
    endpoint: str,
    token: str | bool | None,
    progress: ProgressCallback | None,
) -> tuple[Path, str]:
    """Download (or find in the cache) and verify the checkpoint; one re-download on a bad checksum."""
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
            raise _hub_error(exc, revision, endpoint) from exc
        valid, detail, sha = _verify_checkpoint(path, remote.sha256, progress, use_record=attempt == 0)
        if valid:
            blob = path.resolve()
            _update_manifest(
                checkpoint={
                    "path": str(path),
                    "repo_id": REPO_ID,
                    "filename": FILENAME,
                    "revision": revision,
                    "commit": remote.commit,
                    "sha256": sha,
                    "stat": _stat_key(blob),
                }
            )
            return path, detail
        _remove_cached(path)
    raise DownloadError(
        f"{FILENAME} from {endpoint}/{REPO_ID} failed verification twice ({detail}); "
        "the corrupt file was removed",
        hint="run `xportrait download-weights` again later, or check HF_ENDPOINT if you use a mirror",
    )


# ---------------------------------------------------------------------------------------------
# Landmark weights (plain HTTP, hub-style temp file + lock + resume)
# ---------------------------------------------------------------------------------------------
def _http_size(url: str) -> int | None:
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=30) as response:
        value = response.headers.get("Content-Length")
    return int(value) if value is not None else None


def _fetch_url(
    url: str, target: Path, progress: ProgressCallback | None = None, *, label: str = "", attempts: int = 3
) -> int:
    """Stream ``url`` to ``target`` atomically; resume from a partial ``<name>.<uuid>.incomplete``.

    Returns the size in bytes.

    Raises:
        DownloadError: HTTP errors, unreachable host, or a size that does not match the server's after
            ``attempts`` tries (the partial file is kept, so the next run resumes).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    label = label or f"download {target.name}"
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target.stat().st_size
        partials = sorted(target.parent.glob(f"{target.name}.*.incomplete"), key=lambda p: p.stat().st_size)
        for extra in partials[:-1]:
            extra.unlink(missing_ok=True)
        tmp = partials[-1] if partials else target.with_name(f"{target.name}.{uuid.uuid4().hex}.incomplete")
        error: Exception | None = None
        for _ in range(attempts):
            try:
                total = _fetch_into(url, tmp, progress, label)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise DownloadError(
                        f"{url} not found (HTTP 404)", hint="check --landmark-url / XPORTRAIT_LANDMARK_URL"
                    ) from None
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}", hint="try again later") from None
            except urllib.error.URLError as exc:
                raise DownloadError(
                    f"cannot reach {url}: {exc.reason}",
                    hint="check your connection, or use a mirror with --landmark-url",
                ) from None
            except (OSError, ValueError, http.client.HTTPException) as exc:  # short read: resume
                error = exc
                continue
            size = tmp.stat().st_size
            if total is not None and size != total:
                error = OSError(f"got {size} of {total} bytes")
                continue
            os.replace(tmp, target)
            return size
        raise DownloadError(
            f"download of {url} did not complete ({error}); the partial file {tmp} is kept",
            hint="run the command again to resume",
        )


def _fetch_into(url: str, tmp: Path, progress: ProgressCallback | None, label: str) -> int | None:
    """One GET of ``url`` appended to ``tmp`` (Range from its size). Returns the full size if known."""
    have = tmp.stat().st_size if tmp.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial is not a prefix we can extend: start again
            tmp.unlink()
            return _fetch_into(url, tmp, progress, label)
        raise
    with response:
        if response.status == 206:
            match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
            total = int(match.group(1)) if match else None
            mode = "ab"
        else:  # 200: the server ignored the Range header, start over
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            mode = "wb"
        done = have
        with open(tmp, mode) as f:
            while block := response.read(_CHUNK):
                f.write(block)
                done += len(block)
                if progress:
                    progress(label, done, total)
    return total


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def download_weights(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str = DEFAULT_REVISION,
    endpoint: str | None = None,
    token: str | bool | None = None,
    landmarks: bool = True,
    landmark_url: str | None = None,
    convert: bool = True,
    dtype: str = CUDA_DTYPE,
    model_dir: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
) -> WeightsReport:
    """Download, verify and convert everything ``xportrait animate`` needs.

    Steps: (1) ask the Hub for the checkpoint's size, SHA-256 and commit; (2) check free disk space
    for everything still missing; (3) download the checkpoint into the huggingface_hub cache and
    verify its SHA-256 (a mismatch deletes the file and downloads once more); (4) fetch the
    landmark weights into the torch hub cache; (5) convert the checkpoint once into
    ``<model_dir>/x-portrait-<commit12>-<dtype>/``. Files already present are not fetched again.

    Args:
        cache_dir: huggingface_hub cache (default: ``HF_HUB_CACHE`` / ``HF_HOME`` / the hub default).
        revision: branch, tag or commit of :data:`REPO_ID`.
        endpoint: Hub URL (default: ``HF_ENDPOINT``, else https://huggingface.co).
        token: Hub token (default: ``HF_TOKEN`` / the stored login, as huggingface_hub does).
        landmarks: also fetch the face-alignment FAN-68 and S3FD weights.
        landmark_url: base URL of the landmark files (default: ``XPORTRAIT_LANDMARK_URL``, else
            :data:`DEFAULT_LANDMARK_URL`).
        convert: convert the checkpoint into the fast-loading folder.
        dtype: ``"fp16"``, ``"bf16"`` or ``"fp32"``: the converted weights' precision.
        model_dir: where converted folders go (default ``<xportrait home>/models``).
        dry_run: only report sizes and targets (status ``would-download`` or ``ok``); writes nothing.
        progress: ``progress(label, done, total)`` for downloads, hashing and conversion.

    Returns:
        A :class:`WeightsReport`; ``model_path`` is what ``animate`` now uses by default.

    Raises:
        DownloadError: network or HTTP failure, missing file or revision, checksum mismatch, not
            enough free disk space (raised before anything is downloaded).
        UsageError-like ``InputError``: an unknown ``dtype``.
        CheckpointError: the converter rejects the checkpoint.
    """
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    endpoint = _endpoint(endpoint)
    cache = hub_cache_dir(cache_dir)
    models = _model_dir(model_dir)
    lm_dir = landmark_dir()
    lm_base = _landmark_base(landmark_url)
    report = WeightsReport()

    # 1. what the Hub has (offline with a cached checkpoint: what the cache has)
    try:
        remote = _remote_checkpoint(revision, endpoint, token)
    except DownloadError as exc:
        remote = _offline_remote(exc, cache, revision)
    cached = _cached_checkpoint(cache, remote.commit)
    target_dir = _converted_dir(models, remote.commit, dtype)
    ckpt_size = remote.size or APPROX_CHECKPOINT_BYTES
    lm_missing = {
        role: lm_dir / name
        for role, name in LANDMARK_FILES.items()
        if landmarks and not (lm_dir / name).exists()
    }
    need_convert = convert and not _is_converted(target_dir)

    # 2. sizes, targets and free space, before any download
    lm_sizes: dict[str, int | None] = {}
    if dry_run or lm_missing:
        for role, path in lm_missing.items():
            try:
                lm_sizes[role] = _http_size(f"{lm_base}/{path.name}")
            except (OSError, ValueError):
                lm_sizes[role] = None
    converted_size = ckpt_size * DTYPES[dtype] // 4
    if dry_run:
        ckpt_path = (
            cached or cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / remote.commit / FILENAME
        )
        report.items.append(
            WeightItem(
                "checkpoint",
                ckpt_path,
                "ok" if cached else "would-download",
                ckpt_size,
                f"{endpoint}/{REPO_ID} @ {remote.commit[:12]}",
            )
        )
        report.items.append(
            WeightItem(
                "converted",
                target_dir,
                "skipped" if not convert else ("would-download" if need_convert else "ok"),
                None if not convert else converted_size,
                f"{dtype}, converted locally" if convert else "--no-convert",
            )
        )
        for role, name in LANDMARK_FILES.items():
            path = lm_dir / name
            status = "skipped" if not landmarks else ("would-download" if role in lm_missing else "ok")
            size = path.stat().st_size if path.exists() else lm_sizes.get(role)
            report.items.append(WeightItem(role, path, status, size, f"{lm_base}/{name}"))
        report.model_path = _safe_default_model_path(cache)
        return report

    if cached is None:
        cache.mkdir(parents=True, exist_ok=True)
        _require_space(cache, ckpt_size, FILENAME)
    if need_convert:
        models.mkdir(parents=True, exist_ok=True)
        extra = 0 if cached is not None or not _same_fs(cache, models) else ckpt_size
        _require_space(models, converted_size + extra, f"the converted {dtype} weights")
    if lm_missing:
        lm_dir.mkdir(parents=True, exist_ok=True)
        _require_space(lm_dir, sum(s or 0 for s in lm_sizes.values()), "the landmark weights")

    # 3. the checkpoint
    path, detail = _download_checkpoint(
        remote=remote, revision=revision, cache_dir=cache, endpoint=endpoint, token=token, progress=progress
    )
    report.items.append(
        WeightItem(
            "checkpoint", path, "ok" if cached else "downloaded", path.resolve().stat().st_size, detail
        )
    )

    # 4. landmark weights
    lm_items = []
    for role, name in LANDMARK_FILES.items():
        target = lm_dir / name
        if not landmarks:
            lm_items.append(WeightItem(role, target, "skipped", None, "--no-landmark-weights"))
            continue
        url = f"{lm_base}/{name}"
        if role in lm_missing:
            size = _fetch_url(url, target, progress, label=f"download {name}")
            _update_manifest(landmarks={role: {"path": str(target), "url": url, "size": size}})
            lm_items.append(WeightItem(role, target, "downloaded", size, url))
        else:
            lm_items.append(WeightItem(role, target, "ok", target.stat().st_size, "already present"))

    # 5. conversion
    if convert:
        if need_convert:
            _convert(path, target_dir, dtype, progress)
            status = "converted"
        else:
            status = "ok"
        _update_manifest(converted={dtype: str(target_dir)}, model=str(target_dir))
        report.items.append(WeightItem("converted", target_dir, status, _tree_size(target_dir), dtype))
    else:
        report.items.append(WeightItem("converted", target_dir, "skipped", None, "--no-convert"))
        if not _is_converted(Path(_read_manifest().get("model", "") or "/nonexistent")):
            _update_manifest(model=str(path))
    report.items.extend(lm_items)
    report.model_path = _safe_default_model_path(cache)
    return report


def _same_fs(a: Path, b: Path) -> bool:
    def dev(p: Path) -> int | None:
        for candidate in [p, *p.parents]:
            with contextlib.suppress(OSError):
                return candidate.stat().st_dev
        return None

    return dev(a) == dev(b)


def _convert(checkpoint: Path, target: Path, dtype: str, progress: ProgressCallback | None) -> None:
    convert_checkpoint = _converter()
    if convert_checkpoint is None:
        raise DownloadError(
            "this xportrait build cannot convert checkpoints (no xportrait_cli.models.convert_checkpoint)",
            hint="pass --no-convert; `animate` reads the .th directly",
        )
    import torch

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    label = f"convert to {dtype}"
    if progress:
        progress(label, 0, None)
    convert_checkpoint(checkpoint, target, dtype=torch_dtype)
    if progress:
        progress(label, 1, 1)


def check_weights(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str = DEFAULT_REVISION,
    landmarks: bool = True,
    convert: bool = True,
    dtype: str = CUDA_DTYPE,
    model_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> WeightsReport:
    """Report what is present and valid, without any network access.

    The checkpoint is looked up in the hub cache (``revision``, else the manifest's path) and its
    SHA-256 compared with the blob name (re-hashed only when the file changed since it was last
    verified); the converted folder (``dtype``) must be complete when ``convert``; the landmark files
    must be present, non-empty and, when recorded at download, of the recorded size.

    Returns:
        A :class:`WeightsReport` (``report.ok`` is False when anything is missing or invalid).
    """
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    cache = hub_cache_dir(cache_dir)
    manifest = _read_manifest()
    report = WeightsReport()

    path = _cached_checkpoint(cache, revision)
    recorded = manifest.get("checkpoint", {}).get("path")
    if path is None and recorded and Path(recorded).exists() and Path(recorded).is_relative_to(cache):
        path = Path(recorded)
    if path is None:
        report.items.append(
            WeightItem("checkpoint", cache, "missing", None, f"{FILENAME} not in the hub cache ({revision})")
        )
    else:
        valid, detail, _ = _verify_checkpoint(path, None, progress)
        size = path.resolve().stat().st_size
        report.items.append(WeightItem("checkpoint", path, "ok" if valid else "invalid", size, detail))

    if convert:
        converted = manifest.get("converted", {}).get(dtype)
        folder = Path(converted) if converted else None
        if folder is None:
            candidates = sorted(_model_dir(model_dir).glob(f"x-portrait-*-{dtype}"))
            folder = next((c for c in candidates if _is_converted(c)), None)
        if folder is not None and _is_converted(folder):
            report.items.append(WeightItem("converted", folder, "ok", _tree_size(folder), dtype))
        else:
            report.items.append(
                WeightItem(
                    "converted", folder or _model_dir(model_dir), "missing", None, f"no {dtype} conversion"
                )
            )
    else:
        report.items.append(WeightItem("converted", None, "skipped", None, "--no-convert"))

    lm_dir = landmark_dir()
    for role, name in LANDMARK_FILES.items():
        target = lm_dir / name
        if not landmarks:
            report.items.append(WeightItem(role, target, "skipped", None, "--no-landmark-weights"))
            continue
        if not target.is_file() or target.stat().st_size == 0:
            report.items.append(WeightItem(role, target, "missing", None, "not downloaded"))
            continue
        size = target.stat().st_size
        expected = manifest.get("landmarks", {}).get(role, {}).get("size")
        if expected is not None and expected != size:
            report.items.append(
                WeightItem(role, target, "invalid", size, f"size {size}, expected {expected}")
            )
        else:
            report.items.append(WeightItem(role, target, "ok", size, "present"))
    report.model_path = _safe_default_model_path(cache)
    return report


def _safe_default_model_path(cache: Path | None = None) -> Path | None:
    try:
        return default_model_path(cache_dir=cache)
    except WeightsMissingError:
        return None


def default_model_path(*, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``animate --model`` looks by default.

    Order: env ``XPORTRAIT_MODEL``; the model recorded by the last ``download-weights`` (the converted
    folder, or the ``.th`` with ``--no-convert``); any converted folder under
    ``<xportrait home>/models``; the ``.th`` in the hub cache (``cache_dir`` / ``HF_HUB_CACHE``).

    Raises:
        WeightsMissingError: ``XPORTRAIT_MODEL`` points at nothing, or no weights are found.
    """
    if env := os.environ.get("XPORTRAIT_MODEL"):
        path = Path(env).expanduser()
        if not path.exists():
            raise WeightsMissingError(
                f"XPORTRAIT_MODEL={env} does not exist", hint="fix XPORTRAIT_MODEL or unset it"
            )
        return path
    recorded = _read_manifest().get("model")
    if recorded and Path(recorded).exists():
        return Path(recorded)
    converted = [c for c in sorted(_model_dir(None).glob("x-portrait-*")) if _is_converted(c)]
    if converted:
        return max(converted, key=lambda c: c.stat().st_mtime)
    cached = _cached_checkpoint(hub_cache_dir(cache_dir), DEFAULT_REVISION)
    if cached is not None:
        return cached
    raise WeightsMissingError(
        f"no X-Portrait weights found ({FILENAME} from {REPO_ID})", hint="run `xportrait download-weights`"
    )
