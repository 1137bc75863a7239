"""The resume format: a job's working directory, the one place that names its files.

Beside the job's output ``<output>`` (e.g. ``out/a.mp4``)::

    out/
    ├── a.mp4                     the result (written last, atomically, by the video writer)
    ├── a.mp4.xportrait.lock      per-job file lock (filelock): one process per job
    └── a.mp4.xportrait/          the working directory (removed after success unless --keep-work)
        ├── fingerprint.json      the job fingerprint (jobs/fingerprint.py); another digest resets the folder
        ├── store/                the prepared driving frames (framestore.py: its own tree and key)
        ├── latents.safetensors   the checkpoint: latents (N, 4, h, w) fp32 after ``steps_done`` steps
        ├── portrait.crop.png     --crop: the square portrait crop ...
        ├── portrait.crop.json    ... and its sidecar (face/crop.py ``CropInfo``), written last
        ├── driving.crop<suffix>  --crop: the square driving-video crop ...
        └── driving.crop.json     ... and its sidecar

Resume rule: a folder whose ``fingerprint.json`` holds the job's digest is reused as it is (the
store, the crops and the checkpoint each say whether they are complete); any other folder is
deleted first. The checkpoint carries the digest too, so a stray file from another job is never
resumed from. Every file here is written through :func:`xportrait_cli.files.atomic_write`, so a
crash leaves a previous complete file or none, never a torn one.

Importing this module loads no torch (``jobs/spec.py`` and manifest validation use it).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xportrait_cli.files import atomic_write, write_text_atomic

if TYPE_CHECKING:
    import torch

#: Suffix of a job's working directory beside its output: ``<output>.xportrait/``.
WORK_SUFFIX = ".xportrait"
#: Suffix of a job's lock file beside its output: ``<output>.xportrait.lock``.
LOCK_SUFFIX = WORK_SUFFIX + ".lock"
#: The job fingerprint (``jobs/fingerprint.py``) the folder was made for.
FINGERPRINT_NAME = "fingerprint.json"
#: The prepared driving frames (:class:`~xportrait_cli.jobs.framestore.FrameStore`).
STORE_DIR = "store"
#: The latest latents checkpoint.
CHECKPOINT_NAME = "latents.safetensors"
#: Stems of the ``--crop`` files (``face.crop.crop_inputs`` writes ``<name>.crop.*`` and sidecars).
CROP_NAMES = ("portrait", "driving")


def work_dir_for(output: Path) -> Path:
    """The working directory of the job writing ``output``: ``<output>.xportrait/``."""
    return output.with_name(output.name + WORK_SUFFIX)


def lock_path_for(output: Path) -> Path:
    """The lock file of the job writing ``output``: ``<output>.xportrait.lock``."""
    return output.with_name(output.name + LOCK_SUFFIX)


def open_work_dir(work: Path, fingerprint: dict, *, reset: bool = False) -> str | None:
    """Make ``work`` the working directory of the job with ``fingerprint`` (a dict with ``"digest"``).

    A folder made for another digest (or any folder when ``reset``) is deleted first; then the
    folder exists and ``fingerprint.json`` holds ``fingerprint``. Returns why an existing folder was
    deleted (``"--force"``, ``"inputs or options changed"``), or ``None`` when there was none or it
    is reused.
    """
    why = None
    if work.exists():
        saved = work / FINGERPRINT_NAME
        previous = json.loads(saved.read_text()).get("digest") if saved.is_file() else None
        if reset or previous != fingerprint["digest"]:
            why = "--force" if reset else "inputs or options changed"
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(work / FINGERPRINT_NAME, json.dumps(fingerprint, indent=1, sort_keys=True))
    return why


@dataclass
class Checkpoint:
    """The latents after ``steps_done`` completed denoising steps (``latents`` ``(N, 4, h, w)`` fp32,
    on the CPU): :meth:`XPortraitPipeline.__call__` resumes from them with ``start_step=steps_done``."""

    latents: torch.Tensor
    steps_done: int


def has_checkpoint(work: Path) -> bool:
    """Whether ``work`` holds a checkpoint file (of any job: :func:`load_checkpoint` checks the digest)."""
    return (work / CHECKPOINT_NAME).is_file()


def save_checkpoint(work: Path, latents: torch.Tensor, steps_done: int, digest: str) -> Path:
    """Write ``latents`` ``(N, 4, h, w)`` after ``steps_done`` completed steps, tagged with the job's
    ``digest``, through :func:`~xportrait_cli.files.atomic_write`.

    A failed write (a full disk: ``SafetensorError``) removes the temporary file and keeps the
    previous checkpoint."""
    from safetensors.torch import save_file

    path = work / CHECKPOINT_NAME
    with atomic_write(path) as tmp:
        save_file(
            {"latents": latents.detach().float().cpu().contiguous()},
            str(tmp),
            metadata={"steps_done": str(steps_done), "fingerprint": digest},
        )
    return path


def load_checkpoint(work: Path, digest: str) -> Checkpoint | None:
    """The :class:`Checkpoint` in ``work`` when it was saved by the job with ``digest``, else None
    (no file, another job's, or a torn or foreign file: the job starts over)."""
    from safetensors import safe_open

    path = work / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != digest:
                return None
            return Checkpoint(f.get_tensor("latents"), int(meta["steps_done"]))
    except (OSError, ValueError, KeyError):
        return None
