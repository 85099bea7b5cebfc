"""Build the 14 runtime cases of SwiftMedSAM's Table 5 from real images, in the challenge .npz format.

The paper (Kong et al., CVPR 2024 "MedSAM on Laptop" workshop, Table 5) times 14 cases of the
challenge's private validation set, known only by name, size and number of objects. This module
rebuilds cases of exactly those sizes and object counts from the real images in the data folder
($NPSAM_DATA_DIR, default `<repo>/../shared/data`). Nothing is blank: every pixel comes from a real
image, resampled, zero-padded or tiled.

2D cases (`imgs` (H, W, 3) uint8, `boxes` (N, 4) int64 [x_min, y_min, x_max, y_max]):
- a single image is resized with area interpolation to fit the size, keeping its aspect ratio. It is
  centred on a zero background, and its real boxes go through the same transform;
- X-ray: 4 chest X-rays, each resized to 106x106, are tiled in turn (3 rows of 6 whole tiles, plus
  slivers at the bottom and right edges); the 34 objects are a seeded choice among the 36 real lung
  boxes of the whole tiles;
- microscopy: the nuclei image is tiled at its own scale and cropped to the size; the objects are a
  seeded choice among the real nucleus boxes that lie wholly inside the image.

3D cases (`imgs` (D, H, W) uint8, `boxes` (N, 6) int64 [x_min, y_min, z_min, x_max, y_max, z_max],
`spacing` (3,) float64 in mm, in (x, y, z) order as in the challenge files):
- a real volume is resampled linearly along z to D slices and with area interpolation in-plane to
  fit H x W (aspect kept, centred, zero padding); the slice spacing is the source's z coverage / D;
- each object's x/y extent is a real object box mapped into the frame. Its z extent is drawn from a
  realistic craniocaudal size range (below) with a seeded generator and centred on the real box's
  mapped z centre, shifted to lie inside the volume.
- PET: no PET volume exists in the data, so the PET case is a CT volume resampled to the PET grid and
  smoothed with a Gaussian of sigma 1.5 voxels. It is not a PET image.

The CT organ boxes come from the TotalSegmentator example (a model's pseudo labels) and lie on lung CT
content, so they do not outline those organs in the image. The timing does not depend on it, but
the masks are not anatomical.

Seed: `DEFAULT_SEED` = 5. Each case uses `np.random.default_rng((seed, crc32(case name)))`, so a case
does not depend on which other cases are built. Same seed and data -> identical .npz bytes (the zip
entries get a fixed timestamp).

z-extent ranges in mm (approximate adult craniocaudal sizes; the brain ranges bracket the extents of
the Colin27 AAL labels in the data folder) and in slices for each case's spacing:

| case | z spacing (mm) | objects: range in mm -> slices |
|---|---|---|
| 3DBox_CT_0566 | 1.063 | liver 150-250 -> 141-235; spleen 90-130 -> 85-122; kidney 100-130 -> 94-122 (x2); pancreas 40-80 -> 38-75; lung tumour 20-60 -> 19-56 |
| 3DBox_CT_0888 | 1.013 | liver 150-250 -> 148-237; spleen 90-130 -> 89-128; kidney 100-130 -> 99-128 (x2); stomach 100-200 -> 99-198; gallbladder 70-100 -> 69-99 |
| 3DBox_CT_0860 | 1.240 | lung tumour 20-60 -> 16-48 |
| 3DBox_MR_0621 | 1.574 | hippocampus 35-45 -> 22-29 (x2); caudate 35-50 -> 22-32 (x2); thalamus 20-30 -> 13-19 (x2) |
| 3DBox_MR_0121 | 2.828 | putamen 25-35 -> 9-12 (x2); pallidum 12-20 -> 4-7 (x2); amygdala 15-25 -> 5-9 (x2) |
| 3DBox_MR_0179 | 1.857 | brain oedema 40-90 -> 22-48 |
| 3DBox_PET_0001 | 1.155 | tumour 20-60 -> 17-52 |

A drawn extent of n slices is round(mm / spacing), at least 2 and at most D. Run
`python benchmarks/synthetic_cases.py --describe` for every drawn box.

Usage: python benchmarks/synthetic_cases.py [--out DIR] [--cases NAME ...] [--seed 5] [--describe]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SEED",
    "SYNTHESIS_VERSION",
    "OBJECT_KINDS",
    "CASES",
    "QUICK_CROP",
    "CaseSpec",
    "CasePlan",
    "resolve_data_dir",
    "default_cases_dir",
    "plan_case",
    "build_case",
    "crop_case",
    "case_geometry",
    "write_case_npz",
    "ensure_cases",
    "ensure_ignored_folder",
    "describe_plan",
]

DEFAULT_SEED = 5
# Bump when a change alters the bytes of any case, so that cached case folders are not reused.
SYNTHESIS_VERSION = 1
DATA_DIR_VARIABLE = "NPSAM_DATA_DIR"
# Fixed zip entry timestamp (the earliest a zip file can store), so that rebuilding gives the same bytes.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
# Smallest z extent of a 3D box: the challenge's reference script asserts z_min < z_max.
MIN_BOX_SLICES = 2
PET_SMOOTHING_SIGMA = 1.5

# Craniocaudal extent ranges in mm.
OBJECT_KINDS: dict[str, tuple[float, float]] = {
    "liver": (150.0, 250.0),
    "spleen": (90.0, 130.0),
    "kidney": (100.0, 130.0),
    "pancreas": (40.0, 80.0),
    "stomach": (100.0, 200.0),
    "gallbladder": (70.0, 100.0),
    "lung tumour": (20.0, 60.0),
    "tumour": (20.0, 60.0),
    "hippocampus": (35.0, 45.0),
    "amygdala": (15.0, 25.0),
    "caudate": (35.0, 50.0),
    "putamen": (25.0, 35.0),
    "pallidum": (12.0, 20.0),
    "thalamus": (20.0, 30.0),
    "brain oedema": (40.0, 90.0),
}

# Real source files, relative to the data folder.
SOURCES = {
    "totalseg_ct": "PSEUDO_GT_totalsegmentator_example/npz/imgs/3DBox_CT_totalseg_example_PSEUDOGT.npz",
    "lung1_ct": "pyradiomics_3d/npz/imgs/3DBox_CT_pyradiomics_lung1.npz",
    "lung2_ct": "pyradiomics_3d/npz/imgs/3DBox_CT_pyradiomics_lung2.npz",
    "colin27_mr": "colin27_aal_mricron/npz/imgs/3DBox_MR_colin27_aal_subcortical.npz",
    "brats_mr": "brats2021_sammed3d/npz/imgs/3DBox_MR_brats2021_01646_flair_edema.npz",
    "hc18_us": "hc18_fetal_us/npz/imgs/2DBox_US_hc18_001.npz",
    "ph2_dermoscopy": "ph2_dermoscopy/npz/imgs/2DBox_Dermoscopy_ph2_IMD003.npz",
    "kvasir_endoscopy": "kvasir_seg/npz/imgs/2DBox_Endoscopy_kvasir_cju0sxqiclckk08551ycbwhno.npz",
    "drive_fundus": "drive_fundus/npz/imgs/2DBox_Fundus_drive_21.npz",
    "dsb_nuclei": "stardist_dsb2018_nuclei/npz/imgs/2DBox_Microscopy_dsb2018_stardist.npz",
    "cxr_1": "cxr_lungs_imlab/npz/imgs/2DBox_XRay_cxrlung_1.npz",
    "cxr_2": "cxr_lungs_imlab/npz/imgs/2DBox_XRay_cxrlung_2.npz",
    "cxr_3": "cxr_lungs_imlab/npz/imgs/2DBox_XRay_cxrlung_3.npz",
    "cxr_4": "cxr_lungs_imlab/npz/imgs/2DBox_XRay_cxrlung_4.npz",
}

# Box rows of named objects in the source files (0-based, label - 1).
TOTALSEG_ROWS = {"spleen": 0, "kidney right": 1, "kidney left": 2, "gallbladder": 3, "liver": 4, "stomach": 5, "pancreas": 6}
COLIN27_ROWS = {
    "hippocampus left": 0, "hippocampus right": 1, "amygdala left": 2, "amygdala right": 3,
    "caudate left": 4, "caudate right": 5, "putamen left": 6, "putamen right": 7,
    "pallidum left": 8, "pallidum right": 9, "thalamus left": 10, "thalamus right": 11,
}


@dataclass(frozen=True)
class ObjectSpec:
    """One 3D object: its size range `kind`, and the real box (`source`, `row`) giving its x/y extent."""

    label: str
    kind: str
    source: str
    row: int


def _totalseg(label: str, kind: str) -> ObjectSpec:
    return ObjectSpec(label, kind, "totalseg_ct", TOTALSEG_ROWS[label])


def _colin27(label: str) -> ObjectSpec:
    return ObjectSpec(label, label.split()[0], "colin27_mr", COLIN27_ROWS[label])


@dataclass(frozen=True)
class CaseSpec:
    """One Table 5 case: name, size, object count, the paper's seconds and how to build it.

    `layout` is "volume" (3D resample), "fit" (one 2D image resized to fit) or "tiles" (2D tiling).
    `paper_seconds` maps model names to the paper's runtime on an AMD EPYC 7402.
    """

    name: str
    shape: tuple[int, ...]
    num_objects: int
    paper_seconds: dict[str, float]
    layout: str
    content: tuple[str, ...]
    objects: tuple[ObjectSpec, ...] = ()
    tile_size: int = 0
    pet_like: bool = False
    description: str = ""

    @property
    def is_3d(self) -> bool:
        return self.name.startswith("3D")


def _seconds(litemedsam: float, v1: float, v2: float) -> dict[str, float]:
    return {"litemedsam": litemedsam, "swiftmedsam-v1": v1, "swiftmedsam-v2": v2}


_CT_ABDOMEN = (
    _totalseg("liver", "liver"),
    _totalseg("spleen", "spleen"),
    _totalseg("kidney right", "kidney"),
    _totalseg("kidney left", "kidney"),
)

CASES: dict[str, CaseSpec] = {
    spec.name: spec
    for spec in (
        CaseSpec(
            "3DBox_CT_0566", (287, 512, 512), 6, _seconds(499.2, 343.2, 331.9), "volume", ("lung2_ct",),
            _CT_ABDOMEN + (_totalseg("pancreas", "pancreas"), ObjectSpec("lung tumour", "lung tumour", "lung2_ct", 0)),
            description="lung CT (PyRadiomics lung2) resampled along z; organ boxes from the TotalSegmentator example",
        ),
        CaseSpec(
            "3DBox_CT_0888", (237, 512, 512), 6, _seconds(114.1, 97.4, 94.1), "volume", ("lung1_ct",),
            _CT_ABDOMEN + (_totalseg("stomach", "stomach"), _totalseg("gallbladder", "gallbladder")),
            description="lung CT (PyRadiomics lung1) resampled along z; organ boxes from the TotalSegmentator example",
        ),
        CaseSpec(
            "3DBox_CT_0860", (246, 512, 512), 1, _seconds(17.7, 15.9, 14.2), "volume", ("lung2_ct",),
            (ObjectSpec("lung tumour", "lung tumour", "lung2_ct", 0),),
            description="lung CT (PyRadiomics lung2) resampled along z; its real tumour box",
        ),
        CaseSpec(
            "3DBox_MR_0621", (115, 400, 400), 6, _seconds(630.2, 166.8, 145.0), "volume", ("colin27_mr",),
            tuple(_colin27(f"{name} {side}") for name in ("hippocampus", "caudate", "thalamus") for side in ("left", "right")),
            description="T1 brain MR (Colin27) resampled; its real AAL deep-grey boxes",
        ),
        CaseSpec(
            "3DBox_MR_0121", (64, 290, 320), 6, _seconds(119.4, 94.7, 90.7), "volume", ("colin27_mr",),
            tuple(_colin27(f"{name} {side}") for name in ("putamen", "pallidum", "amygdala") for side in ("left", "right")),
            description="T1 brain MR (Colin27) resampled; its real AAL deep-grey boxes",
        ),
        CaseSpec(
            "3DBox_MR_0179", (84, 512, 512), 1, _seconds(17.7, 14.7, 13.3), "volume", ("brats_mr",),
            (ObjectSpec("brain oedema", "brain oedema", "brats_mr", 0),),
            description="FLAIR brain MR (BraTS 2021) resampled; its real oedema box",
        ),
        CaseSpec(
            "3DBox_PET_0001", (264, 200, 200), 1, _seconds(31.9, 9.9, 8.6), "volume", ("lung2_ct",),
            (ObjectSpec("tumour", "tumour", "lung2_ct", 0),),
            pet_like=True,
            description="NOT PET: lung CT (PyRadiomics lung2) resampled to the PET grid and Gaussian-smoothed",
        ),
        CaseSpec(
            "2DBox_US_0525", (256, 256, 3), 1, _seconds(1.8, 1.7, 1.6), "fit", ("hc18_us",),
            description="fetal head ultrasound (HC18) resized to fit",
        ),
        CaseSpec(
            "2DBox_X-Ray_0053", (320, 640, 3), 34, _seconds(9.8, 9.3, 9.8), "tiles", ("cxr_1", "cxr_2", "cxr_3", "cxr_4"),
            tile_size=106, description="4 chest X-rays tiled at 106x106; 34 of the 36 real lung boxes",
        ),
        CaseSpec(
            "2DBox_Dermoscopy_0003", (3024, 4032, 3), 1, _seconds(7.9, 8.4, 7.9), "fit", ("ph2_dermoscopy",),
            description="dermoscopy (PH2) resized to fit",
        ),
        CaseSpec(
            "2DBox_Endoscopy_0086", (480, 560, 3), 1, _seconds(6.1, 2.7, 2.6), "fit", ("kvasir_endoscopy",),
            description="colonoscopy (Kvasir-SEG) resized to fit",
        ),
        CaseSpec(
            "2DBox_Fundus_0003", (2048, 2048, 3), 1, _seconds(2.6, 4.2, 4.0), "fit", ("drive_fundus",),
            description="fundus (DRIVE) resized to fit",
        ),
        CaseSpec(
            "2DBox_Microscope_0008", (1536, 2040, 3), 19, _seconds(19.5, 18.1, 18.0), "tiles", ("dsb_nuclei",),
            tile_size=512, description="nuclei (DSB 2018) tiled at their own scale; 19 of the real nucleus boxes",
        ),
        CaseSpec(
            "2DBox_Microscope_0016", (1920, 2560, 3), 241, _seconds(257.5, 253.1, 267.1), "tiles", ("dsb_nuclei",),
            tile_size=512, description="nuclei (DSB 2018) tiled at their own scale; 241 of the real nucleus boxes",
        ),
    )
}


@dataclass(frozen=True)
class CropSpec:
    """A cropped 3D case for short runs: `num_slices` slices around the first `num_objects` objects."""

    name: str
    source_case: str
    num_slices: int
    num_objects: int


QUICK_CROP = CropSpec("3DBox_MR_0121-crop4", "3DBox_MR_0121", num_slices=4, num_objects=2)


@dataclass
class CasePlan:
    """Everything about a case except its pixels: boxes, spacing and, for 3D, each object's drawn z extent."""

    spec: CaseSpec
    boxes: np.ndarray  # (N, 4) or (N, 6) int64
    spacing: np.ndarray | None  # (3,) float64, x/y/z in mm, 3D only
    # Per-object notes, e.g. "liver 150-250 mm (141-235 slices): drawn 212.4 mm = 200 slices, z 43-242".
    object_notes: list[str] = field(default_factory=list)
    # Transform of the content into the frame: (scale_y, scale_x, offset_y, offset_x, new_h, new_w).
    fit: tuple = ()


