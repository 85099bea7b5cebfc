"""Challenge metrics: Dice similarity coefficient (DSC) and normalized surface Dice (NSD).

`score_case` scores one case the way the CVPR 2024 "MedSAM on Laptop" evaluation script does
(`evaluation/compute_metrics.py` in bowang-lab/MedSAM, which imports `SurfaceDice.py`, a copy of
DeepMind's surface-distance code):

- DSC of label i is 2|G ∩ S| / (|G| + |S|) with G = (gts == i), S = (segs == i), and NaN when both are
  empty. The case DSC is the plain mean over labels 1 .. gts.max(), so one NaN label makes it NaN.
  Labels in `segs` above gts.max() are not scored.
- NSD (surface Dice at a tolerance of 2) is computed only when the case DSC is above 0.2, otherwise the
  case NSD is 0. A NaN case DSC therefore gives NSD 0. The case NSD is the plain mean over labels.
- 3D cases use the tolerance in millimetres with the case's spacing. 2D (H, W) label maps are scored
  as (H, W, 1) volumes with spacing (1, 1, 1), so the tolerance is 2 pixels. NOTE: such a one-voxel slab
  has top and bottom faces, so the 2D NSD also counts the in-plane overlap of the two masks and not only
  their contours. This matches the challenge's numbers, not a contour-only NSD.

Surface representation. Surface elements ("surfels") sit on the grid of voxel corners: grid point g
is the shared corner of the 2x2x2 voxels g - 1 + (a, b, c), a, b, c in {0, 1}. Its 8-bit neighbour
code has bit 7 - (4a + 2b + c) set when that voxel is foreground, and it is a surfel unless the code
is 0 or 255.
The surfel's area is the marching-cubes surface inside that cube, with vertices at edge midpoints and
the voxel spacing applied. `distance_transform_edt` with `sampling=spacing` on the complement of one
surface gives every surfel of the other surface its distance to that surface. NSD is then
(GT surfel area within the tolerance of the predicted surface + predicted surfel area within the
tolerance of the GT surface) / (total GT surfel area + total predicted surfel area).

Marching cubes leaves two choices open, and the per-code areas depend on both:
1. A face whose diagonal corners agree (two in, two out) can be cut either way. Each cube takes the
   combination of face cuts whose surface has the smallest area.
2. A non-planar polygon (5 or 6 vertices in the chosen surfaces) is split into the triangles of
   largest total area.
Both rules were chosen because together they reproduce the per-code areas of the lookup table in
DeepMind's `surface-distance` 0.1 from PyPI, the table the challenge script copies. In a one-off
comparison all 256 codes agreed to 1e-15 (relative) at 200 random anisotropic spacings, and
whole-case NSDs agreed to 3e-16 on random blobs and on the 3D cases of the project's test data.
The test suite does not depend on that package. It checks hand-derived areas and an exhaustive
search that applies the same two rules.

Spacing order. The challenge npz files store `spacing` in (x, y, z) order (SimpleITK's GetSpacing)
while the arrays are (z, y, x), and the official script passes that spacing unchanged, so axis 0 (z)
gets the x spacing. `score_case(spacing_order="challenge")`, the default, does the same so that
scores match the official ones. `spacing_order="physical"` reverses the spacing to (z, y, x) for
physically correct distances. The two orders differ only when the z spacing differs from the x spacing.

Edge cases of the per-label functions: DSC and NSD are NaN when both masks are empty, and NSD is 0 when
exactly one is empty (its surfels are infinitely far from the empty surface). NOTE: copies of the
challenge's surface-Dice function differ for two empty masks: DeepMind's original divides 0 by 0
(NaN), and some copies add 1e-12 to the denominator (0). `score_case` never reaches that branch,
because a label missing from both maps already makes the case DSC NaN and its NSD 0.

Speed. A label is never compared voxel by voxel over the whole volume. `scipy.ndimage.find_objects`
gives every label's bounding box in one pass. Each direction of the surface distance then works on the
source label's box grown by floor(tolerance / spacing) + 1 voxels per axis. A surfel within the
tolerance of that box lies inside the grown box, so cropping changes no distance at or below the
tolerance and the score is unchanged.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["dice", "normalized_surface_dice", "score_case", "NSD_TOLERANCE", "NSD_MIN_CASE_DSC"]

logger = logging.getLogger(__name__)

# Tolerance of the challenge's NSD: millimetres in 3D, pixels in 2D.
NSD_TOLERANCE = 2.0

# The challenge computes a case's NSD only when its DSC is above this value and scores it 0 otherwise.
NSD_MIN_CASE_DSC = 0.2

SpacingOrder = Literal["challenge", "physical"]

# Corner (a, b, c) of a grid point's 2x2x2 neighbourhood is voxel g - 1 + (a, b, c).
_CORNERS = tuple(itertools.product((0, 1), repeat=3))
_BORDERLESS_CODES = (0, 255)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def dice(gt_mask: np.ndarray, seg_mask: np.ndarray) -> float:
    """Compute the Dice similarity coefficient of two binary masks (nonzero = foreground).

    Returns NaN when both masks are empty, as the challenge does.
    """
    gt_mask, seg_mask = _check_mask_pair(gt_mask, seg_mask, allowed_ndims=None)
    gt_mask = gt_mask.astype(bool, copy=False)
    seg_mask = seg_mask.astype(bool, copy=False)

    volume_sum = np.count_nonzero(gt_mask) + np.count_nonzero(seg_mask)
    if volume_sum == 0:
        return math.nan
    intersection = np.count_nonzero(gt_mask & seg_mask)
    return 2.0 * intersection / volume_sum


def normalized_surface_dice(
    gt_mask: np.ndarray,
    seg_mask: np.ndarray,
    spacing: Sequence[float],
    tolerance: float = NSD_TOLERANCE,
) -> float:
    """Compute the normalized surface Dice of two binary masks (nonzero = foreground).

    `spacing` has one positive entry per mask axis, in the masks' axis order, in the unit of
    `tolerance`. 3D masks are scored as they are. 2D masks are scored like the challenge's 2D cases:
    as (H, W, 1) volumes whose added axis has spacing 1.

    Returns NaN when both masks are empty and 0.0 when exactly one is.
    """
    gt_mask, seg_mask = _check_mask_pair(gt_mask, seg_mask, allowed_ndims=(2, 3))
    spacing_3d = _check_spacing(spacing, num_axes=gt_mask.ndim, name="spacing")
    tolerance = _check_tolerance(tolerance)
    if gt_mask.ndim == 2:
        gt_mask, seg_mask = gt_mask[..., None], seg_mask[..., None]
        spacing_3d = spacing_3d + (1.0,)

    gt_mask = gt_mask.astype(bool, copy=False)
    seg_mask = seg_mask.astype(bool, copy=False)
    (gt_box,) = ndimage.find_objects(gt_mask.view(np.uint8), max_label=1)
    (seg_box,) = ndimage.find_objects(seg_mask.view(np.uint8), max_label=1)
    return _label_surface_dice(gt_mask, seg_mask, True, gt_box, seg_box, spacing_3d, tolerance)


def score_case(
    gts: np.ndarray,
    segs: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    is_3d: bool,
    spacing_order: SpacingOrder = "challenge",
    tolerance: float = NSD_TOLERANCE,
) -> dict:
    """Score one case (label maps, 0 = background) with the challenge's DSC and NSD.

    gts, segs: (D, H, W) for 3D cases, (H, W) for 2D cases, bool or integer dtype.
    spacing: the npz's `spacing`, (x, y, z) in mm as the challenge stores it. Required in 3D and must
        be None in 2D, where the challenge scores in pixels with spacing (1, 1, 1).
    spacing_order: "challenge" applies the spacing to the array axes as stored, like the official
        script; "physical" reverses it to the arrays' (z, y, x) order.

    Returns a dict with
        "dsc": mean DSC over labels 1 .. gts.max() (NaN if a label is in neither map),
        "nsd": mean NSD over the same labels, or 0.0 when "dsc" is not above 0.2,
        "labels": the scored label values,
        "dsc_per_label": one DSC per label,
        "nsd_per_label": one NSD per label, or None when the NSD was not computed.
    """
    gts, segs = _check_label_maps(gts, segs, is_3d)
    spacing_3d = _case_spacing(spacing, is_3d, spacing_order)
    tolerance = _check_tolerance(tolerance)
    if not is_3d:
        gts, segs = gts[..., None], segs[..., None]

    # find_objects needs integer labels, and viewing bool as uint8 copies nothing.
    gts, segs = _bool_as_uint8(gts), _bool_as_uint8(segs)

    # One pass per map gives every label's bounding box, so no step below scans the whole volume
    # once per label.
    num_labels = int(gts.max())
    labels = list(range(1, num_labels + 1))
    gt_boxes = ndimage.find_objects(gts, max_label=num_labels)
    seg_boxes = ndimage.find_objects(segs, max_label=num_labels)

    if not labels:
        logger.warning("ground truth has no foreground label; DSC is NaN and NSD 0 as in the challenge")
    dsc_per_label = [
        _label_dice(gts, segs, label, gt_boxes[label - 1], seg_boxes[label - 1]) for label in labels
    ]
    dsc = float(np.mean(dsc_per_label)) if labels else math.nan

    # NaN > 0.2 is False, so a NaN DSC also gives NSD 0, as in the challenge.
    nsd_per_label = None
    nsd = 0.0
    if dsc > NSD_MIN_CASE_DSC:
        nsd_per_label = [
            _label_surface_dice(
                gts, segs, label, gt_boxes[label - 1], seg_boxes[label - 1], spacing_3d, tolerance
            )
            for label in labels
        ]
        nsd = float(np.mean(nsd_per_label))

    return {
        "dsc": dsc,
        "nsd": nsd,
        "labels": labels,
        "dsc_per_label": dsc_per_label,
        "nsd_per_label": nsd_per_label,
    }


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_dtype(array: np.ndarray, name: str) -> None:
    if array.dtype != bool and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"{name} has dtype {array.dtype}, but labels and masks must be bool or integer "
            f"(0 = background); convert whole-number values with .astype(np.uint8) or "
            f".astype(np.uint16), and threshold probabilities first"
        )


def _check_pair_shapes(first: np.ndarray, second: np.ndarray, names: tuple[str, str]) -> None:
    if first.shape != second.shape:
        raise ValueError(
            f"{names[0]} has shape {first.shape} but {names[1]} has shape {second.shape}; "
            f"both must cover the same image"
        )
    if first.size == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty arrays (shape {first.shape})")


def _check_mask_pair(gt_mask, seg_mask, allowed_ndims) -> tuple[np.ndarray, np.ndarray]:
    gt_mask, seg_mask = np.asarray(gt_mask), np.asarray(seg_mask)
    _check_dtype(gt_mask, "gt_mask")
    _check_dtype(seg_mask, "seg_mask")
    _check_pair_shapes(gt_mask, seg_mask, ("gt_mask", "seg_mask"))
    if allowed_ndims is not None and gt_mask.ndim not in allowed_ndims:
        raise ValueError(f"masks must be 2D or 3D, got shape {gt_mask.shape}")
    return gt_mask, seg_mask


def _check_label_maps(gts, segs, is_3d: bool) -> tuple[np.ndarray, np.ndarray]:
    gts, segs = np.asarray(gts), np.asarray(segs)
    _check_dtype(gts, "gts")
    _check_dtype(segs, "segs")
    _check_pair_shapes(gts, segs, ("gts", "segs"))

    expected_ndim = 3 if is_3d else 2
    if gts.ndim != expected_ndim:
        layout = "(D, H, W)" if is_3d else "(H, W)"
        raise ValueError(
            f"is_3d={is_3d} needs {layout} label maps, got shape {gts.shape}; "
            f"check is_3d (the challenge takes it from the '3D' case-name prefix)"
        )

    for name, array in (("gts", gts), ("segs", segs)):
        if array.dtype != bool and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
            raise ValueError(f"{name} contains the negative label {array.min()}; labels must be >= 0")
    return gts, segs


def _bool_as_uint8(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint8) if array.dtype == bool else array


def _check_spacing(spacing, num_axes: int, name: str) -> tuple[float, ...]:
    if spacing is None:
        raise ValueError(f"{name} is missing; give one voxel size per axis")
    try:
        values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a sequence of {num_axes} numbers, got {spacing!r}") from error
    if values.size != num_axes:
        raise ValueError(f"{name} must have {num_axes} entries, one per axis, got {list(values)}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name} must be finite and positive, got {list(values)}")
    return tuple(float(value) for value in values)


def _case_spacing(spacing, is_3d: bool, spacing_order: str) -> tuple[float, float, float]:
    if spacing_order not in ("challenge", "physical"):
        raise ValueError(f"spacing_order must be 'challenge' or 'physical', got {spacing_order!r}")
    if not is_3d:
        if spacing is not None:
            raise ValueError(
                f"2D cases are scored in pixels with spacing (1, 1, 1) as the challenge does, "
                f"but spacing={spacing!r} was given; pass spacing=None"
            )
        return (1.0, 1.0, 1.0)
    if spacing is None:
        raise ValueError("3D cases need the spacing (x, y, z) in mm that the npz stores under 'spacing'")
    spacing_3d = _check_spacing(spacing, num_axes=3, name="spacing")
    if spacing_order == "physical":
        spacing_3d = spacing_3d[::-1]
    return spacing_3d


def _check_tolerance(tolerance) -> float:
    tolerance = float(tolerance)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
    return tolerance


# ---------------------------------------------------------------------------------------------
# Per-label DSC and NSD inside bounding boxes
# ---------------------------------------------------------------------------------------------


def _box_intersection(first: tuple[slice, ...], second: tuple[slice, ...]) -> tuple[slice, ...] | None:
    box = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(first, second))
    if any(axis.start >= axis.stop for axis in box):
        return None
    return box


def _label_dice(gts, segs, label, gt_box, seg_box) -> float:
    if gt_box is None and seg_box is None:
        return math.nan
    if gt_box is None or seg_box is None:
        return 0.0

    gt_count = np.count_nonzero(gts[gt_box] == label)
    seg_count = np.count_nonzero(segs[seg_box] == label)
    intersection = 0
    common_box = _box_intersection(gt_box, seg_box)
    if common_box is not None:
        intersection = np.count_nonzero((gts[common_box] == label) & (segs[common_box] == label))
    return 2.0 * intersection / (gt_count + seg_count)


def _label_surface_dice(gts, segs, label, gt_box, seg_box, spacing, tolerance, crop=True) -> float:
    """Compute the NSD of `label` in two 3D label maps, given the label's boxes from find_objects.

    crop=False works on the whole surfel grid. It exists so that tests can check the cropping.
    """
    if gt_box is None and seg_box is None:
        return math.nan
    if gt_box is None or seg_box is None:
        return 0.0

    area_table = _surfel_area_table(spacing)
    gt_within, gt_area = _surface_overlap(gts, segs, label, gt_box, spacing, tolerance, area_table, crop)
    seg_within, seg_area = _surface_overlap(segs, gts, label, seg_box, spacing, tolerance, area_table, crop)
    return (gt_within + seg_within) / (gt_area + seg_area)


def _surface_overlap(source, target, label, source_box, spacing, tolerance, area_table, crop):
    """Return (area of source surfels within `tolerance` of the target surface, total source area)."""
    grid_shape = np.array(source.shape) + 1

    # Surfels of the voxel range [start, stop) lie on grid points start .. stop.
    box_start = np.array([axis.start for axis in source_box])
    box_stop = np.array([axis.stop for axis in source_box]) + 1
    if crop:
        margin = np.floor(tolerance / np.array(spacing)).astype(np.int64) + 1
        grid_start = np.maximum(box_start - margin, 0)
        grid_stop = np.minimum(box_stop + margin, grid_shape)
    else:
        grid_start, grid_stop = np.zeros(3, np.int64), grid_shape

    source_codes = _neighbour_codes(_label_window(source, label, grid_start - 1, grid_stop))
    target_codes = _neighbour_codes(_label_window(target, label, grid_start - 1, grid_stop))
    source_border = _is_border(source_codes)
    target_border = _is_border(target_codes)

    source_areas = area_table[source_codes[source_border]]
    total_area = source_areas.sum()
    if not target_border.any():
        return 0.0, total_area

    # Distance of every grid point to the nearest target surfel, in the unit of the spacing.
    distances = ndimage.distance_transform_edt(~target_border, sampling=spacing)
    within = distances[source_border] <= tolerance
    return source_areas[within].sum(), total_area


def _label_window(labels: np.ndarray, label, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Return labels[start:stop] == label per axis as bool, with False outside the volume."""
    window = np.zeros(tuple(stop - start), dtype=bool)
    inside_start = np.maximum(start, 0)
    inside_stop = np.minimum(stop, labels.shape)
    if np.any(inside_stop <= inside_start):
        return window

    source = tuple(slice(a, b) for a, b in zip(inside_start, inside_stop))
    target = tuple(slice(a - s, b - s) for a, b, s in zip(inside_start, inside_stop, start))
    window[target] = labels[source] == label
    return window


