"""glibc's ``malloc`` set for inference on the CPU: freed buffers stay in the process for the next call.

On the CPU the networks' forwards allocate, on every call, buffers larger than 32 MiB, the most
glibc lets its ``mmap`` threshold grow to (``perf`` puts the page faults in oneDNN's JIT kernels;
per ControlNet call they add up to about its 1.4 GB of fp32 weights, as if each convolution's
weights were reordered into a fresh buffer). So glibc maps fresh pages for each one and unmaps them
on ``free``, and the kernel zero-fills every page again on the next call. Measured with the
full-size model at 64², fp32, one thread, 20 frames and 2 steps (``benchmarks/fullscale.py``):
5.1 M minor page faults and 8.4 s of system time in 45.2 s of sampling, and the system time varied
between 3.3 s and 8.8 s from run to run. With :func:`keep_freed_host_memory` the same sampling
took 37.2-38.5 s, with 0.06-0.14 M faults and 0.6-1.8 s of system time (mostly the first step),
for the same user CPU time (36.6 s) and a 1 % higher peak RSS.

The setting: ``mallopt(M_MMAP_MAX, 0)``, so ``malloc`` takes every block from the heap, and
``mallopt(M_TRIM_THRESHOLD, -1)``, so ``free`` keeps the memory for reuse. Then the process holds
its peak working set until it exits, the way the CUDA caching allocator does on the device, plus
what fragmentation strands (``tests/test_host_memory.py``: 2-10 buffers' worth for 64 MiB buffers
of three sizes in turn). It is
process-wide, so the job layer applies it for jobs on the CPU only (stage ``denoise``,
:func:`xportrait_cli.jobs.denoise.denoise`), after the weights are loaded.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["keep_freed_host_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
_applied: bool | None = None


def keep_freed_host_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel (see the module
    docstring). It is applied once per process; later calls only return the first call's result.

    Returns True when the setting is in force. It returns False, and changes nothing, when the C
    library is not glibc, when another allocator is preloaded (``LD_PRELOAD`` names jemalloc or
    tcmalloc), or when the user has set glibc's malloc options through ``GLIBC_TUNABLES`` or
    ``MALLOC_*_`` variables. In those cases the user's choice stands. Never raises.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    user_set = any(name in os.environ for name in _USER_SETTINGS)
    if user_set or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if "jemalloc" in preload or "tcmalloc" in preload or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt(3): a trim threshold of -1 disables trimming completely
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
