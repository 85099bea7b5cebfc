"""Time npsam's encoder and one-box decode with npsam's process settings and without them.

Two comparisons, each in fresh processes that alternate between the two settings, one line per run:
- `--compare threads`: `import npsam` sets OMP_WAIT_POLICY=PASSIVE and OPENBLAS_THREAD_TIMEOUT=4 unless
  they are set already (see npsam/__init__.py). The other runs get the defaults of libgomp and OpenBLAS
  (GOMP_SPINCOUNT=300000, which overrides the wait policy, and OPENBLAS_THREAD_TIMEOUT=28).
- `--compare memory`: `npsam.load_model` raises glibc malloc's mmap and trim thresholds (see
  npsam/allocator.py). The other runs set NPSAM_KEEP_FREED_MEMORY=0, which leaves malloc as it is.
- `--compare products`: the window attention's stacks of small products are split between Python
  threads with OpenBLAS on one thread (see npsam/blas.py). The other runs set NPSAM_SPLIT_PRODUCTS=0,
  which leaves them to np.matmul.
Each line also gives the process's peak resident memory.

Usage: python benchmarks/runtime_settings.py [--compare threads|memory|products] [--rounds 2]
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY_DEFAULTS = {"GOMP_SPINCOUNT": "300000", "OPENBLAS_THREAD_TIMEOUT": "28"}
# Variables each comparison controls: they are removed from the environment before its settings apply.
CONTROLLED = {
    "threads": ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT"),
    "memory": ("NPSAM_KEEP_FREED_MEMORY", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"),
    "products": ("NPSAM_SPLIT_PRODUCTS",),
}
SETTINGS = {
    "threads": {"npsam's settings": {}, "library defaults": LIBRARY_DEFAULTS},
    "memory": {"npsam's settings": {}, "malloc defaults": {"NPSAM_KEEP_FREED_MEMORY": "0"}},
    "products": {"npsam's settings": {}, "np.matmul": {"NPSAM_SPLIT_PRODUCTS": "0"}},
}

MEASUREMENT = textwrap.dedent(
    """
    import resource, sys, time
    sys.path.insert(0, {repo!r})
    import npsam
    import numpy as np
    model = npsam.load_model("litemedsam")
    image = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    embeddings = model.encode(image)
    model.encode(image)
    box = np.array([[40, 50, 160, 200]], np.float32)
    model.decode(embeddings, box)
    def median_ms(function, runs):
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times))
    encoder = median_ms(lambda: model.encode(image), 5)
    decoder = median_ms(lambda: model.decode(embeddings, box), 15)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"encoder median {{encoder:.0f}} ms, one-box decode median {{decoder:.1f}} ms, peak memory {{peak:.0f}} MiB")
    """
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", choices=sorted(SETTINGS), default="threads", help="settings to compare (default: threads)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each setting (default: 2)")
    args = parser.parse_args(argv)
    code = MEASUREMENT.format(repo=str(REPO))
    for _ in range(args.rounds):
        for label, extra in SETTINGS[args.compare].items():
            environment = {key: value for key, value in os.environ.items() if key not in CONTROLLED[args.compare]}
            environment.update(extra)
            result = subprocess.run([sys.executable, "-c", code], env=environment, check=True, stdout=subprocess.PIPE, text=True)
            print(f"{label:18s} {result.stdout.strip()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