# ---- Reading the real sources ----


def resolve_data_dir() -> Path:
    """Return $NPSAM_DATA_DIR, or `<repo>/../shared/data` when it is unset."""
    configured = os.environ.get(DATA_DIR_VARIABLE)
    return Path(configured) if configured else REPO.parent / "shared" / "data"


def default_cases_dir(seed: int = DEFAULT_SEED) -> Path:
    """Return `benchmarks/.cases/v<SYNTHESIS_VERSION>-seed<seed>` (ignored by git through its own .gitignore)."""
    return REPO / "benchmarks" / ".cases" / f"v{SYNTHESIS_VERSION}-seed{seed}"


def _source_path(data_dir: Path, source: str) -> Path:
    path = data_dir / SOURCES[source]
    if not path.is_file():
        raise FileNotFoundError(
            f"real source {path} not found; set {DATA_DIR_VARIABLE} to the data folder that contains "
            f"{SOURCES[source].split('/')[0]}/"
        )
    return path


def _read_array(data_dir: Path, source: str, key: str) -> np.ndarray:
    with np.load(_source_path(data_dir, source), allow_pickle=False) as archive:
        return archive[key]


def _read_shape(data_dir: Path, source: str, key: str = "imgs") -> tuple[int, ...]:
    """Return the shape of one array of an .npz file from its .npy header, without decompressing the data."""
    with zipfile.ZipFile(_source_path(data_dir, source)) as archive, archive.open(f"{key}.npy") as entry:
        version = np.lib.format.read_magic(entry)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(entry)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(entry)
    return tuple(int(size) for size in shape)


