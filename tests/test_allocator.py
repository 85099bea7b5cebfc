"""glibc malloc settings: freed blocks are reused after `keep_freed_memory`, and user settings are respected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from npsam import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings apply to glibc on Linux")

# Allocates and frees a 64 MiB array, then counts the page faults of allocating and filling it again.
PROBE = """
import json, resource
import numpy as np
from npsam import allocator

applied = allocator.keep_freed_memory()
size = 16 << 20  # float32 items: 64 MiB
first = np.ones(size, dtype=np.float32)
del first
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
second = np.ones(size, dtype=np.float32)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def run_probe(**variables) -> dict:
    env = {name: value for name, value in os.environ.items() if name not in allocator.USER_VARIABLES}
    env.pop(allocator.OPT_OUT_VARIABLE, None)
    env["NUMPY_MADVISE_HUGEPAGE"] = "0"  # count 4 KiB pages, whatever the kernel's huge page setting
    env.update(variables)
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused():
    tuned = run_probe()
    untuned = run_probe(**{allocator.OPT_OUT_VARIABLE: "0"})
    assert tuned["applied"] is True
    assert untuned["applied"] is False
    # 64 MiB are 16,384 pages of 4 KiB: without the settings each is faulted in again.
    assert untuned["faults"] > 8000
    assert tuned["faults"] < 100


def test_user_malloc_variable_is_respected():
    probe = run_probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert probe["applied"] is False
