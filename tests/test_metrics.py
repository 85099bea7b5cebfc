"""Tests for npsam.metrics: DSC and NSD as the CVPR 2024 MedSAM-on-Laptop challenge scores them.

The oracle below is a second, deliberately slow implementation of the same surfel algorithm:
- per-code areas by exhaustive search over every way to cut the ambiguous faces and every
  triangulation of every polygon (npsam uses a dynamic program), with areas from scaled vertices
  (npsam scales area vectors by cofactors);
- neighbour codes from a Python loop over every 2x2x2 cube (npsam uses shifted slices);
- distances by nearest-neighbour search with scipy's cKDTree over all surfels, without cropping
  (npsam uses a cropped distance transform).
Spacings in the oracle comparisons are dyadic (exact in binary), so both sides compute the same
distances bit for bit and agreement is expected to about 1e-12.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from npsam import metrics

REPO = Path(__file__).resolve().parents[1]
CORNERS = list(itertools.product((0, 1), repeat=3))
SQRT2, SQRT3 = math.sqrt(2.0), math.sqrt(3.0)

# Real 3D cases used below (ground truth files of the challenge-format data folder).
REAL_CASE_BRAIN = "pyradiomics_3d/npz/gts/3DBox_MR_pyradiomics_brain1.npz"
REAL_CASE_ORGANS = "PSEUDO_GT_totalsegmentator_example/npz/gts/3DBox_CT_totalseg_example_PSEUDOGT.npz"


# ---------------------------------------------------------------------------------------------
# Oracle
# ---------------------------------------------------------------------------------------------


def corner_is_inside(code: int, corner) -> bool:
    a, b, c = corner
    return bool(code >> (7 - (4 * a + 2 * b + c)) & 1)


@functools.lru_cache(maxsize=None)
def triangulations(n: int) -> tuple:
    """Return every triangulation of a convex n-gon with vertices 0 .. n-1, as index triples."""

    @functools.lru_cache(maxsize=None)
    def between(i: int, j: int) -> tuple:
        if j - i < 2:
            return ((),)
        result = []
        for k in range(i + 1, j):
            for left in between(i, k):
                for right in between(k, j):
                    result.append(left + right + ((i, k, j),))
        return tuple(result)

    return between(0, n - 1)


def triangle_area(p, q, r, spacing=(1.0, 1.0, 1.0)) -> float:
    p, q, r = (np.multiply(vertex, spacing) for vertex in (p, q, r))
    return 0.5 * float(np.linalg.norm(np.cross(q - p, r - p)))


def face_edge_pairings(code: int):
    """List, per face, the possible ways to pair its crossed edges. An edge is a pair of corners."""
    per_face = []
    for axis in range(3):
        for side in (0, 1):
            corners = [c for c in CORNERS if c[axis] == side]
            edges = [
                (p, q) for p, q in itertools.combinations(corners, 2)
                if sum(abs(x - y) for x, y in zip(p, q)) == 1
            ]
            crossed = [e for e in edges if corner_is_inside(code, e[0]) != corner_is_inside(code, e[1])]
            if len(crossed) == 2:
                per_face.append([[tuple(crossed)]])
            elif len(crossed) == 4:
                # Pair the two edges at each corner of one diagonal. Either diagonal is a valid cut.
                options = []
                for diagonal in ([corners[0], corners[3]], [corners[1], corners[2]]):
                    pairs = [tuple(e for e in crossed if corner in e) for corner in diagonal]
                    options.append(pairs)
                per_face.append(options)
    return per_face


def edge_cycles(pairs) -> list[list]:
    """Chain edge pairs (surface segments) into closed cycles of edges."""
    links: dict = {}
    for first, second in pairs:
        links.setdefault(first, []).append(second)
        links.setdefault(second, []).append(first)
    cycles, seen = [], set()
    for start in links:
        if start in seen:
            continue
        cycle = [start]
        seen.add(start)
        while True:
            unvisited = [e for e in links[cycle[-1]] if e not in seen]
            if not unvisited:
                break
            cycle.append(unvisited[0])
            seen.add(unvisited[0])
        cycles.append(cycle)
    return cycles


@functools.lru_cache(maxsize=None)
def oracle_code_triangles(code: int) -> tuple:
    """Triangulate the smallest surface over all face cuts, each polygon into its largest-area triangles."""
    if code in (0, 255):
        return ()
    best_area, best_triangles = math.inf, None
    for choice in itertools.product(*face_edge_pairings(code)):
        pairs = [pair for face_pairs in choice for pair in face_pairs]
        triangles, area = [], 0.0
        for cycle in edge_cycles(pairs):
            points = [tuple((x + y) / 2 for x, y in zip(*edge)) for edge in cycle]
            # A 12-gon has 16796 triangulations, so look triangle areas up instead of recomputing them.
            areas = {
                triple: triangle_area(*(points[i] for i in triple))
                for triple in itertools.combinations(range(len(points)), 3)
            }
            cycle_area, cycle_triangulation = max(
                (sum(areas[triple] for triple in triangulation), triangulation)
                for triangulation in triangulations(len(points))
            )
            triangles += [tuple(points[i] for i in triple) for triple in cycle_triangulation]
            area += cycle_area
        if area < best_area - 1e-9:
            best_area, best_triangles = area, triangles
    return tuple(best_triangles)


def oracle_area_table(spacing) -> np.ndarray:
    return np.array(
        [sum(triangle_area(*t, spacing=spacing) for t in oracle_code_triangles(code)) for code in range(256)]
    )


def oracle_surfels(mask: np.ndarray, spacing, area_table) -> tuple[np.ndarray, np.ndarray]:
    """Collect surfel positions (grid point times spacing) and areas, one 2x2x2 cube at a time."""
    padded = np.pad(mask.astype(bool), 1)
    points, areas = [], []
    for g in itertools.product(*(range(n + 1) for n in mask.shape)):
        # Grid point g is the corner of voxels g - 1 .. g, which are padded[g .. g + 1].
        code = 0
        for a, b, c in CORNERS:
            if padded[g[0] + a, g[1] + b, g[2] + c]:
                code |= 1 << (7 - (4 * a + 2 * b + c))
        if code not in (0, 255):
            points.append(np.multiply(g, spacing))
            areas.append(area_table[code])
    return np.array(points).reshape(-1, 3), np.array(areas)


def oracle_nsd(gt: np.ndarray, seg: np.ndarray, spacing, tolerance=2.0) -> float:
    table = oracle_area_table(spacing)
    gt_points, gt_areas = oracle_surfels(gt, spacing, table)
    seg_points, seg_areas = oracle_surfels(seg, spacing, table)
    if len(gt_points) == 0 and len(seg_points) == 0:
        return math.nan
    if len(gt_points) == 0 or len(seg_points) == 0:
        return 0.0
    gt_to_seg, _ = cKDTree(seg_points).query(gt_points)
    seg_to_gt, _ = cKDTree(gt_points).query(seg_points)
    within = gt_areas[gt_to_seg <= tolerance].sum() + seg_areas[seg_to_gt <= tolerance].sum()
    return within / (gt_areas.sum() + seg_areas.sum())


def random_blob(rng, shape, smoothing=1.5) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), smoothing)
    return field > 0.2 * field.std()


def square_2d(shape, top, left, side) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def data_dir() -> Path:
    return Path(os.environ.get("NPSAM_DATA_DIR", REPO.parent / "shared" / "data"))


def load_real_gts(relative: str) -> tuple[np.ndarray, np.ndarray]:
    path = data_dir() / relative
    if not path.is_file():
        pytest.fail(
            f"real data file {path} is missing; set NPSAM_DATA_DIR to the challenge-format data folder"
        )
    with np.load(path) as npz:
        return npz["gts"], npz["spacing"]


# ---------------------------------------------------------------------------------------------
# Surfel areas and neighbour codes
# ---------------------------------------------------------------------------------------------


def test_area_table_hand_derived_codes():
    s0, s1, s2 = 0.5, 1.25, 3.0
    table = metrics._surfel_area_table((s0, s1, s2))
    cofactor_norm = math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2)

    assert table[0] == 0.0
    assert table[255] == 0.0
    # One corner in: a triangle through three edge midpoints, area vector (1/8, 1/8, 1/8).
    assert table[1] == pytest.approx(cofactor_norm / 8, rel=1e-14)
    assert table[128] == pytest.approx(cofactor_norm / 8, rel=1e-14)
    # The four corners with a = 0 in: a unit square across axis 0.
    assert table[128 + 64 + 32 + 16] == pytest.approx(s1 * s2, rel=1e-14)
    # The four corners with c = 1 in: a unit square across axis 2.
    assert table[64 + 16 + 4 + 1] == pytest.approx(s0 * s1, rel=1e-14)
    # Corners (1,1,0) and (1,1,1): a rectangle, s2 long and half a face diagonal wide.
    assert table[2 + 1] == pytest.approx(s2 * 0.5 * math.hypot(s0, s1), rel=1e-14)
    # Corner (1,1,1) and its three neighbours: a planar hexagon, area vector (3/4, 3/4, 3/4).
    assert table[16 + 4 + 2 + 1] == pytest.approx(0.75 * cofactor_norm, rel=1e-14)


def test_area_table_non_planar_pentagon():
    # Three corners of one face in: a pentagon of a 0.5 triangle plus a fan of area sqrt(3)/4 + sqrt(3)/8
    # (the largest of its triangulations).
    table = metrics._surfel_area_table((1.0, 1.0, 1.0))
    assert table[4 + 2 + 1] == pytest.approx(0.5 + SQRT3 / 4 + SQRT3 / 8, rel=1e-14)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5703125, 0.5703125, 5.0), (2.5, 0.75, 1.25)])
def test_area_table_matches_exhaustive_oracle(spacing):
    np.testing.assert_allclose(
        metrics._surfel_area_table(spacing), oracle_area_table(spacing), rtol=1e-12, atol=0
    )


def test_area_table_is_read_only():
    table = metrics._surfel_area_table((1.0, 2.0, 3.0))
    with pytest.raises(ValueError):
        table[1] = 0.0


def test_neighbour_codes_match_challenge_kernel():
    # The challenge correlates the zero-padded mask with this kernel (largest weight at voxel g - 1).
    kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
    mask = random_blob(np.random.default_rng(3), (9, 11, 7))
    padded_end = np.pad(mask, ((0, 1), (0, 1), (0, 1))).astype(np.uint8)
    expected = ndimage.correlate(padded_end, kernel, mode="constant", cval=0)

    window = np.pad(mask, 1)
    codes = metrics._neighbour_codes(window)
    np.testing.assert_array_equal(codes, expected)


# ---------------------------------------------------------------------------------------------
# NSD against the oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seed, shape, spacing",
    [
        (0, (12, 14, 10), (1.0, 1.0, 1.0)),
        (1, (10, 16, 13), (0.75, 1.25, 2.5)),
        (2, (14, 12, 12), (0.5703125, 0.5703125, 5.0)),
        (3, (9, 15, 11), (3.0, 0.5, 0.5)),
    ],
)
def test_nsd_3d_matches_oracle(seed, shape, spacing):
    rng = np.random.default_rng(seed)
    gt = random_blob(rng, shape)
    seg = random_blob(rng, shape) if seed % 2 else np.roll(gt, 2, axis=seed % 3)

    result = metrics.normalized_surface_dice(gt, seg, spacing)
    expected = oracle_nsd(gt, seg, spacing)
    assert 0.0 < expected < 1.0
    assert result == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [4, 5])
def test_nsd_2d_matches_oracle_slab(seed):
    rng = np.random.default_rng(seed)
    gt = random_blob(rng, (24, 30), smoothing=2.0)
    seg = random_blob(rng, (24, 30), smoothing=2.0)

    result = metrics.normalized_surface_dice(gt, seg, (1.0, 1.0))
    expected = oracle_nsd(gt[..., None], seg[..., None], (1.0, 1.0, 1.0))
    assert 0.0 < expected < 1.0
    assert result == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("tolerance", [0.0, 1.0, 3.7])
def test_nsd_other_tolerances_match_oracle(tolerance):
    rng = np.random.default_rng(6)
    gt = random_blob(rng, (10, 12, 11))
    seg = np.roll(gt, 3, axis=1)
    spacing = (0.75, 1.25, 2.5)

    result = metrics.normalized_surface_dice(gt, seg, spacing, tolerance=tolerance)
    assert result == pytest.approx(oracle_nsd(gt, seg, spacing, tolerance), abs=1e-12)


def test_nsd_cropped_equals_uncropped():
    rng = np.random.default_rng(7)
    gt = np.zeros((40, 36, 30), dtype=bool)
    gt[5:17, 4:18, 3:15] = random_blob(rng, (12, 14, 12))
    seg = np.roll(gt, 1, axis=0)
    # A far false positive makes the cropped and uncropped domains differ a lot.
    seg[35:38, 30:34, 25:29] = True
    spacing = (0.75, 1.25, 2.5)

    (gt_box,) = ndimage.find_objects(gt.view(np.uint8))
    (seg_box,) = ndimage.find_objects(seg.view(np.uint8))
    cropped = metrics._label_surface_dice(gt, seg, True, gt_box, seg_box, spacing, 2.0, crop=True)
    uncropped = metrics._label_surface_dice(gt, seg, True, gt_box, seg_box, spacing, 2.0, crop=False)
    assert 0.0 < uncropped < 1.0
    assert cropped == pytest.approx(uncropped, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Hand-made shapes
# ---------------------------------------------------------------------------------------------


def test_identical_masks_score_one():
    mask = random_blob(np.random.default_rng(8), (10, 12, 9))
    assert metrics.dice(mask, mask) == 1.0
    assert metrics.normalized_surface_dice(mask, mask, (0.7, 0.7, 3.0)) == pytest.approx(1.0, abs=1e-15)


def test_far_apart_squares_score_zero():
    gt = square_2d((60, 60), 2, 2, 10)
    seg = square_2d((60, 60), 40, 40, 10)
    assert metrics.dice(gt, seg) == 0.0
    assert metrics.normalized_surface_dice(gt, seg, (1.0, 1.0)) == 0.0


def test_empty_masks_edge_cases():
    empty = np.zeros((8, 8, 8), dtype=bool)
    blob = empty.copy()
    blob[2:5, 2:5, 2:5] = True

    assert math.isnan(metrics.dice(empty, empty))
    assert math.isnan(metrics.normalized_surface_dice(empty, empty, (1.0, 1.0, 1.0)))
    assert metrics.dice(blob, empty) == 0.0
    assert metrics.dice(empty, blob) == 0.0
    assert metrics.normalized_surface_dice(blob, empty, (1.0, 1.0, 1.0)) == 0.0
    assert metrics.normalized_surface_dice(empty, blob, (1.0, 1.0, 1.0)) == 0.0


def test_square_shifted_one_pixel():
    side = 10
    gt = square_2d((30, 30), 8, 8, side)
    seg = square_2d((30, 30), 9, 8, side)

    # The squares share side - 1 of their side rows.
    assert metrics.dice(gt, seg) == pytest.approx((side - 1) / side, rel=1e-15)
    # Every surfel is at most 1 pixel from the other surface.
    assert metrics.normalized_surface_dice(gt, seg, (1.0, 1.0)) == 1.0


def test_square_shifted_five_pixels_hand_value():
    side = 10
    gt = square_2d((40, 30), 8, 8, side)
    seg = square_2d((40, 30), 13, 8, side)

    # Scored as a one-pixel slab, each of its two grid layers has per square:
    # (side-1)^2 interior points of area 1, 4 (side-1) edge points of area sqrt(2)/2 and
    # 4 corners of area sqrt(3)/8. A GT grid row i is 5 - i from the shifted square, so rows
    # 0, 1 and 2 lie beyond 2 pixels. Row 0 has 2 corners and side-1 edge points. Rows 1 and 2
    # each have 2 edge points and side-1 interior points. The shifted square mirrors this.
    total = (side - 1) ** 2 + 4 * (side - 1) * SQRT2 / 2 + 4 * SQRT3 / 8
    beyond = 2 * SQRT3 / 8 + (side - 1) * SQRT2 / 2 + 2 * (2 * SQRT2 / 2 + (side - 1))
    expected = 1.0 - beyond / total

    assert metrics.dice(gt, seg) == pytest.approx(0.5, rel=1e-15)
    assert metrics.normalized_surface_dice(gt, seg, (1.0, 1.0)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.74260, abs=1e-5)


def test_box_shifted_one_slice_depends_on_spacing_order():
    depth, height, width = 4, 10, 12
    gts = np.zeros((10, 16, 18), dtype=np.uint8)
    gts[3 : 3 + depth, 3 : 3 + height, 3 : 3 + width] = 1
    segs = np.roll(gts, 1, axis=0)
    stored_spacing = np.array([1.0, 1.0, 3.0])  # (x, y, z) as the challenge stores it

    challenge = metrics.score_case(gts, segs, stored_spacing, is_3d=True, spacing_order="challenge")
    physical = metrics.score_case(gts, segs, stored_spacing, is_3d=True, spacing_order="physical")

    # "challenge" puts 1 mm on axis 0, so the one-slice shift is 1 mm and within the tolerance.
    assert challenge["dsc"] == pytest.approx(0.75, rel=1e-15)
    assert challenge["nsd"] == 1.0

    # "physical" puts 3 mm on axis 0, so two parts of each box lie beyond 2 mm. The first is the
    # bottom layer: cap interior points of area 1, 2 (height-1) + 2 (width-1) cap edge points of
    # area sqrt(10)/2 and 4 corners of area sqrt(19)/8. The second is the far cap's interior
    # points more than 2 mm from the side walls.
    caps = 2 * (height - 1) * (width - 1)
    walls = 3 * 2 * (depth - 1) * (width - 1) + 3 * 2 * (depth - 1) * (height - 1)
    edges = 4 * (depth - 1) * 1.5 * SQRT2 + 4 * (height - 1 + width - 1) * math.sqrt(10) / 2
    total = caps + walls + edges + math.sqrt(19)
    beyond = (
        (height - 1) * (width - 1)
        + 2 * (height - 1 + width - 1) * math.sqrt(10) / 2
        + 4 * math.sqrt(19) / 8
        + (height - 5) * (width - 5)
    )
    assert physical["dsc"] == pytest.approx(0.75, rel=1e-15)
    assert physical["nsd"] == pytest.approx(1.0 - beyond / total, rel=1e-12)
    assert physical["nsd"] == pytest.approx(
        oracle_nsd(gts == 1, segs == 1, (3.0, 1.0, 1.0)), abs=1e-12
    )


# ---------------------------------------------------------------------------------------------
# Case scoring
# ---------------------------------------------------------------------------------------------


def test_score_case_low_dsc_sets_nsd_zero():
    gts = square_2d((30, 30), 5, 5, 10).astype(np.uint8)
    segs = square_2d((30, 30), 9, 9, 2).astype(np.uint8)

    result = metrics.score_case(gts, segs, is_3d=False)
    assert result["dsc"] == pytest.approx(2 * 4 / 104, rel=1e-15)
    assert result["nsd"] == 0.0
    assert result["nsd_per_label"] is None
    # The surfaces are close, so the rule and not the geometry makes the NSD 0.
    assert metrics.normalized_surface_dice(gts, segs, (1.0, 1.0)) > 0.1


def test_score_case_dsc_0_2_skips_nsd():
    gts = np.zeros((12, 30), dtype=np.uint8)
    segs = np.zeros((12, 30), dtype=np.uint8)
    gts[5, 0:10] = 1
    segs[5, 8:18] = 1

    result = metrics.score_case(gts, segs, is_3d=False)
    assert result["dsc"] == 0.2
    assert result["nsd"] == 0.0


def test_score_case_label_missing_in_segs():
    gts = np.zeros((30, 30), dtype=np.uint8)
    gts[2:10, 2:10] = 1
    gts[15:25, 15:25] = 2
    segs = np.where(gts == 1, 1, 0).astype(np.uint8)

    result = metrics.score_case(gts, segs, is_3d=False)
    assert result["labels"] == [1, 2]
    assert result["dsc_per_label"] == [1.0, 0.0]
    assert result["dsc"] == 0.5
    assert result["nsd_per_label"] == [1.0, 0.0]
    assert result["nsd"] == 0.5


def test_score_case_label_gap_makes_dsc_nan():
    # Labels run 1 .. gts.max(). Label 2 is in neither map, so its DSC is NaN, and so is the mean.
    gts = np.zeros((30, 30), dtype=np.uint8)
    gts[2:10, 2:10] = 1
    gts[15:25, 15:25] = 3
    result = metrics.score_case(gts, gts.copy(), is_3d=False)

    assert result["labels"] == [1, 2, 3]
    assert result["dsc_per_label"][0] == 1.0
    assert math.isnan(result["dsc_per_label"][1])
    assert math.isnan(result["dsc"])
    assert result["nsd"] == 0.0

    # A label in segs only is a false positive with DSC 0.
    segs = gts.copy()
    segs[12, 12] = 2
    result = metrics.score_case(gts, segs, is_3d=False)
    assert result["dsc_per_label"] == [1.0, 0.0, 1.0]


def test_score_case_ignores_segs_labels_above_gt_max():
    gts = square_2d((20, 20), 2, 2, 8).astype(np.uint16)
    segs = gts.copy()
    segs[15:19, 15:19] = 7
    result = metrics.score_case(gts, segs, is_3d=False)
    assert result["labels"] == [1]
    assert result["dsc"] == 1.0
    assert result["nsd"] == 1.0


def test_score_case_empty_gt():
    gts = np.zeros((10, 10), dtype=np.uint8)
    segs = square_2d((10, 10), 2, 2, 3).astype(np.uint8)
    result = metrics.score_case(gts, segs, is_3d=False)
    assert result["labels"] == []
    assert math.isnan(result["dsc"])
    assert result["nsd"] == 0.0


def test_score_case_agrees_with_per_label_functions_3d():
    rng = np.random.default_rng(9)
    shape = (12, 14, 16)
    gts = np.zeros(shape, dtype=np.uint8)
    gts[random_blob(rng, shape)] = 1
    gts[4:9, 2:7, 9:15] = 2
    segs = np.roll(gts, 1, axis=2)
    stored_spacing = (0.75, 1.25, 2.5)

    result = metrics.score_case(gts, segs, stored_spacing, is_3d=True)
    for index, label in enumerate(result["labels"]):
        gt_mask, seg_mask = gts == label, segs == label
        assert result["dsc_per_label"][index] == metrics.dice(gt_mask, seg_mask)
        assert result["nsd_per_label"][index] == pytest.approx(
            oracle_nsd(gt_mask, seg_mask, stored_spacing), abs=1e-12
        )
    assert result["dsc"] == pytest.approx(np.mean(result["dsc_per_label"]), rel=1e-15)
    assert result["nsd"] == pytest.approx(np.mean(result["nsd_per_label"]), rel=1e-15)


def test_score_case_2d_is_pixel_slab():
    rng = np.random.default_rng(10)
    gts = random_blob(rng, (26, 22), smoothing=2.0).astype(np.uint8)
    segs = np.roll(gts, 3, axis=1)

    result = metrics.score_case(gts, segs, is_3d=False)
    assert result["nsd"] == pytest.approx(
        oracle_nsd(gts[..., None] == 1, segs[..., None] == 1, (1.0, 1.0, 1.0)), abs=1e-12
    )


def test_score_case_accepts_bool_and_mixed_int_dtypes():
    gts = square_2d((20, 20), 3, 3, 9)
    segs = np.roll(gts, 1, axis=0).astype(np.int64)
    result = metrics.score_case(gts, segs, is_3d=False)
    assert result["dsc"] == pytest.approx(8 / 9, rel=1e-15)
    assert result["nsd"] == 1.0


def test_score_case_leaves_inputs_unchanged():
    rng = np.random.default_rng(11)
    gts = random_blob(rng, (8, 10, 12)).astype(np.uint8)
    segs = np.roll(gts, 1, axis=1)
    spacing = np.array([1.0, 1.0, 3.0])
    copies = gts.copy(), segs.copy(), spacing.copy()
    for array in (gts, segs, spacing):
        array.setflags(write=False)

    metrics.score_case(gts, segs, spacing, is_3d=True, spacing_order="physical")
    np.testing.assert_array_equal(gts, copies[0])
    np.testing.assert_array_equal(segs, copies[1])
    np.testing.assert_array_equal(spacing, copies[2])


LABELS_2D = np.zeros((6, 6), dtype=np.uint8)
LABELS_3D = np.zeros((4, 6, 6), dtype=np.uint8)
FLOAT_3D = LABELS_3D.astype(np.float32)
NEGATIVE_3D = LABELS_3D.astype(np.int16) - 1


@pytest.mark.parametrize(
    "gts, segs, spacing, options, error, message",
    [
        (LABELS_3D, LABELS_3D[:3], (1, 1, 1), {"is_3d": True}, ValueError, "shape"),
        (FLOAT_3D, LABELS_3D, (1, 1, 1), {"is_3d": True}, TypeError, "gts has dtype float32"),
        (LABELS_3D, FLOAT_3D, (1, 1, 1), {"is_3d": True}, TypeError, "segs has dtype float32"),
        (NEGATIVE_3D, LABELS_3D, (1, 1, 1), {"is_3d": True}, ValueError, "negative label -1"),
        (LABELS_3D, LABELS_3D, None, {"is_3d": True}, ValueError, "3D cases need the spacing"),
        (LABELS_3D, LABELS_3D, (1, 1), {"is_3d": True}, ValueError, "3 entries"),
        (LABELS_3D, LABELS_3D, (1, 0, 1), {"is_3d": True}, ValueError, "finite and positive"),
        (LABELS_3D, LABELS_3D, (1, -2, 1), {"is_3d": True}, ValueError, "finite and positive"),
        (LABELS_3D, LABELS_3D, (1, float("nan"), 1), {"is_3d": True}, ValueError, "finite and positive"),
        (LABELS_3D, LABELS_3D, ("a", 1, 1), {"is_3d": True}, ValueError, "sequence of 3 numbers"),
        (LABELS_3D, LABELS_3D, (1, 1, 1), {"is_3d": False}, ValueError, r"\(H, W\) label maps"),
        (LABELS_2D, LABELS_2D, None, {"is_3d": True}, ValueError, r"\(D, H, W\) label maps"),
        (LABELS_2D, LABELS_2D, (1, 1, 1), {"is_3d": False}, ValueError, "pass spacing=None"),
        (LABELS_3D, LABELS_3D, (1, 1, 1), {"is_3d": True, "spacing_order": "zyx"}, ValueError, "order"),
        (LABELS_3D, LABELS_3D, (1, 1, 1), {"is_3d": True, "tolerance": -1}, ValueError, "tolerance"),
        (LABELS_3D[:0], LABELS_3D[:0], (1, 1, 1), {"is_3d": True}, ValueError, "empty arrays"),
    ],
)
def test_score_case_rejects_bad_input(gts, segs, spacing, options, error, message):
    with pytest.raises(error, match=message):
        metrics.score_case(gts, segs, spacing, **options)


@pytest.mark.parametrize(
    "gt_mask, seg_mask, spacing, message",
    [
        (np.zeros((4, 4, 4), bool), np.zeros((4, 4), bool), (1, 1, 1), "shape"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool), (1, 1, 1), "gt_mask has dtype float64"),
        (np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool), (1, 1), "3 entries"),
        (np.zeros((4, 4), bool), np.zeros((4, 4), bool), (1, 1, 1), "2 entries"),
        (np.zeros(4, bool), np.zeros(4, bool), (1,), "2D or 3D"),
        (np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool), (1, 1, 0), "finite and positive"),
    ],
)
def test_normalized_surface_dice_rejects_bad_input(gt_mask, seg_mask, spacing, message):
    with pytest.raises((ValueError, TypeError), match=message):
        metrics.normalized_surface_dice(gt_mask, seg_mask, spacing)


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", [REAL_CASE_BRAIN, REAL_CASE_ORGANS])
def test_real_case_scored_against_itself_is_perfect(relative):
    gts, spacing = load_real_gts(relative)
    result = metrics.score_case(gts, gts.copy(), spacing, is_3d=True)

    assert result["labels"] == list(range(1, int(gts.max()) + 1))
    assert result["dsc"] == 1.0
    assert result["nsd"] == pytest.approx(1.0, abs=1e-15)
    assert all(value == 1.0 for value in result["dsc_per_label"])


def test_real_case_cropped_equals_uncropped():
    gts, spacing = load_real_gts(REAL_CASE_ORGANS)
    segs = np.roll(np.roll(gts, 1, axis=0), -2, axis=2)
    spacing = tuple(float(value) for value in spacing)
    gt_boxes = ndimage.find_objects(gts)
    seg_boxes = ndimage.find_objects(segs)

    for label in (1, 7, 20, 33, 40):
        boxes = gt_boxes[label - 1], seg_boxes[label - 1]
        cropped = metrics._label_surface_dice(gts, segs, label, *boxes, spacing, 2.0, crop=True)
        uncropped = metrics._label_surface_dice(gts, segs, label, *boxes, spacing, 2.0, crop=False)
        assert cropped == pytest.approx(uncropped, abs=1e-12), f"label {label}"


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------


def test_import_loads_no_model_code():
    code = (
        "import sys, npsam.metrics; "
        "print(sorted(m for m in ('numba', 'torch', 'npsam.model', 'npsam.kernels') if m in sys.modules))"
    )
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=environment, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
