"""glibc keeps freed buffers for reuse on the CPU (``pipeline/host_memory.py``): the page faults of a
buffer allocated, written and freed again and again, before and after the setting, in a fresh process
(the setting is process-wide)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from xportrait_cli.pipeline import host_memory

SCRIPT = """
import json, resource, torch
from xportrait_cli.pipeline.host_memory import keep_freed_host_memory

def rss_anon():
    status = open("/proc/self/status").read().splitlines()
    return int(next(line for line in status if line.startswith("RssAnon")).split()[1]) * 1024

def faults_per_round(rounds=30):
    # buffers of about 64 MiB (above 32 MiB, glibc's largest mmap threshold), as a convolution's
    # reordered weights are: allocated, written and freed, three sizes in turn
    counts = []
    for i in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = torch.empty((16 << 20) + (i % 3) * 12345, dtype=torch.float32)
        buffer.fill_(1.0)
        del buffer
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts

default = faults_per_round()
applied = keep_freed_host_memory()
start = rss_anon()
kept = faults_per_round()
print(json.dumps({"default": default, "applied": applied, "again": keep_freed_host_memory(), "kept": kept,
                  "retained": rss_anon() - start}))
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")


@glibc_only
def test_freed_buffers_are_reused_without_page_faults():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    result = json.loads(run.stdout.splitlines()[-1])
    pages = (64 << 20) // 4096
    # by default every round maps fresh pages: one fault per 4 KiB page written
    assert min(result["default"]) > pages // 2, result
    assert result["applied"] and result["again"]
    # kept: the first rounds grow the heap, then mostly reuse it; the heap layout varies with the
    # process's address-space layout (measured over 10 processes: 0-3 of the last 15 rounds fault,
    # 128-640 MiB retained, against all 15 by default)
    assert sum(result["kept"][-15:]) < 6 * pages < sum(result["default"][-15:]), result
    assert result["retained"] < 16 * (64 << 20), result


@pytest.mark.parametrize(
    "name, value",
    [
        ("MALLOC_MMAP_MAX_", "65536"),
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ],
)
def test_the_users_allocator_settings_stand(monkeypatch, name, value):
    """With the user's own malloc settings (or another allocator) nothing is changed."""
    monkeypatch.setenv(name, value)
    assert host_memory._apply() is False