def _neighbour_codes(window: np.ndarray) -> np.ndarray:
    """Compute the 8-bit neighbour code of every grid point whose 2x2x2 voxels lie in `window`.

    window: (N0 + 1, N1 + 1, N2 + 1) bool voxels -> (N0, N1, N2) uint8 codes. code[g] reads
    window[g + (a, b, c)] for a, b, c in {0, 1}.
    """
    n0, n1, n2 = (size - 1 for size in window.shape)
    codes = np.zeros((n0, n1, n2), dtype=np.uint8)
    # A bool array viewed as uint8 contains 0 or 1, so shifting it sets one bit without a copy.
    voxels = window.view(np.uint8)
    for a, b, c in _CORNERS:
        corner_voxels = voxels[a : a + n0, b : b + n1, c : c + n2]
        codes |= corner_voxels << np.uint8(_corner_bit(a, b, c))
    return codes


def _is_border(codes: np.ndarray) -> np.ndarray:
    return (codes != _BORDERLESS_CODES[0]) & (codes != _BORDERLESS_CODES[1])


def _corner_bit(a: int, b: int, c: int) -> int:
    return 7 - (4 * a + 2 * b + c)


# ---------------------------------------------------------------------------------------------
# Surfel areas per neighbour code (marching cubes with vertices at edge midpoints)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Return the read-only (256,) float64 surface area of each neighbour code at a voxel spacing."""
    area_vectors, codes = _area_vectors_by_code()
    s0, s1, s2 = spacing

    # Scaling axis k by s_k scales a triangle's area vector by the cofactors (s1 s2, s0 s2, s0 s1).
    scaled = area_vectors * np.array([s1 * s2, s0 * s2, s0 * s1])
    triangle_areas = np.sqrt(np.sum(scaled * scaled, axis=1))
    table = np.bincount(codes, weights=triangle_areas, minlength=256)
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=1)
def _area_vectors_by_code() -> tuple[np.ndarray, np.ndarray]:
    """Return the unit-spacing area vector (normal times area) of every triangle, and its code.

    (T, 3) float64 vectors and (T,) int64 codes, over the triangles of all 256 codes.
    """
    vectors, codes = [], []
    for code in range(256):
        for triangle in _code_triangles(code):
            vectors.append(_triangle_area_vector(triangle))
            codes.append(code)
    return np.array(vectors, dtype=np.float64), np.array(codes, dtype=np.int64)


