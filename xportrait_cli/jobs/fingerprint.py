"""Job fingerprints: what determines a job's frames (input content, output-affecting options, weights).

A fingerprint is a JSON-able dict plus its SHA-256 ``digest``. It is written to the job's working
directory (``fingerprint.json``) while the job runs and into the finished MP4's ``comment`` metadata
tag, so a re-run can tell a finished job (skip), an unfinished one (resume) and a changed one
(restart) apart without keeping anything but the output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import av

from xportrait_cli.files import sha256_file as file_digest
from xportrait_cli.jobs.spec import JobSpec
from xportrait_cli.option_layers import options_to_dict

FINGERPRINT_VERSION = 1
TAG_PREFIX = "xportrait-fingerprint:"


def weights_identity(model: Path) -> dict[str, Any]:
    """Identity of the weights without reading 12 GB: a converted folder's ``model_index.json`` digest
    plus every file's size and mtime (subfolders included), or a checkpoint file's name, size and
    mtime."""
    if model.is_dir():
        files = sorted(p for p in model.rglob("*") if p.is_file())
        index = model / "model_index.json"
        return {
            "kind": "folder",
            "files": {
                p.relative_to(model).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns] for p in files
            },
            "config": file_digest(index) if index.exists() else None,
        }
    stat = model.stat()
    return {"kind": "file", "name": model.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def job_fingerprint(spec: JobSpec, model: Path, lora_file: Path | None = None) -> dict[str, Any]:
    """The fingerprint of ``spec`` with weights ``model`` (and ``--lora`` resolved to ``lora_file``);
    ``["digest"]`` is its SHA-256. Input files count by content (an init video and a LoRA too)."""
    options = options_to_dict(spec.options, output_only=True)
    for path_option in ("model", "reference", "model_config", "init_video", "lora"):
        options.pop(path_option, None)
    opts = spec.options
    body = {
        "version": FINGERPRINT_VERSION,
        "portrait": file_digest(spec.portrait),
        "driving": file_digest(spec.driving),
        "references": [file_digest(r) for r in opts.reference],
        "model_config": file_digest(opts.model_config) if opts.model_config else None,
        "init_video": file_digest(opts.init_video) if opts.init_video else None,
        "lora": file_digest(lora_file) if lora_file else None,
        "weights": weights_identity(model),
        "options": options,
    }
    body["digest"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return body


def output_fingerprint(path: Path) -> str | None:
    """The fingerprint digest stored in a finished output's metadata, or None."""
    try:
        with av.open(str(path)) as container:
            comment = container.metadata.get("comment", "")
    except (av.FFmpegError, OSError):
        return None
    return comment[len(TAG_PREFIX) :] if comment.startswith(TAG_PREFIX) else None
