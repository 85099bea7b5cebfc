"""Profile npsam's image encoder: time per step and per stage on one real slice.

Every call the encoder makes to a Numba kernel, to a GEMM (`gemm_only`), to the threaded window
attention (`blas.run_split`) or to the row-chunked MBConv and PatchMerging step
(`expand_depthwise_project`) runs inside a timer. A call made inside another timed call counts only
for the outer one. The time left in each stage is Python and NumPy work between the timed calls. The
timers take time themselves, so the profiled encoder runs a little slower than an unprofiled one. The
input is the first Kvasir-SEG case of the data folder, as in bench_model.py.

Usage: python benchmarks/profile_encoder.py [--model litemedsam] [--runs 8] [--output FILE.md]
Never used by the tests.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # this checkout's npsam, not an installed copy
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import npsam  # noqa: E402  (before NumPy, so that npsam's thread-pool settings apply)

import numpy as np  # noqa: E402

from bench_model import real_input  # noqa: E402
from npsam import blas, image_encoder, kernels  # noqa: E402

# Timed call -> the row of the profile table it counts for.
PARTS = {
    "gemm_only": "1x1 convolutions, linear layers and the neck's 3x3 convolution (NumPy GEMMs)",
    "expand_depthwise_project": "MBConv and PatchMerging in row chunks on two threads (GEMMs, GELU, depthwise)",
    "run_split": "window attention: products and softmax on two threads",
    "gelu_depthwise_conv3x3": "fused GELU and depthwise 3x3 (whole-grid path)",
    "bias_gelu_inplace": "bias and GELU kernel after the GEMMs",
    "gather_windows": "window gather kernel (q, k^T, v per window and head, with the qkv bias)",
    "layer_norm": "layer norm kernel",
    "bias_residual_inplace": "bias and residual kernel",
    "depthwise_conv3x3": "depthwise 3x3 of the attention blocks",
    "scatter_windows": "window scatter kernel",
    "window_softmax_inplace": "window softmax kernel (stacked-matmul path)",
    "patches3x3": "neck patch matrix kernel",
}
UNTIMED = "Python and NumPy work between the timed calls"


class Timers:
    """Seconds per (stage, timed call), counting only calls that are not inside another timed call."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.stage = "patch_embed"
        self.depth = 0

    def wrap(self, name, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            self.depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds[(self.stage, name)] += time.perf_counter() - start

        return timed


class _Namespace:
    """A stand-in module whose functions are timed versions of another module's."""


def instrument(timers: Timers):
    """Replace the encoder's references to kernels, GEMMs and thread splits with timed ones; return an undo function."""
    timed_kernels = _Namespace()
    for name in dir(kernels):
        value = getattr(kernels, name)
        if callable(value) and not name.startswith("__"):
            value = timers.wrap(name, value)
        setattr(timed_kernels, name, value)
    timed_blas = _Namespace()
    timed_blas.split_threads = blas.split_threads
    timed_blas.run_split = timers.wrap("run_split", blas.run_split)

    replaced = {
        "kernels": timed_kernels,
        "blas": timed_blas,
        "gemm_only": timers.wrap("gemm_only", image_encoder.gemm_only),
        "expand_depthwise_project": timers.wrap("expand_depthwise_project", image_encoder.expand_depthwise_project),
    }
    originals = {name: getattr(image_encoder, name) for name in replaced}
    for name, value in replaced.items():
        setattr(image_encoder, name, value)

    def undo():
        for name, value in originals.items():
            setattr(image_encoder, name, value)

    return undo


def profile(model_name: str, runs: int, warmup: int = 2):
    """Return (seconds per (stage, call) per encode, seconds per stage per encode, stage names)."""
    _, input_image, _ = real_input()
    model = npsam.load_model(model_name)
    image = np.ascontiguousarray(input_image[0].transpose(1, 2, 0))
    params = model.params["image_encoder"]
    # encoder_stages yields each stage's name after running it.
    stages = ["patch_embed"] + [f"layers.{index}" for index in range(len(params["layers"]))] + ["neck"]
    timers = Timers()
    stage_seconds = collections.defaultdict(float)
    undo = instrument(timers)
    try:
        for run in range(warmup + runs):
            if run == warmup:
                timers.seconds.clear()
                stage_seconds.clear()
            timers.stage = stages[0]
            start = time.perf_counter()
            for index, (stage, _) in enumerate(image_encoder.encoder_stages(image, params, model.config)):
                now = time.perf_counter()
                stage_seconds[stage] += now - start
                start = now
                timers.stage = stages[min(index + 1, len(stages) - 1)]
    finally:
        undo()
    per_call = {key: value / runs for key, value in timers.seconds.items()}
    per_stage = {key: value / runs for key, value in stage_seconds.items()}
    return per_call, per_stage, stages


def report(model_name: str, runs: int, per_call: dict, per_stage: dict, stages: list) -> str:
    """Return the profile as two Markdown tables: time per part of the encoder and per stage."""
    total = sum(per_stage.values())
    by_part = collections.defaultdict(float)
    for (_, name), seconds in per_call.items():
        by_part[PARTS.get(name, f"kernel {name}")] += seconds
    by_part[UNTIMED] += total - sum(per_call.values())
    lines = [
        f"Encoder of {model_name}, {runs} encodes of one 256x256 slice after 2 warm-up ones: "
        f"{1000 * total:.0f} ms per encode with the timers. Threads of the split attention and row chunks: "
        f"{blas.split_threads()} (1 means the whole-grid path without NumPy's OpenBLAS).",
        "",
        "| part of the encoder | ms per encode | share |",
        "|---|---:|---:|",
    ]
    for part, seconds in sorted(by_part.items(), key=lambda item: -item[1]):
        lines.append(f"| {part} | {1000 * seconds:.1f} | {100 * seconds / total:.0f} % |")
    lines += ["", "| stage (with the downsampling step after it) | ms per encode |", "|---|---:|"]
    for stage in stages:
        lines.append(f"| {stage} | {1000 * per_stage[stage]:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="litemedsam", help="registered model name (default: litemedsam)")
    parser.add_argument("--runs", type=int, default=8, help="profiled encodes after 2 warm-up ones (default: 8)")
    parser.add_argument("--output", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        raise SystemExit(f"--runs must be at least 1, got {args.runs}")
    per_call, per_stage, stages = profile(args.model, args.runs)
    text = report(args.model, args.runs, per_call, per_stage, stages)
    print(text, end="")
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