def _code_triangles(code: int) -> list[tuple[tuple[float, ...], ...]]:
    """Triangulate the marching-cubes surface of one neighbour code.

    Of the ways to cut the ambiguous faces, the one with the smallest surface wins. Each polygon is
    split into the triangles of largest total area, which matters only for non-planar polygons.
    Vertices are edge midpoints in cube coordinates (0, 0.5 or 1 per axis).
    """
    if code in _BORDERLESS_CODES:
        return []

    inside = {corner: bool(code >> _corner_bit(*corner) & 1) for corner in _CORNERS}
    faces = _cube_faces()
    num_ambiguous = sum(_is_ambiguous(face, inside) for face in faces)

    best_triangles, best_area = None, math.inf
    for cut_inside in itertools.product((True, False), repeat=num_ambiguous):
        cuts = iter(cut_inside)
        segments = []
        for face in faces:
            cut = next(cuts) if _is_ambiguous(face, inside) else True
            segments.extend(_face_segments(face, inside, cut))

        triangles = []
        for polygon in _polygons(segments):
            triangles.extend(_largest_area_triangulation(polygon))
        area = sum(_triangle_area(triangle) for triangle in triangles)
        # The margin keeps the first of equal-area choices, because float noise here is about 1e-16.
        if area < best_area - 1e-9:
            best_triangles, best_area = triangles, area
    return best_triangles