# ---- Geometry ----


def _fit_transform(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple:
    """Return (scale_y, scale_x, offset_y, offset_x, new_h, new_w) fitting source_hw into target_hw, centred."""
    (height, width), (out_height, out_width) = source_hw, target_hw
    scale = min(out_height / height, out_width / width)
    new_height = min(out_height, max(1, round(height * scale)))
    new_width = min(out_width, max(1, round(width * scale)))
    offset_y = (out_height - new_height) // 2
    offset_x = (out_width - new_width) // 2
    return new_height / height, new_width / width, offset_y, offset_x, new_height, new_width


def _map_interval(low: float, high: float, scale: float, offset: float, size: int) -> tuple[int, int]:
    """Map an inclusive pixel interval [low, high] through x -> x * scale + offset, as pixel edges."""
    first = math.floor(low * scale + offset)
    last = math.ceil((high + 1) * scale + offset) - 1
    first = min(max(first, 0), size - 1)
    last = min(max(last, first + 1), size - 1)
    return first, last


def _map_box_2d(box, fit: tuple, frame_hw: tuple[int, int]) -> list[int]:
    """Map [x_min, y_min, x_max, y_max] of the source image into the frame."""
    scale_y, scale_x, offset_y, offset_x = fit[:4]
    x_min, x_max = _map_interval(box[0], box[2], scale_x, offset_x, frame_hw[1])
    y_min, y_max = _map_interval(box[1], box[3], scale_y, offset_y, frame_hw[0])
    return [x_min, y_min, x_max, y_max]


def case_rng(seed: int, name: str) -> np.random.Generator:
    """Return the generator of one case: seeded by (seed, crc32 of the case name)."""
    return np.random.default_rng((seed, zlib.crc32(name.encode())))


# ---- Plans (boxes without pixels) ----


def plan_case(name: str, data_dir: Path | None = None, seed: int = DEFAULT_SEED) -> CasePlan:
    """Return the boxes, spacing and object notes of a Table 5 case, reading only box arrays and headers."""
    spec = CASES[name]
    data_dir = resolve_data_dir() if data_dir is None else Path(data_dir)
    rng = case_rng(seed, name)
    if spec.layout == "volume":
        return _plan_volume(spec, data_dir, rng)
    if spec.layout == "fit":
        return _plan_fit(spec, data_dir)
    return _plan_tiles(spec, data_dir, rng)


def _plan_volume(spec: CaseSpec, data_dir: Path, rng: np.random.Generator) -> CasePlan:
    depth, height, width = spec.shape
    source_depth, source_height, source_width = _read_shape(data_dir, spec.content[0])
    source_spacing = _read_array(data_dir, spec.content[0], "spacing")  # (x, y, z) mm
    fit = _fit_transform((source_height, source_width), (height, width))
    scale_y, scale_x = fit[0], fit[1]
    spacing = np.array(
        [source_spacing[0] / scale_x, source_spacing[1] / scale_y, source_spacing[2] * source_depth / depth],
        dtype=np.float64,
    )

    boxes, notes = [], []
    for obj in spec.objects:
        box, note = _place_object(obj, data_dir, spec.shape, fit, (source_height, source_width), spacing[2], rng)
        boxes.append(box)
        notes.append(note)
    return CasePlan(spec, np.array(boxes, dtype=np.int64), spacing, notes, fit)


def _place_object(obj, data_dir, shape, fit, content_hw, z_spacing, rng) -> tuple[list[int], str]:
    """Return the 3D box of one object and a note on its drawn z extent."""
    depth, height, width = shape
    source_box = _read_array(data_dir, obj.source, "boxes")[obj.row]
    source_depth, source_height, source_width = _read_shape(data_dir, obj.source)

    # x/y: normalise the real box to its own image, then map it into the content's fitted region.
    _, _, offset_y, offset_x, new_height, new_width = fit
    to_content_x = new_width / source_width
    to_content_y = new_height / source_height
    x_min, x_max = _map_interval(source_box[0], source_box[3], to_content_x, offset_x, width)
    y_min, y_max = _map_interval(source_box[1], source_box[4], to_content_y, offset_y, height)

    # z: a drawn extent centred on the real box's centre, mapped to this volume's slices.
    low_mm, high_mm = OBJECT_KINDS[obj.kind]
    extent_mm = float(rng.uniform(low_mm, high_mm))
    num_slices = int(min(depth, max(MIN_BOX_SLICES, round(extent_mm / z_spacing))))
    centre = ((source_box[2] + source_box[5] + 1) / 2) * depth / source_depth - 0.5
    z_min = int(min(max(round(centre - (num_slices - 1) / 2), 0), depth - num_slices))
    z_max = z_min + num_slices - 1

    low_slices = max(MIN_BOX_SLICES, round(low_mm / z_spacing))
    high_slices = min(depth, round(high_mm / z_spacing))
    note = (
        f"{obj.label}: {obj.kind} {low_mm:g}-{high_mm:g} mm ({low_slices}-{high_slices} slices); drawn "
        f"{extent_mm:.1f} mm = {num_slices} slices, z {z_min}-{z_max}"
    )
    return [x_min, y_min, z_min, x_max, y_max, z_max], note


def _plan_fit(spec: CaseSpec, data_dir: Path) -> CasePlan:
    source_height, source_width = _read_shape(data_dir, spec.content[0])[:2]
    fit = _fit_transform((source_height, source_width), spec.shape[:2])
    source_boxes = _read_array(data_dir, spec.content[0], "boxes")
    if len(source_boxes) != spec.num_objects:
        raise ValueError(f"{spec.name}: the source has {len(source_boxes)} boxes, {spec.num_objects} are needed")
    boxes = [_map_box_2d(box, fit, spec.shape[:2]) for box in source_boxes]
    return CasePlan(spec, np.array(boxes, dtype=np.int64), None, [], fit)


def _tile_grid(spec: CaseSpec) -> list[tuple[int, int, str]]:
    """Return (top, left, source) of every tile that covers the image, row by row, cycling through sources.

    Tiles at the bottom and right edges are cut by the image border.
    """
    height, width = spec.shape[:2]
    rows = math.ceil(height / spec.tile_size)
    columns = math.ceil(width / spec.tile_size)
    tiles = []
    for index in range(rows * columns):
        row, column = divmod(index, columns)
        tiles.append((row * spec.tile_size, column * spec.tile_size, spec.content[index % len(spec.content)]))
    return tiles


def _tile_fit(spec: CaseSpec, data_dir: Path, source: str) -> tuple:
    return _fit_transform(_read_shape(data_dir, source)[:2], (spec.tile_size, spec.tile_size))


def _plan_tiles(spec: CaseSpec, data_dir: Path, rng: np.random.Generator) -> CasePlan:
    """Collect the real boxes of every tile that lie wholly inside the image, then choose N of them."""
    height, width = spec.shape[:2]
    candidates = []
    for top, left, source in _tile_grid(spec):
        fit = _tile_fit(spec, data_dir, source)
        for box in _read_array(data_dir, source, "boxes"):
            x_min, y_min, x_max, y_max = _map_box_2d(box, fit, (spec.tile_size, spec.tile_size))
            if top + y_max < height and left + x_max < width:
                candidates.append([left + x_min, top + y_min, left + x_max, top + y_max])
    if len(candidates) < spec.num_objects:
        raise ValueError(f"{spec.name}: only {len(candidates)} real boxes fit, {spec.num_objects} are needed")
    chosen = np.sort(rng.choice(len(candidates), size=spec.num_objects, replace=False))
    return CasePlan(spec, np.array([candidates[i] for i in chosen], dtype=np.int64), None, [], ())


# ---- Pixels ----


def _resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W) or (H, W, C) uint8 with area interpolation (linear when growing), any C."""
    from npsam.preprocessing import resize_area_uint8

    return resize_area_uint8(np.ascontiguousarray(image), size)


def _resample_z(volume: np.ndarray, depth: int) -> np.ndarray:
    """Resample a (d, H, W) uint8 volume linearly along z to `depth` slices, aligning slice centres."""
    source_depth = volume.shape[0]
    out = np.empty((depth,) + volume.shape[1:], dtype=np.uint8)
    for z in range(depth):
        position = min(max((z + 0.5) * source_depth / depth - 0.5, 0.0), source_depth - 1.0)
        below = int(math.floor(position))
        above = min(below + 1, source_depth - 1)
        weight = np.float32(position - below)
        blended = (np.float32(1) - weight) * volume[below] + weight * volume[above]  # (H, W) float32
        out[z] = np.rint(blended).astype(np.uint8)
    return out


def _place(content: np.ndarray, frame_shape: tuple[int, ...], offset_y: int, offset_x: int) -> np.ndarray:
    frame = np.zeros(frame_shape, dtype=np.uint8)
    height, width = content.shape[:2]
    frame[offset_y : offset_y + height, offset_x : offset_x + width] = content
    return frame


def build_case(plan: CasePlan, data_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Return the arrays of a planned case: `imgs`, `boxes` and, for 3D, `spacing`."""
    data_dir = resolve_data_dir() if data_dir is None else Path(data_dir)
    spec = plan.spec
    if spec.layout == "volume":
        imgs = _build_volume(spec, plan.fit, data_dir)
    elif spec.layout == "fit":
        source = _read_array(data_dir, spec.content[0], "imgs")
        new_height, new_width = plan.fit[4:6]
        imgs = _place(_resize_uint8(source, (new_height, new_width)), spec.shape, plan.fit[2], plan.fit[3])
    else:
        imgs = _build_tiles(spec, data_dir)
    arrays = {"imgs": imgs, "boxes": plan.boxes.copy()}
    if plan.spacing is not None:
        arrays["spacing"] = plan.spacing.copy()
    return arrays


