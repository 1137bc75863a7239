"""What the weights are called and where they live: one home for every name, folder and dtype.

Imports neither torch nor :mod:`xportrait_cli.models` (``xportrait_cli.face`` and the CLI's option
defaults use it); torch and huggingface_hub are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from xportrait_cli.errors import UsageError, WeightsMissingError
from xportrait_cli.files import write_text_atomic

if TYPE_CHECKING:
    import torch

__all__ = [
    "REPO_ID",
    "FILENAME",
    "DEFAULT_REVISION",
    "DEFAULT_LANDMARK_URL",
    "LANDMARK_FILES",
    "DTYPES",
    "CUDA_DTYPE",
    "MODEL_INDEX",
    "ProgressCallback",
    "check_dtype",
    "torch_dtype",
    "is_converted",
    "is_old_format",
    "xportrait_home",
    "hub_cache_dir",
    "landmark_dir",
    "model_dir",
    "converted_dir",
    "cached_checkpoint",
    "default_model_path",
]

#: The Hugging Face mirror of the official checkpoint (the official README links a Google Drive
#: folder; the ComfyUI port downloads from this mirror in its ``nodes.py``).
REPO_ID = "fffiloni/X-Portrait"
#: The official checkpoint's file name in :data:`REPO_ID` (official README and ``scripts/test_xportrait.sh``:
#: ``--resume_dir checkpoint/model_state-415001.th``).
FILENAME = "model_state-415001.th"
#: Branch (or tag or commit) downloaded by default.
DEFAULT_REVISION = "main"
#: Where face-alignment 1.5 downloads its weights from (``face_alignment.api.models_urls``).
DEFAULT_LANDMARK_URL = "https://www.adrianbulat.com/downloads/python-fan"
#: Landmark weight files: role -> file name, the names face-alignment 1.5 caches them under
#: (``face_alignment.api.models_urls['2DFAN-4']``, ``face_alignment.detection.sfd.sfd_detector
#: .models_urls['s3fd']``).
LANDMARK_FILES = {"fan": "2DFAN4-11f355bf06.pth.tar", "s3fd": "s3fd-619a316812.pth"}
#: The precision names (``--dtype``, the converted folders' suffix) -> the ``torch`` dtype attribute.
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
#: The CUDA precision, one truth: what ``download-weights`` converts to by default and what
#: ``animate --dtype auto`` runs on CUDA, so the default folder loads without a cast. fp16 as the
#: official fp16 autocast (official ``core/test_xportrait.py`` L443-502, ``--use_fp16`` on by default); every
#: CUDA card runs it (bf16 needs Ampere or newer).
CUDA_DTYPE = "fp16"
#: Approximate checkpoint size, for ``--dry-run`` and the space check when the Hub gives no size.
APPROX_CHECKPOINT_BYTES = 12_300_000_000
#: The index of a converted folder (diffusers' pipeline layout, written by
#: :func:`xportrait_cli.pipeline.loading.convert_checkpoint`).
MODEL_INDEX = "model_index.json"
#: The ``format`` field of the old converted folders' ``config.json`` (one ``networks.safetensors``).
OLD_FORMAT = "xportrait-converted"
MANIFEST_NAME = "weights.json"
#: Suffixes of checkpoint files (a ``--model`` ending so is a path, never a Hub repo id).
CHECKPOINT_SUFFIXES = (".th", ".pt", ".pth", ".ckpt", ".safetensors", ".bin")

ProgressCallback = Callable[[str, int, "int | None"], None]
"""``progress(label, done, total)``: ``done`` bytes (or steps) of ``total`` (``None``: unknown)."""


def check_dtype(name: str) -> str:
    """``name`` if it is one of :data:`DTYPES`.

    Raises:
        UsageError: any other name (exit 2: nothing was run).
    """
    if name not in DTYPES:
        raise UsageError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}", hint="pick one of those")
    return name


def torch_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` of a precision name (``"fp16"`` -> ``torch.float16``; imports torch).

    Raises:
        UsageError: ``name`` is not one of :data:`DTYPES`.
    """
    import torch

    return getattr(torch, DTYPES[check_dtype(name)])


