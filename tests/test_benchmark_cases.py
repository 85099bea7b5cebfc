"""Fast tests of the Table 5 case synthesis (benchmarks/synthetic_cases.py) and of run_cases.py's command line.

The cases are built from the real data folder (NPSAM_DATA_DIR). Only the smaller cases are built
pixel by pixel here; the plans (shapes, boxes, spacing) of all 14 are checked without pixels.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import run_cases  # noqa: E402
import synthetic_cases  # noqa: E402

# Sizes and object counts of SwiftMedSAM's Table 5.
TABLE_5 = {
    "3DBox_CT_0566": ((287, 512, 512), 6),
    "3DBox_CT_0888": ((237, 512, 512), 6),
    "3DBox_CT_0860": ((246, 512, 512), 1),
    "3DBox_MR_0621": ((115, 400, 400), 6),
    "3DBox_MR_0121": ((64, 290, 320), 6),
    "3DBox_MR_0179": ((84, 512, 512), 1),
    "3DBox_PET_0001": ((264, 200, 200), 1),
    "2DBox_US_0525": ((256, 256, 3), 1),
    "2DBox_X-Ray_0053": ((320, 640, 3), 34),
    "2DBox_Dermoscopy_0003": ((3024, 4032, 3), 1),
    "2DBox_Endoscopy_0086": ((480, 560, 3), 1),
    "2DBox_Fundus_0003": ((2048, 2048, 3), 1),
    "2DBox_Microscope_0008": ((1536, 2040, 3), 19),
    "2DBox_Microscope_0016": ((1920, 2560, 3), 241),
}
# Built pixel by pixel in these tests (the others take too long for a fast test).
BUILT_CASES = ("2DBox_US_0525", "2DBox_X-Ray_0053", "2DBox_Endoscopy_0086", "2DBox_Microscope_0008", "3DBox_MR_0121")


@pytest.fixture(scope="module", autouse=True)
def real_data(data_dir, monkeypatch_module):
    monkeypatch_module.setenv(synthetic_cases.DATA_DIR_VARIABLE, str(data_dir))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def built_cases(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cases")
    return synthetic_cases.ensure_cases(BUILT_CASES + (synthetic_cases.QUICK_CROP.name,), folder)


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def assert_boxes_inside(name: str, boxes: np.ndarray, shape: tuple[int, ...]) -> None:
    if name.startswith("3D"):
        depth, height, width = shape
        low, high = boxes[:, :3], boxes[:, 3:]
        limits = np.array([width - 1, height - 1, depth - 1])
    else:
        height, width = shape[:2]
        low, high = boxes[:, :2], boxes[:, 2:]
        limits = np.array([width - 1, height - 1])
    assert (low >= 0).all(), f"{name}: a box starts before the image: {boxes[(low < 0).any(axis=1)][:3]}"
    assert (high <= limits).all(), f"{name}: a box ends after the image: {boxes[(high > limits).any(axis=1)][:3]}"
    assert (high > low).all(), f"{name}: a box is empty or flat on some axis: {boxes[(high <= low).any(axis=1)][:3]}"


def test_specs_match_table_5():
    assert {name: (spec.shape, spec.num_objects) for name, spec in synthetic_cases.CASES.items()} == TABLE_5


@pytest.mark.parametrize("name", sorted(TABLE_5))
def test_plan_shape_and_boxes(name):
    shape, num_objects = TABLE_5[name]
    plan = synthetic_cases.plan_case(name)

    assert plan.boxes.dtype == np.int64
    assert plan.boxes.shape == (num_objects, 6 if name.startswith("3D") else 4)
    assert_boxes_inside(name, plan.boxes, shape)
    if name.startswith("3D"):
        assert plan.spacing.shape == (3,)
        assert (plan.spacing > 0).all()
        assert len(plan.object_notes) == num_objects


@pytest.mark.parametrize("name", sorted(name for name in TABLE_5 if name.startswith("3D")))
def test_z_extents_within_kind_ranges(name):
    plan = synthetic_cases.plan_case(name)
    depth = plan.spec.shape[0]
    for box, obj in zip(plan.boxes, plan.spec.objects):
        low_mm, high_mm = synthetic_cases.OBJECT_KINDS[obj.kind]
        slices = int(box[5] - box[2] + 1)
        low = max(synthetic_cases.MIN_BOX_SLICES, round(low_mm / plan.spacing[2]))
        high = min(depth, round(high_mm / plan.spacing[2]))
        assert low <= slices <= high, f"{name} {obj.label}: {slices} slices outside {low}-{high}"


@pytest.mark.parametrize("name", BUILT_CASES + (synthetic_cases.QUICK_CROP.name,))
def test_built_case_content(name, built_cases):
    arrays = load(built_cases[name])
    expected_shape, boxes = synthetic_cases.case_geometry(name)
    imgs = arrays["imgs"]

    assert imgs.shape == expected_shape
    assert imgs.dtype == np.uint8
    assert imgs.min() < imgs.max(), f"{name}: the image is constant"
    assert np.array_equal(arrays["boxes"], boxes)
    assert_boxes_inside(name, arrays["boxes"], imgs.shape)
    if name.startswith("3D"):
        assert arrays["spacing"].shape == (3,)
        # Nearly every slice carries content; a scan's outermost slices may be background only.
        slices_with_content = (imgs.reshape(imgs.shape[0], -1).max(axis=1) > 0).mean()
        assert slices_with_content >= 0.9, f"{name}: only {slices_with_content:.0%} of the slices have content"
    else:
        assert "spacing" not in arrays


def test_built_cases_object_counts(built_cases):
    for name in BUILT_CASES:
        assert len(load(built_cases[name])["boxes"]) == TABLE_5[name][1], name


def test_boxes_cover_content(built_cases):
    """A box of a fitted 2D case lies on the resized image, not on the zero padding."""
    arrays = load(built_cases["2DBox_US_0525"])
    x_min, y_min, x_max, y_max = arrays["boxes"][0]
    assert arrays["imgs"][y_min : y_max + 1, x_min : x_max + 1].max() > 0


def test_quick_crop_objects():
    shape, boxes = synthetic_cases.case_geometry(synthetic_cases.QUICK_CROP.name)
    assert shape[0] == synthetic_cases.QUICK_CROP.num_slices
    assert len(boxes) == synthetic_cases.QUICK_CROP.num_objects


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_synthesis_is_deterministic(built_cases, tmp_path):
    names = ("2DBox_X-Ray_0053", synthetic_cases.QUICK_CROP.name)
    again = synthetic_cases.ensure_cases(names, tmp_path)
    for name in names:
        assert file_sha256(again[name]) == file_sha256(built_cases[name]), name


def test_seed_changes_3d_boxes():
    first = synthetic_cases.plan_case("3DBox_CT_0566", seed=synthetic_cases.DEFAULT_SEED)
    second = synthetic_cases.plan_case("3DBox_CT_0566", seed=synthetic_cases.DEFAULT_SEED + 1)
    assert not np.array_equal(first.boxes, second.boxes)
    assert np.array_equal(first.boxes[:, [0, 1, 3, 4]], second.boxes[:, [0, 1, 3, 4]])


def test_existing_case_is_reused(tmp_path):
    path = synthetic_cases.ensure_cases(["2DBox_US_0525"], tmp_path)["2DBox_US_0525"]
    stamp = path.stat().st_mtime_ns
    synthetic_cases.ensure_cases(["2DBox_US_0525"], tmp_path)
    assert path.stat().st_mtime_ns == stamp


def test_docstring_ranges_match_plans():
    """The module docstring's table of z ranges in slices agrees with the plans."""
    docstring = synthetic_cases.__doc__
    for name in (name for name in TABLE_5 if name.startswith("3D")):
        plan = synthetic_cases.plan_case(name)
        row = next(line for line in docstring.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {plan.spacing[2]:.3f} |" in row, f"{name}: spacing in the docstring differs from {plan.spacing[2]:.3f}"
        for note in plan.object_notes:
            kind_range = re.search(r": (.+?) mm \((\d+-\d+) slices\)", note)
            kind_and_mm, slices = kind_range.group(1), kind_range.group(2)
            assert f"{kind_and_mm} -> {slices}" in row, f"{name}: '{kind_and_mm} -> {slices}' missing from the docstring"


def test_dice_per_label():
    a = np.array([[0, 1, 1], [2, 2, 0]])
    b = np.array([[0, 1, 0], [2, 2, 2]])
    dice = run_cases.dice_per_label(a, b, 3)
    assert dice[0] == pytest.approx(2 / 3)
    assert dice[1] == pytest.approx(4 / 5)
    assert np.isnan(dice[2])


def run_script(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_cases.py"), *arguments],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


def test_run_cases_help():
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--quick", "--cases", "--models", "--engines", "--threads", "--output", "--dry-run"):
        assert option in result.stdout


def test_run_cases_quick_dry_run():
    result = run_script("--quick", "--dry-run", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert "48 measurements" in result.stdout  # 3 cases x 2 models x 4 engines x 2 timings
    assert "3DBox_MR_0121-crop4 (4, 290, 320), 2 object(s): encoder runs 8 per object" in result.stdout


def test_run_cases_full_dry_run_estimates():
    result = run_script("--dry-run")
    assert result.returncode == 0, result.stderr
    assert "14 case(s) x 3 model(s) x 4 engine(s)" in result.stdout
    assert "Estimated duration:" in result.stdout


def test_run_cases_rejects_unknown_engine():
    result = run_script("--engines", "e", "--dry-run")
    assert result.returncode == 2
    assert "unknown engine 'e'" in result.stderr
