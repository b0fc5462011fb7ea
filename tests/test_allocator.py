"""The CPU allocator setting: freed tensor memory is reused instead of faulted in again, once per process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# 20 rounds of a 48 MiB tensor written and freed (above glibc's largest default mmap threshold, 32 MiB, so by
# default every round maps fresh pages); a task's fit hook applies the setting when asked to
CHILD = """
import json, resource, sys, torch
from lightning_retrieval.allocator import keep_freed_memory
from lightning_retrieval.tasks.base import RetrievalModel
applied = None
if sys.argv[1] == "hook":
    RetrievalModel().on_fit_start()
    applied = keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(12 * 2**20).fill_(1.0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"faults": after - before, "applied": applied}))
"""


def _run(mode: str, opt_out: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LIGHTNING_RETRIEVAL_KEEP_FREED_MEMORY", None)
    if opt_out:
        env["LIGHTNING_RETRIEVAL_KEEP_FREED_MEMORY"] = "0"
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fit_hook_keeps_freed_memory_for_reuse():
    pages_per_round = 48 * 2**20 // 4096
    default = _run("plain")
    tuned = _run("hook")
    assert tuned["applied"] is True
    assert default["faults"] > 15 * pages_per_round  # every round faults its pages in again
    assert tuned["faults"] < 3 * pages_per_round  # the first round's pages are reused by the next ones


def test_opt_out_leaves_the_allocator_alone():
    opted_out = _run("hook", opt_out=True)
    assert opted_out["applied"] is False
    assert opted_out["faults"] > 15 * 48 * 2**20 // 4096
