"""Per-step checkpoints of the latents in a job's working directory, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CHECKPOINT_NAME = "latents.safetensors"


def save_checkpoint(work_dir: Path, latents: torch.Tensor, steps_done: int, digest: str) -> Path:
    """Write ``latents`` ``(N, 4, h, w)`` after ``steps_done`` completed steps (temp file, then rename).

    A failed write (a full disk: ``SafetensorError``) removes the temp file and keeps the previous
    checkpoint."""
    path = work_dir / CHECKPOINT_NAME
    tmp = work_dir / f".{CHECKPOINT_NAME}.{os.getpid()}.tmp"
    try:
        save_file(
            {"latents": latents.detach().float().cpu().contiguous()},
            str(tmp),
            metadata={"steps_done": str(steps_done), "fingerprint": digest},
        )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(work_dir: Path, digest: str) -> tuple[torch.Tensor, int] | None:
    """``(latents, steps_done)`` from a checkpoint of the same fingerprint, else None."""
    path = work_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != digest:
                return None
            return f.get_tensor("latents"), int(meta["steps_done"])
    except (OSError, ValueError, KeyError):  # a torn or foreign file: start over
        return None
