"""The verbs of ``xportrait download-weights``: download, verify and convert, or a dry run.

:func:`run` is what the command calls: :func:`download_weights` here, or
:func:`xportrait_cli.weights.check.check_weights` with ``--check``. Each returns a
:class:`~xportrait_cli.weights.check.WeightsReport`. Where things go and what they are called is
:mod:`xportrait_cli.weights.registry`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from xportrait_cli.errors import DownloadError, UsageError
from xportrait_cli.weights import registry
from xportrait_cli.weights.check import WeightItem, WeightsReport, check_weights, tree_size
from xportrait_cli.weights.http import fetch_url, http_size
from xportrait_cli.weights.hub import (
    Remote,
    download_checkpoint,
    offline_remote,
    remote_checkpoint,
)
from xportrait_cli.weights.registry import (
    CUDA_DTYPE,
    DEFAULT_REVISION,
    FILENAME,
    LANDMARK_FILES,
    REPO_ID,
    ProgressCallback,
)

__all__ = ["download_weights", "run"]


# ---------------------------------------------------------------------------------------------
# Disk space and sizes
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


def _same_fs(a: Path, b: Path) -> bool:
    def dev(p: Path) -> int | None:
        for candidate in [p, *p.parents]:
            with contextlib.suppress(OSError):
                return candidate.stat().st_dev
        return None

    return dev(a) == dev(b)


# ---------------------------------------------------------------------------------------------
# download_weights, in steps
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """What a download run will do, found before anything is written."""

    endpoint: str
    cache: Path
    models: Path
    landmark_dir: Path
    landmark_base: str
    remote: Remote
    cached: Path | None  # the checkpoint already in the hub cache
    target_dir: Path  # the converted folder
    checkpoint_size: int
    converted_size: int
    need_convert: bool
    landmarks_missing: dict[str, Path]  # role -> target
    landmark_sizes: dict[str, int | None]  # role -> the server's size (missing ones only)


def _plan(
    *, cache_dir, revision, endpoint, token, landmarks, landmark_url, convert, dtype, model_dir
) -> _Plan:
    endpoint = registry.endpoint_url(endpoint)
    cache = registry.hub_cache_dir(cache_dir)
    models = registry.model_dir(model_dir)
    lm_dir = registry.landmark_dir()
    lm_base = registry.landmark_base_url(landmark_url)
    try:  # offline with a cached checkpoint: what the cache has
        remote = remote_checkpoint(revision, endpoint, token)
    except DownloadError as exc:
        remote = offline_remote(exc, cache, revision)
    target_dir = registry.converted_dir(models, remote.commit, dtype)
    size = remote.size or registry.APPROX_CHECKPOINT_BYTES
    missing = {
        role: lm_dir / name
        for role, name in LANDMARK_FILES.items()
        if landmarks and not (lm_dir / name).exists()
    }
    sizes: dict[str, int | None] = {}
    for role, path in missing.items():
        try:
            sizes[role] = http_size(f"{lm_base}/{path.name}")
        except (OSError, ValueError):
            sizes[role] = None
    return _Plan(
        endpoint=endpoint,
        cache=cache,
        models=models,
        landmark_dir=lm_dir,
        landmark_base=lm_base,
        remote=remote,
        cached=registry.cached_checkpoint(cache, remote.commit),
        target_dir=target_dir,
        checkpoint_size=size,
        converted_size=size * registry.torch_dtype(dtype).itemsize // 4,
        need_convert=convert and not registry.is_converted(target_dir),
        landmarks_missing=missing,
        landmark_sizes=sizes,
    )


def _dry_run_report(plan: _Plan, *, landmarks: bool, convert: bool, dtype: str) -> WeightsReport:
    """Sizes and targets of what a download would fetch (status ``would-download`` or ``ok``)."""
    commit = plan.remote.commit
    snapshot = plan.cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit / FILENAME
    report = WeightsReport()
    report.items.append(
        WeightItem(
            "checkpoint",
            plan.cached or snapshot,
            "ok" if plan.cached else "would-download",
            plan.checkpoint_size,
            f"{plan.endpoint}/{REPO_ID} @ {commit[:12]}",
        )
    )
    report.items.append(
        WeightItem(
            "converted",
            plan.target_dir,
            "skipped" if not convert else ("would-download" if plan.need_convert else "ok"),
            None if not convert else plan.converted_size,
            f"{dtype}, converted locally" if convert else "--no-convert",
        )
    )
    for role, name in LANDMARK_FILES.items():
        path = plan.landmark_dir / name
        status = (
            "skipped" if not landmarks else ("would-download" if role in plan.landmarks_missing else "ok")
        )
        size = path.stat().st_size if path.exists() else plan.landmark_sizes.get(role)
        report.items.append(WeightItem(role, path, status, size, f"{plan.landmark_base}/{name}"))
    report.model_path = registry.found_model_path(plan.cache)
    return report


def _check_space(plan: _Plan, dtype: str) -> None:
    """Raise :class:`DownloadError` now if what is still missing would not fit."""
    if plan.cached is None:
        plan.cache.mkdir(parents=True, exist_ok=True)
        _require_space(plan.cache, plan.checkpoint_size, FILENAME)
    if plan.need_convert:
        plan.models.mkdir(parents=True, exist_ok=True)
        extra = (
            0 if plan.cached is not None or not _same_fs(plan.cache, plan.models) else plan.checkpoint_size
        )
        _require_space(plan.models, plan.converted_size + extra, f"the converted {dtype} weights")
    if plan.landmarks_missing:
        plan.landmark_dir.mkdir(parents=True, exist_ok=True)
        needed = sum(s or 0 for s in plan.landmark_sizes.values())
        _require_space(plan.landmark_dir, needed, "the landmark weights")


def _fetch_landmarks(plan: _Plan, landmarks: bool, progress: ProgressCallback | None) -> list[WeightItem]:
    items = []
    for role, name in LANDMARK_FILES.items():
        target = plan.landmark_dir / name
        if not landmarks:
            items.append(WeightItem(role, target, "skipped", None, "--no-landmark-weights"))
        elif role in plan.landmarks_missing:
            url = f"{plan.landmark_base}/{name}"
            size = fetch_url(url, target, progress, label=f"download {name}")
            registry.update_manifest(landmarks={role: {"path": str(target), "url": url, "size": size}})
            items.append(WeightItem(role, target, "downloaded", size, url))
        else:
            items.append(WeightItem(role, target, "ok", target.stat().st_size, "already present"))
    return items


def _convert(checkpoint: Path, target: Path, dtype: str, progress: ProgressCallback | None) -> None:
    """Convert ``checkpoint`` into the folder ``target`` in precision ``dtype`` (imports the models)."""
    from xportrait_cli.pipeline.loading import convert_checkpoint

    label = f"convert to {dtype}"
    if progress:
        progress(label, 0, None)
    convert_checkpoint(checkpoint, target, dtype=registry.torch_dtype(dtype))
    if progress:
        progress(label, 1, 1)


def _converted_item(
    plan: _Plan, checkpoint: Path, convert: bool, dtype: str, progress: ProgressCallback | None
) -> WeightItem:
    """Convert when asked and needed, and record what ``animate`` now uses by default."""
    if not convert:
        if not registry.is_converted(Path(registry.read_manifest().get("model", "") or "/nonexistent")):
            registry.update_manifest(model=str(checkpoint))
        return WeightItem("converted", plan.target_dir, "skipped", None, "--no-convert")
    if plan.need_convert:
        _convert(checkpoint, plan.target_dir, dtype, progress)
    registry.update_manifest(converted={dtype: str(plan.target_dir)}, model=str(plan.target_dir))
    status = "converted" if plan.need_convert else "ok"
    return WeightItem("converted", plan.target_dir, status, tree_size(plan.target_dir), dtype)


# ---------------------------------------------------------------------------------------------
# Public verbs
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

    Steps: (1) ask the Hub for the checkpoint's size, SHA-256 and commit, and the mirror for the
    missing landmark files' sizes; (2) check free disk space for everything still missing; (3)
    download the checkpoint into the huggingface_hub cache and verify its SHA-256 (a mismatch
    deletes the file and downloads once more); (4) fetch the landmark weights into the torch hub
    cache; (5) convert the checkpoint once into ``<model_dir>/x-portrait-<commit12>-<dtype>/``.
    Files already present are not fetched again.

    Args:
        cache_dir: huggingface_hub cache (default: ``HF_HUB_CACHE`` / ``HF_HOME`` / the hub default).
        revision: branch, tag or commit of :data:`~xportrait_cli.weights.registry.REPO_ID`.
        endpoint: Hub URL (default: ``HF_ENDPOINT``, else https://huggingface.co).
        token: Hub token (default: ``HF_TOKEN`` / the stored login, as huggingface_hub does).
        landmarks: also fetch the face-alignment FAN-68 and S3FD weights.
        landmark_url: base URL of the landmark files (default: ``XPORTRAIT_LANDMARK_URL``, else
            :data:`~xportrait_cli.weights.registry.DEFAULT_LANDMARK_URL`).
        convert: convert the checkpoint into the fast-loading folder.
        dtype: ``"fp16"``, ``"bf16"`` or ``"fp32"``: the converted weights' precision.
        model_dir: where converted folders go (default ``<xportrait home>/models``).
        dry_run: only report sizes and targets (status ``would-download`` or ``ok``); writes nothing.
        progress: ``progress(label, done, total)`` for downloads, hashing and conversion.

    Returns:
        A :class:`WeightsReport`; ``model_path`` is what ``animate`` now uses by default.

    Raises:
        UsageError: an unknown ``dtype``.
        DownloadError: network or HTTP failure, missing file or revision, checksum mismatch, not
            enough free disk space (raised before anything is downloaded).
        CheckpointError: the converter rejects the checkpoint.
    """
    registry.check_dtype(dtype)
    # 1. what the Hub, the mirror and the caches have
    plan = _plan(
        cache_dir=cache_dir,
        revision=revision,
        endpoint=endpoint,
        token=token,
        landmarks=landmarks,
        landmark_url=landmark_url,
        convert=convert,
        dtype=dtype,
        model_dir=model_dir,
    )
    if dry_run:
        return _dry_run_report(plan, landmarks=landmarks, convert=convert, dtype=dtype)
    # 2. free space, before any download
    _check_space(plan, dtype)
    # 3. the checkpoint
    path, detail = download_checkpoint(
        remote=plan.remote,
        revision=revision,
        cache_dir=plan.cache,
        endpoint=plan.endpoint,
        token=token,
        progress=progress,
    )
    status = "ok" if plan.cached else "downloaded"
    report = WeightsReport([WeightItem("checkpoint", path, status, path.resolve().stat().st_size, detail)])
    # 4. landmark weights
    landmark_items = _fetch_landmarks(plan, landmarks, progress)
    # 5. conversion
    report.items.append(_converted_item(plan, path, convert, dtype, progress))
    report.items.extend(landmark_items)
    report.model_path = registry.found_model_path(plan.cache)
    return report


