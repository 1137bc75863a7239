"""What is there, without any network access: the report types and :func:`check_weights`.

A :class:`WeightsReport` (one :class:`WeightItem` per file or folder) is what every verb of
:mod:`xportrait_cli.weights.download` returns and what ``xportrait download-weights`` prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from xportrait_cli.weights import registry
from xportrait_cli.weights.hub import verify_checkpoint
from xportrait_cli.weights.registry import (
    CUDA_DTYPE,
    DEFAULT_REVISION,
    FILENAME,
    LANDMARK_FILES,
    ProgressCallback,
)

__all__ = ["OK_STATUSES", "WeightItem", "WeightsReport", "check_weights", "tree_size"]

#: Statuses that count as usable in :attr:`WeightsReport.ok`.
OK_STATUSES = frozenset({"ok", "downloaded", "converted", "skipped", "would-download"})


@dataclass
class WeightItem:
    """One file or folder in a :class:`WeightsReport`.

    Attributes:
        name: ``"checkpoint"``, ``"converted"``, ``"fan"``, ``"s3fd"`` or ``"lcm-lora"``.
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
        items: one :class:`WeightItem` per file or folder, in the order checkpoint, converted, fan,
            s3fd (then ``lcm-lora`` from :func:`run`).
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


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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

    Raises:
        UsageError: an unknown ``dtype``.
    """
    registry.check_dtype(dtype)
    cache = registry.hub_cache_dir(cache_dir)
    manifest = registry.read_manifest()
    report = WeightsReport([_check_checkpoint(cache, revision, manifest, progress)])
    if convert:
        report.items.append(_check_converted(manifest, dtype, model_dir))
    else:
        report.items.append(WeightItem("converted", None, "skipped", None, "--no-convert"))
    report.items.extend(_check_landmarks(manifest, landmarks))
    report.model_path = registry.found_model_path(cache)
    return report


def _check_checkpoint(
    cache: Path, revision: str, manifest: dict, progress: ProgressCallback | None
) -> WeightItem:
    path = registry.cached_checkpoint(cache, revision)
    recorded = manifest.get("checkpoint", {}).get("path")
    if path is None and recorded and Path(recorded).exists() and Path(recorded).is_relative_to(cache):
        path = Path(recorded)
    if path is None:
        return WeightItem(
            "checkpoint", cache, "missing", None, f"{FILENAME} not in the hub cache ({revision})"
        )
    valid, detail, _ = verify_checkpoint(path, None, progress)
    return WeightItem("checkpoint", path, "ok" if valid else "invalid", path.resolve().stat().st_size, detail)


def _check_converted(manifest: dict, dtype: str, model_dir: str | os.PathLike[str] | None) -> WeightItem:
    converted = manifest.get("converted", {}).get(dtype)
    folder = Path(converted) if converted else None
    if folder is None:
        candidates = sorted(registry.model_dir(model_dir).glob(f"x-portrait-*-{dtype}"))
        folder = next((c for c in candidates if registry.is_converted(c)), None)
    if folder is not None and registry.is_converted(folder):
        return WeightItem("converted", folder, "ok", tree_size(folder), dtype)
    return WeightItem(
        "converted", folder or registry.model_dir(model_dir), "missing", None, f"no {dtype} conversion"
    )


def _check_landmarks(manifest: dict, landmarks: bool) -> list[WeightItem]:
    items = []
    lm_dir = registry.landmark_dir()
    for role, name in LANDMARK_FILES.items():
        target = lm_dir / name
        size = target.stat().st_size if target.is_file() else 0
        expected = manifest.get("landmarks", {}).get(role, {}).get("size")
        if not landmarks:
            items.append(WeightItem(role, target, "skipped", None, "--no-landmark-weights"))
        elif size == 0:
            items.append(WeightItem(role, target, "missing", None, "not downloaded"))
        elif expected is not None and expected != size:
            items.append(WeightItem(role, target, "invalid", size, f"size {size}, expected {expected}"))
        else:
            items.append(WeightItem(role, target, "ok", size, "present"))
    return items
