"""The load-memory contract, at tiny scale: loading the networks holds, at its peak, the weights in the
target dtype plus one tensor (the mapped file aside) — no staging copy in a third dtype — and leaves
exactly one copy of them alive.

Allocations are tracked with a ``TorchDispatchMode``: every CPU storage an operator creates during
the load is counted until it is freed (a finalizer on the storage, whose Python object PyTorch keeps
alive exactly as long as the storage). Storages that lie in a memory-mapped file (the safetensors
folder, the ``torch.load(mmap=True)`` pickle) are file pages, not allocations, and are not counted.
The full-size figures (RssAnon sampled from /proc) are in ``benchmarks/fullscale.py``.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from xportrait_cli.jobs.networks import NetworksCache
from xportrait_cli.pipeline import convert_checkpoint, load_pipeline
from xportrait_cli.pipeline.loading import COMPONENTS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Mappings:
    """This process's memory mappings (/proc/self/maps), re-read only for an address not yet known."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int, bool]] = []  # (start, end, backed by a file)

    def _read(self) -> None:
        self.ranges = []
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            self.ranges.append((start, end, len(fields) >= 6 and fields[5].startswith("/")))

    def _find(self, address: int) -> tuple[int, int, bool] | None:
        return next((r for r in self.ranges if r[0] <= address < r[1]), None)

    def file_backed(self, address: int) -> bool:
        found = self._find(address)
        if found is None:
            self._read()
            found = self._find(address)
        return bool(found and found[2])


class LiveAllocations(TorchDispatchMode):
    """Bytes of CPU storages created by operators and still alive: ``now``, ``peak``."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.mapped: set[int] = set()  # storages in a mapped file, seen and skipped
        self.maps = Mappings()
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if not size or key in self.live or key in self.mapped:
            return
        if self.maps.file_backed(key):
            self.mapped.add(key)
            return
        self.live[key] = size
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key)


def _nbytes(tensors) -> list[int]:
    return [t.numel() * t.element_size() for t in tensors]


def _modules(pipe) -> list[torch.nn.Module]:
    return [getattr(pipe, name) for name in COMPONENTS]


def _weights(pipe) -> tuple[int, int]:
    """(bytes of every parameter and buffer, bytes of the largest one)."""
    sizes = _nbytes(t for m in _modules(pipe) for t in m.state_dict().values())
    return sum(sizes), max(sizes)


@pytest.fixture(scope="module")
def fp16_folder(golden: Path, tiny_config: Path, tmp_path_factory) -> Path:
    """The golden tiny model converted to an fp16 folder, as `download-weights` writes by default."""
    out = tmp_path_factory.mktemp("converted") / "tiny-fp16"
    return convert_checkpoint(golden / "tiny_xportrait.th", out, config=tiny_config, dtype=torch.float16)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_loading_holds_one_copy_in_the_target_dtype(dtype: str, fp16_folder: Path) -> None:
    gc.collect()
    tracker = LiveAllocations()
    with tracker:
        cache = NetworksCache()
        networks = cache.get(fp16_folder, None, torch.device("cpu"), DTYPES[dtype])
        cache.place(offload=False)
    total, largest = _weights(networks)
    assert networks.dtype == DTYPES[dtype]
    assert all(p.dtype == DTYPES[dtype] for m in _modules(networks) for p in m.parameters())
    # peak: the target-dtype weights (when the folder's dtype is the target they stay mapped, and
    # only the buffers, stored in fp32, are cast) plus one tensor of slack; a staging copy in
    # another dtype would add a whole second model
    copied = sum(_nbytes(b for m in _modules(networks) for b in m.buffers())) if dtype == "fp16" else total
    # the scheduler's schedule tables (DDIMScheduler: betas, alphas, ... ~20 kB) are not weights
    copied += sum(_nbytes(t for t in vars(networks.scheduler).values() if isinstance(t, torch.Tensor)))
    assert tracker.peak <= copied + largest, (tracker.peak, total, largest)
    gc.collect()
    assert tracker.now <= copied, (tracker.now, total)  # and after: exactly one copy left alive
    if dtype != "fp16":
        assert tracker.now >= 0.99 * total  # (the tracker sees the copies it must see)


def test_loading_the_official_pickle_holds_one_copy(golden: Path, tiny_config: Path) -> None:
    """The ``.th`` (mapped by ``torch.load(mmap=True)``, fp16 in the tiny model) straight into bf16:
    the networks' weights once, plus the fp32 CLIP encoder that runs once for the empty prompt."""
    gc.collect()
    tracker = LiveAllocations()
    with tracker:
        networks = load_pipeline(golden / "tiny_xportrait.th", config=tiny_config, dtype=torch.bfloat16)
    total, largest = _weights(networks)
    sd = torch.load(golden / "tiny_xportrait.th", mmap=True, weights_only=True)["state_dict"]
    clip = sum(4 * t.numel() for k, t in sd.items() if k.startswith("cond_stage_model."))
    assert tracker.peak <= total + clip + largest, (tracker.peak, total, clip, largest)
    gc.collect()
    assert tracker.now <= total + largest