def run(
    *,
    check: bool = False,
    dry_run: bool = False,
    lcm_lora: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str = DEFAULT_REVISION,
    landmarks: bool = True,
    landmark_url: str | None = None,
    convert: bool = True,
    dtype: str = CUDA_DTYPE,
    model_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> WeightsReport:
    """``xportrait download-weights``: :func:`check_weights` with ``check``, else
    :func:`download_weights` (``dry_run`` passed on), then with ``lcm_lora`` (not with ``check`` or
    ``dry_run``) the LCM-LoRA into the hub cache (an ``lcm-lora`` item,
    :func:`xportrait_cli.models.lora.download_lcm_lora`). Other arguments as those functions'.

    Raises:
        UsageError: ``check`` and ``dry_run`` together, or an unknown ``dtype``.
        DownloadError, CheckpointError: as :func:`download_weights`.
    """
    if check and dry_run:
        raise UsageError("--check and --dry-run cannot be used together", hint="pass one of them")
    common = dict(cache_dir=cache_dir, revision=revision, landmarks=landmarks, convert=convert, dtype=dtype)
    if check:
        return check_weights(**common, model_dir=model_dir, progress=progress)
    report = download_weights(
        **common, landmark_url=landmark_url, model_dir=model_dir, dry_run=dry_run, progress=progress
    )
    if lcm_lora and not dry_run:
        from xportrait_cli.models.lora import LCM_LORA_REPO, download_lcm_lora

        path = download_lcm_lora(cache_dir=cache_dir)
        report.items.append(WeightItem("lcm-lora", path, "ok", path.stat().st_size, LCM_LORA_REPO))
    return report