def _build_volume(spec: CaseSpec, fit: tuple, data_dir: Path) -> np.ndarray:
    depth, height, width = spec.shape
    source = _read_array(data_dir, spec.content[0], "imgs")  # (d, h, w)
    resampled = _resample_z(source, depth)  # (D, h, w)
    new_height, new_width = fit[4:6]
    # Slices as channels, so one call resizes the whole stack in-plane.
    in_plane = _resize_uint8(resampled.transpose(1, 2, 0), (new_height, new_width))  # (new_h, new_w, D)
    volume = _place(in_plane, (height, width, depth), fit[2], fit[3]).transpose(2, 0, 1)  # (D, H, W)
    if spec.pet_like:
        from scipy.ndimage import gaussian_filter

        smoothed = gaussian_filter(volume.astype(np.float32), sigma=PET_SMOOTHING_SIGMA)
        volume = np.clip(np.rint(smoothed), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(volume)


def _build_tiles(spec: CaseSpec, data_dir: Path) -> np.ndarray:
    height, width = spec.shape[:2]
    image = np.zeros(spec.shape, dtype=np.uint8)
    for top, left, source in _tile_grid(spec):
        fit = _tile_fit(spec, data_dir, source)
        tile = _place(
            _resize_uint8(_read_array(data_dir, source, "imgs"), fit[4:6]),
            (spec.tile_size, spec.tile_size, 3), fit[2], fit[3],
        )
        visible_height = min(spec.tile_size, height - top)
        visible_width = min(spec.tile_size, width - left)
        image[top : top + visible_height, left : left + visible_width] = tile[:visible_height, :visible_width]
    return image


def crop_window(boxes: np.ndarray, depth: int, crop: CropSpec) -> tuple[int, int]:
    """Return the slices [start, stop) of a crop: `crop.num_slices` around the first objects' mean z centre."""
    first_objects = boxes[: crop.num_objects]
    centre = int(round(float(np.mean((first_objects[:, 2] + first_objects[:, 5]) / 2))))
    start = min(max(centre - crop.num_slices // 2, 0), depth - crop.num_slices)
    return start, start + crop.num_slices


def crop_boxes(boxes: np.ndarray, start: int, stop: int, crop: CropSpec) -> np.ndarray:
    """Return the first `crop.num_objects` 3D boxes clipped to slices [start, stop) and shifted to start at 0."""
    clipped = boxes[: crop.num_objects].copy()
    clipped[:, 2] = np.clip(clipped[:, 2], start, stop - 1) - start
    clipped[:, 5] = np.clip(clipped[:, 5], start, stop - 1) - start
    if np.any(clipped[:, 5] <= clipped[:, 2]):
        raise ValueError(f"{crop.name}: an object covers fewer than 2 of slices {start}-{stop - 1}")
    return clipped


def crop_case(arrays: dict[str, np.ndarray], crop: CropSpec) -> dict[str, np.ndarray]:
    """Cut a 3D case to the slices of `crop_window` and keep its first objects, clipped."""
    start, stop = crop_window(arrays["boxes"], arrays["imgs"].shape[0], crop)
    return {
        "imgs": np.ascontiguousarray(arrays["imgs"][start:stop]),
        "boxes": crop_boxes(arrays["boxes"], start, stop, crop),
        "spacing": arrays["spacing"].copy(),
    }


def case_geometry(name: str, data_dir: Path | None = None, seed: int = DEFAULT_SEED) -> tuple[tuple[int, ...], np.ndarray]:
    """Return (shape of imgs, boxes) of a Table 5 case or of `QUICK_CROP`, without building pixels."""
    if name == QUICK_CROP.name:
        plan = plan_case(QUICK_CROP.source_case, data_dir, seed)
        depth = plan.spec.shape[0]
        start, stop = crop_window(plan.boxes, depth, QUICK_CROP)
        return (stop - start,) + plan.spec.shape[1:], crop_boxes(plan.boxes, start, stop, QUICK_CROP)
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; choose from {sorted(CASES) + [QUICK_CROP.name]}")
    plan = plan_case(name, data_dir, seed)
    return plan.spec.shape, plan.boxes


# ---- Writing ----


def write_case_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays as a compressed .npz with fixed zip timestamps, atomically (temp file + os.replace).

    `np.savez_compressed` stamps each entry with the current time, so two identical builds would
    differ in bytes; this writer does not.
    """
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    temporary = Path(handle.name)
    try:
        with handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, array in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_TIMESTAMP)
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, np.ascontiguousarray(array), allow_pickle=False)
        _apply_default_permissions(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _apply_default_permissions(path: Path) -> None:
    # NamedTemporaryFile creates the file with mode 0600; give it the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def ensure_ignored_folder(folder: Path) -> None:
    """Create `folder` and, at the `.cases` root, a .gitignore that ignores everything in it."""
    folder.mkdir(parents=True, exist_ok=True)
    root = next((parent for parent in (folder, *folder.parents) if parent.name == ".cases"), None)
    if root is not None and not (root / ".gitignore").exists():
        (root / ".gitignore").write_text("# Synthetic benchmark cases and caches, rebuilt on demand.\n*\n")


def ensure_cases(
    names, folder: Path | None = None, data_dir: Path | None = None, seed: int = DEFAULT_SEED, rebuild: bool = False
) -> dict[str, Path]:
    """Build the named cases (Table 5 names or `QUICK_CROP.name`) into `folder` unless already there.

    Returns {name: path of its .npz}. Existing files are reused unless `rebuild` is set: the folder
    name records the seed and `SYNTHESIS_VERSION`.
    """
    folder = default_cases_dir(seed) if folder is None else Path(folder)
    ensure_ignored_folder(folder)
    paths = {}
    for name in names:
        path = folder / f"{name}.npz"
        if rebuild or not path.is_file():
            logger.info("building case %s into %s", name, folder)
            write_case_npz(path, _build_named(name, data_dir, seed))
        paths[name] = path
    return paths


def _build_named(name: str, data_dir: Path | None, seed: int) -> dict[str, np.ndarray]:
    if name == QUICK_CROP.name:
        plan = plan_case(QUICK_CROP.source_case, data_dir, seed)
        return crop_case(build_case(plan, data_dir), QUICK_CROP)
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; choose from {sorted(CASES) + [QUICK_CROP.name]}")
    return build_case(plan_case(name, data_dir, seed), data_dir)


def describe_plan(plan: CasePlan) -> str:
    """Return a few lines on a case: size, objects, content, spacing and each drawn z extent."""
    spec = plan.spec
    count = len(plan.boxes)
    lines = [f"{spec.name} {spec.shape}, {count} object{'' if count == 1 else 's'}: {spec.description}"]
    if plan.spacing is not None:
        lines[0] += f"; spacing (x, y, z) = ({', '.join(f'{value:.3f}' for value in plan.spacing)}) mm"
    lines += [f"  - {note}" for note in plan.object_notes]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the Table 5 runtime cases from the real data folder.")
    parser.add_argument("--out", type=Path, help="output folder (default: benchmarks/.cases/v<version>-seed<seed>)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), help="case names (default: all 14)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the box z extents (default: {DEFAULT_SEED})")
    parser.add_argument("--rebuild", action="store_true", help="rebuild cases that already exist")
    parser.add_argument("--describe", action="store_true", help="print the plans (boxes, spacing, z extents) and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    for name in args.cases:
        if name in CASES:
            print(describe_plan(plan_case(name, seed=args.seed)))
    if args.describe:
        return 0
    paths = ensure_cases(args.cases, args.out, seed=args.seed, rebuild=args.rebuild)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
