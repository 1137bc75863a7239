"""A full-size X-Portrait checkpoint with seeded random weights, in the official layout and format.

Every key and shape of the official ``model_state-415001.th`` (from
``../shared/reference/xportrait_state_dict_keys.tsv``) is written as fp32 into a ``.th`` pickle
``{'state_dict': {...}}`` (``torch.save``, zip format), 12.3 GB. Values are chosen so activations stay
finite through every network: conv/linear/embedding weights normal with std ``1/sqrt(fan_in)``
(``fan_in`` = the product of all dims but the first), norm weights ones, biases zeros, the motion
modules' position tables the official sinusoids, the DDPM schedule buffers zeros (they are not
read: the schedule is recomputed). Each tensor gets its own generator seeded with ``seed`` and its
index, so the file is the same on every machine.

The tensors are filled inside a memory-mapped scratch file (numpy ``memmap``) so that building needs
little anonymous memory: the 12.3 GB live in file pages the kernel can write back.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared"))
KEYS_TSV = SHARED / "reference" / "xportrait_state_dict_keys.tsv"
#: Bump when the values change: the file name carries it, so a stale cache is never reused.
VERSION = 1


def official_keys(path: Path = KEYS_TSV) -> list[tuple[str, tuple[int, ...]]]:
    """``(key, shape)`` of every tensor of the official checkpoint (all fp32)."""
    keys = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        if dtype != "torch.float32":
            raise ValueError(f"{path}: {key} is {dtype}, expected torch.float32")
        keys.append((key, tuple(int(d) for d in re.findall(r"\d+", shape))))
    return keys


def fill(key: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
    """Write the seeded value of ``key`` into ``tensor`` (fp32, any shape) in place."""
    from xportrait_cli.models.motion_module import sinusoidal_positions

    if key.endswith("pos_encoder.pe"):
        tensor.copy_(sinusoidal_positions(tensor.shape[-1], tensor.shape[1]))
    elif tensor.ndim >= 2:
        tensor.normal_(0.0, 1.0 / math.sqrt(tensor[0].numel()), generator=generator)
    elif key.endswith("weight"):
        tensor.fill_(1.0)  # GroupNorm / LayerNorm scales (every 1-D weight of the checkpoint)
    else:
        tensor.zero_()  # biases, schedule buffers, logvar


def checkpoint_path(cache: Path, seed: int = 0) -> Path:
    return cache / f"x-portrait-seeded-v{VERSION}-seed{seed}.th"


def build_checkpoint(cache: Path, seed: int = 0) -> tuple[Path, float | None]:
    """The seeded checkpoint in ``cache``, built unless already there.

    Returns:
        (path, seconds the build took, or None when it was reused).
    """
    path = checkpoint_path(cache, seed)
    if path.is_file():
        return path, None
    started = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    keys = official_keys()
    total = sum(math.prod(shape) for _, shape in keys)
    scratch = cache / f".scratch-{os.getpid()}.f32"
    tmp = path.with_name(path.name + f".{os.getpid()}.incomplete")
    try:
        memory = np.memmap(scratch, dtype=np.float32, mode="w+", shape=(total,))
        state_dict, offset = {}, 0
        for index, (key, shape) in enumerate(keys):
            n = math.prod(shape)
            tensor = torch.from_numpy(memory[offset : offset + n]).view(shape)  # its own storage
            fill(key, tensor, torch.Generator().manual_seed(seed * 100_003 + index))
            state_dict[key] = tensor
            offset += n
        torch.save({"state_dict": state_dict}, tmp)
        del state_dict, memory
        os.replace(tmp, path)
    finally:
        scratch.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return path, time.perf_counter() - started