def looks_like_repo_id(value: str | os.PathLike[str]) -> bool:
    """True when ``value`` is no existing path and reads as a Hugging Face repo id ``org/name`` (one
    slash; not starting with ``/``, ``.`` or ``~``; no checkpoint suffix)."""
    text = os.fspath(value)
    if Path(text).expanduser().exists() or text.startswith(("/", ".", "~")):
        return False
    return re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None and not text.endswith(CHECKPOINT_SUFFIXES)


def is_converted(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a converted folder: it holds :data:`MODEL_INDEX` (the components are
    checked when it is loaded, :func:`xportrait_cli.pipeline.loading.check_folder`)."""
    return (Path(path) / MODEL_INDEX).is_file()


def is_old_format(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder converted by an older xportrait (``config.json`` with
    ``"format": "xportrait-converted"``): not loaded, converted again by ``download-weights``."""
    try:
        data = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == OLD_FORMAT


# ---------------------------------------------------------------------------------------------
# Folders
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
    (``$TORCH_HOME/hub/checkpoints``; imports torch)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def model_dir(folder: str | os.PathLike[str] | None = None) -> Path:
    """Where converted folders go: ``folder`` (``--model-dir``), else ``<xportrait home>/models``."""
    return Path(folder).expanduser() if folder is not None else xportrait_home() / "models"


def converted_dir(models: Path, commit: str, dtype: str) -> Path:
    """The converted folder of checkpoint ``commit`` in precision ``dtype``:
    ``<models>/x-portrait-<commit12>-<dtype>``."""
    return models / f"x-portrait-{commit[:12]}-{dtype}"


def endpoint_url(endpoint: str | None = None) -> str:
    """The Hub URL: ``endpoint``, else ``HF_ENDPOINT``, else https://huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def landmark_base_url(landmark_url: str | None = None) -> str:
    """Base URL of the landmark files: ``landmark_url``, else ``XPORTRAIT_LANDMARK_URL``, else
    :data:`DEFAULT_LANDMARK_URL`."""
    return (landmark_url or os.environ.get("XPORTRAIT_LANDMARK_URL") or DEFAULT_LANDMARK_URL).rstrip("/")


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------
def manifest_path() -> Path:
    """``<xportrait home>/weights.json``."""
    return xportrait_home() / MANIFEST_NAME


def read_manifest() -> dict[str, Any]:
    """The manifest's content; ``{}`` when it is missing or unreadable."""
    try:
        data = json.loads(manifest_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_manifest(**changes: Any) -> None:
    """Merge ``changes`` into the manifest (a dict value is merged one level deep), under a lock and
    written atomically."""
    path = manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        data = read_manifest()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def stat_key(path: Path) -> dict[str, int]:
    """Size and mtime of ``path``: what the manifest records to tell an unchanged file."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---------------------------------------------------------------------------------------------
# Finding the model
# ---------------------------------------------------------------------------------------------
def cached_checkpoint(cache_dir: Path, revision: str) -> Path | None:
    """The checkpoint of ``revision`` in the hub cache ``cache_dir`` (no network), or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(REPO_ID, FILENAME, cache_dir=str(cache_dir), revision=revision)
    return Path(found) if isinstance(found, str) else None


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
    recorded = read_manifest().get("model")
    if recorded and Path(recorded).exists():
        return Path(recorded)
    converted = [c for c in sorted(model_dir().glob("x-portrait-*")) if is_converted(c)]
    if converted:
        return max(converted, key=lambda c: c.stat().st_mtime)
    cached = cached_checkpoint(hub_cache_dir(cache_dir), DEFAULT_REVISION)
    if cached is not None:
        return cached
    raise WeightsMissingError(
        f"no X-Portrait weights found ({FILENAME} from {REPO_ID})", hint="run `xportrait download-weights`"
    )


def found_model_path(cache_dir: Path | None = None) -> Path | None:
    """:func:`default_model_path`, or ``None`` where it would raise."""
    try:
        return default_model_path(cache_dir=cache_dir)
    except WeightsMissingError:
        return None
