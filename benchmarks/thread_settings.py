"""Time npsam's encoder and one-box decode with its thread-pool settings and with the libraries' own.

`import npsam` sets OMP_WAIT_POLICY=PASSIVE and OPENBLAS_THREAD_TIMEOUT=4 unless they are set already
(see npsam/__init__.py). This script runs the same measurement in fresh processes, alternating between
npsam's settings and the defaults of libgomp and OpenBLAS (GOMP_SPINCOUNT=300000, which overrides the
wait policy, and OPENBLAS_THREAD_TIMEOUT=28), and prints one line per run.

Usage: python benchmarks/thread_settings.py [--rounds 2]
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

MEASUREMENT = textwrap.dedent(
    """
    import sys, time
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
    print(f"encoder median {{encoder:.0f}} ms, one-box decode median {{decoder:.1f}} ms")
    """
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each setting (default: 2)")
    args = parser.parse_args(argv)
    code = MEASUREMENT.format(repo=str(REPO))
    settings = {"npsam's settings": {}, "library defaults": LIBRARY_DEFAULTS}
    for _ in range(args.rounds):
        for label, extra in settings.items():
            environment = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT")}
            environment.update(extra)
            result = subprocess.run([sys.executable, "-c", code], env=environment, check=True, stdout=subprocess.PIPE, text=True)
            print(f"{label:18s} {result.stdout.strip()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