@functools.lru_cache(maxsize=1)
def _cube_faces() -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """Return the cube's 6 faces, each as its 4 corners in cyclic order."""
    faces = []
    for axis in range(3):
        other_axes = [k for k in range(3) if k != axis]
        for side in (0, 1):
            face = []
            for u, v in ((0, 0), (1, 0), (1, 1), (0, 1)):
                corner = [0, 0, 0]
                corner[axis], corner[other_axes[0]], corner[other_axes[1]] = side, u, v
                face.append(tuple(corner))
            faces.append(tuple(face))
    return tuple(faces)


def _is_ambiguous(face, inside) -> bool:
    states = [inside[corner] for corner in face]
    return states[0] == states[2] and states[1] == states[3] and states[0] != states[1]


def _face_segments(face, inside, cut_inside: bool) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Return the surface's segments on one face as pairs of edge midpoints.

    On an ambiguous face, cut_inside=True gives each inside corner its own segment (the inside
    corners stay apart), and cut_inside=False does so for the outside corners.
    """
    # Edge k joins face corners k and k + 1.
    crossed = [k for k in range(4) if inside[face[k]] != inside[face[(k + 1) % 4]]]
    midpoints = {k: _midpoint(face[k], face[(k + 1) % 4]) for k in crossed}
    if len(crossed) == 2:
        return [(midpoints[crossed[0]], midpoints[crossed[1]])]
    if len(crossed) == 4:
        # Cutting off corner k joins the midpoints of its two edges, k - 1 and k.
        first = 0 if inside[face[0]] == cut_inside else 1
        return [
            (midpoints[(corner - 1) % 4], midpoints[corner]) for corner in (first, first + 2)
        ]
    return []


def _midpoint(p, q) -> tuple[float, ...]:
    return tuple((a + b) / 2 for a, b in zip(p, q))


def _polygons(segments) -> list[list[tuple[float, ...]]]:
    """Chain segments into closed polygons. Every midpoint is shared by exactly two segments."""
    neighbours: dict[tuple[float, ...], list[tuple[float, ...]]] = {}
    for p, q in segments:
        neighbours.setdefault(p, []).append(q)
        neighbours.setdefault(q, []).append(p)

    polygons, visited = [], set()
    for start in neighbours:
        if start in visited:
            continue
        polygon, previous, current = [start], None, start
        visited.add(start)
        while True:
            following = [p for p in neighbours[current] if p != previous][0]
            if following == start:
                break
            polygon.append(following)
            visited.add(following)
            previous, current = current, following
        polygons.append(polygon)
    return polygons


def _largest_area_triangulation(polygon) -> list[tuple[tuple[float, ...], ...]]:
    """Split a polygon into triangles of largest total area (dynamic programming over diagonals)."""
    n = len(polygon)
    best: dict[tuple[int, int], tuple[float, list]] = {(i, i + 1): (0.0, []) for i in range(n - 1)}
    for width in range(2, n):
        for i in range(n - width):
            j = i + width
            options = []
            for k in range(i + 1, j):
                triangle = (polygon[i], polygon[k], polygon[j])
                area = _triangle_area(triangle)
                left_area, left = best[(i, k)]
                right_area, right = best[(k, j)]
                options.append((left_area + right_area + area, left + right + [triangle]))
            best[(i, j)] = max(options, key=lambda option: option[0])
    return best[(0, n - 1)][1]


def _triangle_area_vector(triangle) -> tuple[float, float, float]:
    """Half the cross product of two edges: the normal scaled to the triangle's area.

    Plain floats, because numpy's cross product costs microseconds per call on 3-vectors. Vertex
    coordinates are multiples of 0.5, so every value here is exact.
    """
    p, q, r = triangle
    u = (q[0] - p[0], q[1] - p[1], q[2] - p[2])
    v = (r[0] - p[0], r[1] - p[1], r[2] - p[2])
    return (
        0.5 * (u[1] * v[2] - u[2] * v[1]),
        0.5 * (u[2] * v[0] - u[0] * v[2]),
        0.5 * (u[0] * v[1] - u[1] * v[0]),
    )


def _triangle_area(triangle) -> float:
    return math.hypot(*_triangle_area_vector(triangle))
