"""Medical image files as npsam input: NIfTI, DICOM series and PNG/JPEG/TIFF images, with intensity windows.

Each format needs an optional extra, imported only when a file of that format is read or written:
NIfTI needs `pip install "npsam[nifti]"` (nibabel), DICOM `pip install "npsam[dicom]"` (pydicom) and
PNG/JPEG/TIFF `pip install "npsam[images]"` (Pillow and tifffile). A missing extra raises
`MissingDependencyError`, an ImportError whose message names the install command.

Reading (`read_image_file`)
- NIfTI-1 and NIfTI-2 (`.nii`, `.nii.gz`) with the header's scaling (scl_slope, scl_inter) applied.
  A 2-D file is read as a volume of one slice. A 4-D file is accepted only when its 4th axis has length 1.
- A DICOM series: a folder of DICOM files (not searched recursively) or one DICOM file. Files that are
  not DICOM, or DICOM without pixel data (DICOMDIR, RT structure sets), are skipped. Slices are sorted
  by ImagePositionPatient projected on the slice normal (the cross product of the two
  ImageOrientationPatient directions), else by InstanceNumber. RescaleSlope and RescaleIntercept are
  applied, so CT is in Hounsfield units. More than one SeriesInstanceUID, different slice sizes or
  orientations, two slices at one position and multi-frame files raise `ImageFileError`.
  MONOCHROME1 slices are inverted so that larger values are brighter. Compressed pixel data that
  no installed pydicom plugin can decode raises `ImageFileError` naming the missing decoder packages.
- PNG, JPEG and TIFF 2D images. Grey stays (H, W), RGB is (H, W, 3), RGBA and LA drop the alpha
  channel, palette (P) and CMYK images become RGB, and 1-bit images become 0/255 grey. TIFF is read
  with tifffile, which keeps 16-bit and float samples. A compressed TIFF that tifffile cannot decode
  without the `imagecodecs` package is read through Pillow instead.

Axis convention
- npsam's volume is (D, H, W) = (z, y, x). A NIfTI array as nibabel loads it is (i, j, k), so npsam's
  volume is its transpose (k, j, i). A box [x0, y0, z0, x1, y1, z1] is therefore in the voxel indices
  i, j, k of the file as stored, the voxel coordinates that ITK-SNAP, FSLeyes and 3D Slicer display.
- DICOM: x is the column, y the row and z the slice index after sorting (0 = the lowest position
  along the slice normal).
- 2D images: x is the column and y the row, as in the challenge's 2D boxes.
- `ImageFile.spacing` is in (x, y, z) order, the order of the challenge's `spacing` arrays.
- `ImageFile.affine` maps (i, j, k, 1) = (x, y, z, 1) voxel indices to RAS+ millimetres as NIfTI
  does. For DICOM it is built from the DICOM geometry (LPS) by negating the first two world axes.

Intensity to uint8 (`to_uint8`), the model input
- A window (level L, width W, in the image's units, Hounsfield units for CT): clip to
  [L - W/2, L + W/2], scale to 0..255 and truncate to uint8, as MedSAM's `pre_CT_MR.py` does for CT.
  That script scales by the minimum and maximum of the clipped image, which equal the window's ends
  whenever the image reaches both of them, as a CT with air and bone does.
  `WINDOW_PRESETS` gives (L, W) of common CT reading windows. `soft-tissue` (40, 400) is the
  MedSAM and challenge default.
- `percentile`: clip to the 0.5 and 99.5 percentiles of the voxels above 0, scale to 0..255,
  truncate, and set voxels that were exactly 0 back to 0, as `pre_CT_MR.py` does for MR. An image
  with no voxel above 0 uses the percentiles of all voxels. A constant image gives all zeros.
- `none`: uint8 is used as is. Other dtypes are accepted only when every value is a whole number in
  0..255.
- `auto` (default): DICOM Modality CT gives `soft-tissue`. A uint8 image is used as is. An image of
  unknown modality (NIfTI, TIFF) with whole-number values from -900 or below up to at most 4095
  looks like Hounsfield units and gets `soft-tissue`. Anything else gets `percentile`. The choice and its reason are logged at INFO.
- NaN or infinite values raise `ImageFileError`. They have no place in a window or a percentile,
  so replace them first (for example with `numpy.nan_to_num`).

Writing (`write_label_file`), always through a temporary file in the output folder and os.replace
- NIfTI and DICOM input: a NIfTI label map with the input's affine. For NIfTI input the header is a
  copy of the input's, with the data type set to the label dtype, scaling removed and intent
  NIFTI_INTENT_LABEL. For DICOM input, qform and sform are the built affine with code 1 (scanner).
- 2D input: a palettised PNG (mode "P"): the pixel value is the label and the palette is
  `npsam.overlay.label_palette`, the colours of the overlays: label 0 black and labels 1..255
  distinct visible colours. More than 255 labels do not fit a palette,
  so they are written as a 16-bit grey PNG (exact values, but dark in an ordinary viewer; `npsam
  segment` then also writes a coloured copy with `npsam.overlay.write_label_png`).
"""

from __future__ import annotations

import importlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npsam.output_files import check_output_path, same_file, write_atomically

__all__ = [
    "ImageFile",
    "ImageFileError",
    "MissingDependencyError",
    "WINDOW_PRESETS",
    "AUTO_HU_MAXIMUM",
    "AUTO_HU_THRESHOLD",
    "read_image_file",
    "is_image_file",
    "parse_window",
    "choose_window",
    "to_uint8",
    "label_file_name",
    "write_label_file",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIX = ".dcm"

# Level and width in Hounsfield units of common CT reading windows.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
AUTO_WINDOWS = ("auto", "percentile", "none")
# `auto` treats a whole-number image of unknown modality as CT in HU when it reaches this value or
# below (air is about -1000 HU; MR volumes can have smaller negative values after processing, such as
# -610 in nibabel's anatomical.nii) and stays within the 12-bit range of CT values.
AUTO_HU_THRESHOLD = -900.0
AUTO_HU_MAXIMUM = 4095.0
PERCENTILE_RANGE = (0.5, 99.5)

# Optional module -> (extra that installs it, file format it reads).
_EXTRAS = {
    "nibabel": ("nifti", "NIfTI"),
    "pydicom": ("dicom", "DICOM"),
    "PIL": ("images", "PNG/JPEG/TIFF"),
    "tifffile": ("images", "TIFF"),
}
# Positions closer than this along the slice normal, in mm, count as one position.
_POSITION_TOLERANCE = 1e-3
_ORIENTATION_TOLERANCE = 1e-4


class ImageFileError(ValueError):
    """An image file or DICOM folder that cannot be read, converted or written as requested."""


class MissingDependencyError(ImportError):
    """An optional package that a file format needs is not installed."""


@dataclass(frozen=True)
class ImageFile:
    """An image read from a NIfTI file, a DICOM series or a PNG/JPEG/TIFF file.

    `array` contains the raw intensities (read-only): (D, H, W) = (z, y, x) for a volume, with
    (D, H, W, 3) for colour DICOM, and (H, W) or (H, W, 3) for a 2D image. `spacing` is the voxel
    or pixel size in mm in (x, y, z) or (x, y) order (1.0 where the file has no spacing). `affine` is
    the (4, 4) voxel-to-RAS+ matrix of a volume and None for a 2D image. `header` is a copy of a
    NIfTI input's nibabel header, else None. `modality` is the DICOM Modality (such as "CT" or "MR"),
    else None.
    """

    path: Path
    format: str  # "nifti", "dicom" or "image"
    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None
    header: Any = None
    modality: str | None = None

    @property
    def is_volume(self) -> bool:
        return self.format in ("nifti", "dicom")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the label map: (D, H, W) for a volume, (H, W) for a 2D image."""
        return tuple(self.array.shape[: 3 if self.is_volume else 2])

    @property
    def name(self) -> str:
        """The input's name without its format suffix: "scan" for "scan.nii.gz"."""
        name = self.path.name
        for suffix in NIFTI_SUFFIXES[::-1] + PLAIN_IMAGE_SUFFIXES + (DICOM_SUFFIX,):
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return name


def _import_extra(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        extra, file_format = _EXTRAS[module_name]
        raise MissingDependencyError(
            f"{file_format} files need the optional package '{module_name}', which is not installed; "
            f'install it with: pip install "npsam[{extra}]"'
        ) from error


# ---- Recognising inputs ----


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def _has_dicom_preamble(path: Path) -> bool:
    """Return True when `path` starts with the 128-byte DICOM preamble and the "DICM" prefix."""
    try:
        with open(path, "rb") as file:
            file.seek(128)
            return file.read(4) == b"DICM"
    except OSError:
        return False


def _folder_has_dicom(folder: Path) -> bool:
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and (_has_dicom_preamble(path) or _has_suffix(path, (DICOM_SUFFIX,))):
            return True
    return False


def is_image_file(path: str | os.PathLike) -> bool:
    """Return True when `read_image_file` handles `path`: a NIfTI, DICOM, PNG, JPEG or TIFF file, or a DICOM folder.

    Files are recognised by suffix, and DICOM files also by the "DICM" prefix at byte 128. A folder
    counts when it directly contains at least one DICOM file.
    """
    path = Path(path)
    if path.is_dir():
        return _folder_has_dicom(path)
    if not path.is_file():
        return False
    if _has_suffix(path, NIFTI_SUFFIXES + PLAIN_IMAGE_SUFFIXES + (DICOM_SUFFIX,)):
        return True
    return _has_dicom_preamble(path)


def read_image_file(path: str | os.PathLike) -> ImageFile:
    """Read a NIfTI file, a DICOM series (folder or file) or a PNG/JPEG/TIFF image into an `ImageFile`.

    The format is chosen by suffix, a folder is a DICOM series, and a file without a known suffix is
    read as DICOM when it has the "DICM" prefix. Raises FileNotFoundError for a missing path,
    `MissingDependencyError` when the format's extra is not installed and `ImageFileError` for a
    file that is corrupt, unsupported or inconsistent (see the module docstring).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} not found")
    if path.is_dir() or _has_suffix(path, (DICOM_SUFFIX,)):
        return _read_dicom(path)
    if _has_suffix(path, NIFTI_SUFFIXES):
        return _read_nifti(path)
    if _has_suffix(path, (".tif", ".tiff")):
        return _read_tiff(path)
    if _has_suffix(path, PLAIN_IMAGE_SUFFIXES):
        return _read_with_pillow(path)
    if _has_dicom_preamble(path):
        return _read_dicom(path)
    raise ImageFileError(
        f"{path}: unknown image format; give a NIfTI (.nii, .nii.gz), DICOM (.dcm or a folder of DICOM "
        f"files), PNG, JPEG or TIFF file"
    )


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


# ---- NIfTI ----


def _read_nifti(path: Path) -> ImageFile:
    nibabel = _import_extra("nibabel")
    try:
        image = nibabel.load(str(path))
        if not isinstance(image, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
            raise ImageFileError(f"{path} is a {type(image).__name__}, not a NIfTI image")
        data = np.asanyarray(image.dataobj)
    except ImageFileError:
        raise
    except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as error:
        raise ImageFileError(
            f"{path} is not a readable NIfTI file ({type(error).__name__}: {error}); the file is truncated "
            f"or corrupt, so copy or export it again"
        ) from error

    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ImageFileError(
            f"{path}: NIfTI data type {data.dtype} is not supported; store the image as integers or real floats"
        )
    data = _nifti_to_3d(path, data)
    volume = data.transpose(2, 1, 0)  # (i, j, k) -> (k, j, i) = (z, y, x)
    zooms = [float(zoom) for zoom in image.header.get_zooms()[:3]]
    spacing = tuple(zooms + [1.0] * (3 - len(zooms)))
    return ImageFile(
        path=path,
        format="nifti",
        array=_read_only(volume),
        spacing=spacing,
        affine=np.array(image.affine, dtype=np.float64),
        header=image.header.copy(),
    )


def _nifti_to_3d(path: Path, data: np.ndarray) -> np.ndarray:
    """Return the (i, j, k) array of a NIfTI file with 2 to 7 axes, or raise for more than one volume."""
    if data.ndim == 2:
        return data[:, :, None]
    if data.ndim == 3:
        return data
    if data.ndim > 3 and all(size == 1 for size in data.shape[3:]):
        return data.reshape(data.shape[:3])
    if data.ndim > 3:
        raise ImageFileError(
            f"{path} is a {data.ndim}-D NIfTI image of shape {data.shape} with {int(np.prod(data.shape[3:]))} "
            f"volumes (time points or channels); npsam segments one 3D volume, so extract one first, "
            f"e.g. with nibabel's image.slicer[..., 0] or fslroi"
        )
    raise ImageFileError(f"{path}: NIfTI image of shape {data.shape} has fewer than 2 axes")


# ---- DICOM ----


@dataclass(frozen=True)
class _DicomSlice:
    path: Path
    dataset: Any  # pydicom Dataset read without pixel data


def _read_dicom(path: Path) -> ImageFile:
    pydicom = _import_extra("pydicom")
    slices = _read_dicom_headers(pydicom, path)
    _check_one_series(path, slices)
    ordered, slice_step = _sort_slices(path, slices)
    volume, modality = _read_dicom_pixels(pydicom, ordered)
    affine, spacing = _dicom_affine(ordered, slice_step)
    return ImageFile(
        path=path,
        format="dicom",
        array=_read_only(volume),
        spacing=spacing,
        affine=affine,
        modality=modality,
    )


def _read_dicom_headers(pydicom, path: Path) -> list[_DicomSlice]:
    """Read the headers of the DICOM image files at `path` (one file or the files of one folder)."""
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        candidates = [path]

    slices, skipped = [], []
    for candidate in candidates:
        try:
            dataset = pydicom.dcmread(candidate, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as error:
            if not path.is_dir():
                raise ImageFileError(f"{candidate} is not a readable DICOM file ({type(error).__name__}: {error})") from error
            skipped.append(candidate.name)
            continue
        if "Rows" not in dataset or "Columns" not in dataset:
            # DICOMDIR, structured reports and RT structure sets carry no image.
            skipped.append(candidate.name)
            continue
        slices.append(_DicomSlice(candidate, dataset))

    if skipped:
        logger.info("%s: skipped %d file(s) that are not DICOM images with pixel data, first: %s", path, len(skipped), skipped[0])
    if not slices:
        raise ImageFileError(f"{path}: no DICOM image with pixel data found; give a DICOM series folder or file")
    return slices


def _check_one_series(path: Path, slices: list[_DicomSlice]) -> None:
    series: dict[str, int] = {}
    for item in slices:
        uid = str(item.dataset.get("SeriesInstanceUID", ""))
        series[uid] = series.get(uid, 0) + 1
    if len(series) > 1:
        listing = ", ".join(f"{uid or '(none)'}: {count} file(s)" for uid, count in sorted(series.items()))
        raise ImageFileError(
            f"{path} contains {len(series)} DICOM series ({listing}); put each series in its own folder"
        )

    first = slices[0].dataset
    for item in slices:
        dataset = item.dataset
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise ImageFileError(
                f"{item.path}: multi-frame DICOM ({frames} frames) is not supported; convert the series to "
                f"NIfTI, e.g. with dcm2niix"
            )
        for keyword in ("Rows", "Columns", "SamplesPerPixel"):
            if dataset.get(keyword) != first.get(keyword):
                raise ImageFileError(
                    f"{path}: {keyword} differs between {slices[0].path.name} ({first.get(keyword)}) and "
                    f"{item.path.name} ({dataset.get(keyword)}); a series must have one slice size"
                )
        if not _same_orientation(first.get("ImageOrientationPatient"), dataset.get("ImageOrientationPatient")):
            raise ImageFileError(
                f"{path}: ImageOrientationPatient differs between {slices[0].path.name} and {item.path.name}; "
                f"slices of different orientations (a localizer or radial series) do not form one volume"
            )


def _same_orientation(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(np.array(a, dtype=np.float64), np.array(b, dtype=np.float64), atol=_ORIENTATION_TOLERANCE))


def _orientation(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Return (row direction, column direction, normal) in LPS, or None without ImageOrientationPatient."""
    value = dataset.get("ImageOrientationPatient")
    if value is None or len(value) != 6:
        return None
    cosines = np.array(value, dtype=np.float64)
    row_direction, column_direction = cosines[:3], cosines[3:]
    return row_direction, column_direction, np.cross(row_direction, column_direction)


def _sort_slices(path: Path, slices: list[_DicomSlice]) -> tuple[list[_DicomSlice], np.ndarray | None]:
    """Sort slices along the normal (else by InstanceNumber); return them and the (3,) LPS step between slices."""
    orientation = _orientation(slices[0].dataset)
    has_positions = all(item.dataset.get("ImagePositionPatient") is not None for item in slices)
    if orientation is not None and has_positions:
        normal = orientation[2]
        positions = np.array([item.dataset.ImagePositionPatient for item in slices], dtype=np.float64)  # (D, 3)
        order = np.argsort(positions @ normal, kind="stable")
        ordered = [slices[index] for index in order]
        distances = positions[order] @ normal
        gaps = np.diff(distances)
        if gaps.size and gaps.min() < _POSITION_TOLERANCE:
            index = int(np.argmin(gaps))
            raise ImageFileError(
                f"{path}: {ordered[index].path.name} and {ordered[index + 1].path.name} lie at the same position "
                f"along the slice normal; the folder contains several volumes (echoes, time points), so "
                f"separate them"
            )
        if len(ordered) == 1:
            return ordered, None
        if gaps.max() - gaps.min() > 0.01 * np.median(gaps):
            # NOTE: the affine assumes equal gaps, so slices far from the first drift from their true position.
            logger.warning(
                "%s: slice gaps along the normal vary from %.4g to %.4g mm; the output affine uses the "
                "average gap %.4g mm", path, gaps.min(), gaps.max(), gaps.mean(),
            )
        step = (positions[order[-1]] - positions[order[0]]) / (len(ordered) - 1)  # (3,) LPS mm per slice
        return ordered, step

    if len(slices) > 1:
        logger.warning("%s: slices lack ImagePositionPatient or ImageOrientationPatient; sorting by InstanceNumber", path)
    numbers = [item.dataset.get("InstanceNumber") for item in slices]
    if any(number is None for number in numbers):
        if len(slices) > 1:
            logger.warning("%s: some slices lack InstanceNumber; keeping file name order", path)
        return slices, None
    order = sorted(range(len(slices)), key=lambda index: int(numbers[index]))
    return [slices[index] for index in order], None


def _read_dicom_pixels(pydicom, ordered: list[_DicomSlice]) -> tuple[np.ndarray, str | None]:
    """Return the (D, H, W) or (D, H, W, 3) rescaled volume and the Modality of the sorted slices."""
    planes = []
    slopes, intercepts = [], []
    for item in ordered:
        dataset = pydicom.dcmread(item.path)
        try:
            pixels = dataset.pixel_array
        except (RuntimeError, NotImplementedError) as error:
            syntax = dataset.file_meta.get("TransferSyntaxUID")
            syntax_name = getattr(syntax, "name", syntax)
            reported = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
            raise ImageFileError(
                f"{item.path}: cannot decode its pixel data ({syntax_name}) with the installed packages; "
                f"install a decoder that pydicom supports for it. pydicom reported: {reported}"
            ) from error
        except (ValueError, AttributeError) as error:
            raise ImageFileError(f"{item.path}: invalid DICOM pixel data ({error})") from error
        if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            pixels = pixels.max() + pixels.min() - pixels  # larger values are darker in MONOCHROME1
        planes.append(pixels)
        slopes.append(float(dataset.get("RescaleSlope", 1) or 1))
        intercepts.append(float(dataset.get("RescaleIntercept", 0) or 0))

    volume = np.stack(planes)  # (D, H, W) or (D, H, W, 3)
    slopes_array = np.array(slopes)
    intercepts_array = np.array(intercepts)
    shape = (-1,) + (1,) * (volume.ndim - 1)  # one slope and intercept per slice
    if np.all(slopes_array == 1) and np.all(intercepts_array == np.round(intercepts_array)):
        # Whole-number rescaling keeps integers. int32 fits uint16 pixels shifted by a negative intercept.
        rescaled = volume if np.all(intercepts_array == 0) else volume.astype(np.int32) + intercepts_array.astype(np.int32).reshape(shape)
    else:
        rescaled = volume.astype(np.float64) * slopes_array.reshape(shape) + intercepts_array.reshape(shape)
    modality = ordered[0].dataset.get("Modality")
    return rescaled, (str(modality) if modality else None)


def _pixel_spacing(dataset) -> tuple[float, float]:
    """Return (column spacing, row spacing) in mm: the x and y voxel size."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        if value is not None and len(value) == 2:
            # PixelSpacing is (distance between rows, distance between columns).
            return float(value[1]), float(value[0])
    return 1.0, 1.0


def _dicom_affine(ordered: list[_DicomSlice], slice_step: np.ndarray | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Build the voxel-to-RAS+ affine and the (x, y, z) spacing of sorted DICOM slices."""
    first = ordered[0].dataset
    column_spacing, row_spacing = _pixel_spacing(first)
    orientation = _orientation(first)
    if orientation is None:
        # No patient geometry: the image axes are taken as DICOM's patient axes L and P.
        row_direction, column_direction, normal = np.eye(3)
    else:
        row_direction, column_direction, normal = orientation
    if slice_step is None:
        thickness = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        slice_step = normal * float(thickness)
    origin = first.get("ImagePositionPatient")
    origin = np.zeros(3) if origin is None else np.array(origin, dtype=np.float64)

    lps = np.eye(4)
    lps[:3, 0] = row_direction * column_spacing  # i = column index moves along the row direction
    lps[:3, 1] = column_direction * row_spacing  # j = row index moves along the column direction
    lps[:3, 2] = slice_step
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS: negate x and y
    spacing = (column_spacing, row_spacing, float(np.linalg.norm(slice_step)))
    return affine, spacing


# ---- PNG, JPEG and TIFF ----


def _pillow_to_array(path: Path, image) -> np.ndarray:
    """Convert a Pillow image to (H, W) or (H, W, 3) following the mode rules of the module docstring."""
    mode = image.mode
    if mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
        image = image.convert("RGB")
    elif mode in ("LA", "La"):
        image = image.convert("L")
    elif mode == "1":
        image = image.convert("L")
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ImageFileError(f"{path}: image mode {mode} with shape {array.shape} is not supported")
    return array


def _read_with_pillow(path: Path) -> ImageFile:
    pil = _import_extra("PIL")
    importlib.import_module("PIL.Image")
    try:
        with pil.Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise ImageFileError(f"{path} has {frames} frames; npsam segments one 2D image, so save one frame")
            image.load()
            array = _pillow_to_array(path, image)
    except ImageFileError:
        raise
    except (pil.UnidentifiedImageError, OSError, SyntaxError, ValueError, zlib.error) as error:
        raise ImageFileError(
            f"{path} is not a readable image ({type(error).__name__}: {error}); the file is truncated or corrupt"
        ) from error
    return ImageFile(path=path, format="image", array=_read_only(array), spacing=(1.0, 1.0))


def _read_tiff(path: Path) -> ImageFile:
    tifffile = _import_extra("tifffile")
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes = series.axes
            array = series.asarray()
    except ValueError as error:
        if "imagecodecs" not in str(error):
            raise ImageFileError(f"{path} is not a readable TIFF file ({error})") from error
        # tifffile decodes only uncompressed data without imagecodecs; Pillow reads LZW, Deflate and JPEG TIFFs.
        logger.debug("%s: tifffile needs imagecodecs (%s); reading through Pillow", path, error)
        try:
            return _read_with_pillow(path)
        except ImageFileError as pillow_error:
            raise ImageFileError(
                f"{path}: compressed TIFF that neither tifffile without imagecodecs nor Pillow can decode "
                f"({pillow_error}); install imagecodecs (pip install imagecodecs)"
            ) from pillow_error
    except (tifffile.TiffFileError, OSError, EOFError, IndexError) as error:
        raise ImageFileError(
            f"{path} is not a readable TIFF file ({type(error).__name__}: {error}); the file is truncated or corrupt"
        ) from error
    return ImageFile(path=path, format="image", array=_read_only(_tiff_to_2d(path, array, axes)), spacing=(1.0, 1.0))


def _tiff_to_2d(path: Path, array: np.ndarray, axes: str) -> np.ndarray:
    """Return (H, W) or (H, W, 3) from a TIFF series with tifffile axes such as "YX" or "YXS"."""
    if axes == "YX":
        return array
    if axes == "YXS" and array.shape[2] in (3, 4):
        return array[:, :, :3]  # drop the alpha channel of RGBA
    if axes == "YXS" and array.shape[2] == 1:
        return array[:, :, 0]
    raise ImageFileError(
        f"{path}: TIFF with axes {axes!r} and shape {array.shape} is not a 2D grey or RGB image; npsam "
        f"reads TIFF as one 2D image (stacks and multi-channel TIFFs are not supported)"
    )


# ---- Intensity to uint8 ----


def parse_window(spec: str | tuple[float, float]) -> str | tuple[float, float]:
    """Parse a window option: "auto", "percentile", "none", a `WINDOW_PRESETS` name or "LEVEL,WIDTH".

    A (level, width) tuple passes through after checks. Returns the method name or (level, width)
    with a finite level and a finite positive width. Raises ImageFileError for anything else.
    """
    if isinstance(spec, tuple):
        level, width = (float(value) for value in spec)
    else:
        text = str(spec).strip().lower()
        if text in AUTO_WINDOWS:
            return text
        if text in WINDOW_PRESETS:
            return WINDOW_PRESETS[text]
        parts = text.split(",")
        try:
            if len(parts) != 2:
                raise ValueError(text)
            level, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise ImageFileError(
                f"invalid window {spec!r}; give one of {', '.join(AUTO_WINDOWS + tuple(WINDOW_PRESETS))} "
                f"or LEVEL,WIDTH numbers such as 40,400"
            ) from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ImageFileError(f"invalid window level {level} and width {width}; both must be finite and the width positive")
    return level, width


def _is_whole_numbers(array: np.ndarray) -> bool:
    if np.issubdtype(array.dtype, np.integer):
        return True
    return bool(np.all(np.mod(array, 1) == 0))


def choose_window(array: np.ndarray, modality: str | None = None) -> tuple[str | tuple[float, float], str]:
    """Return the window that `auto` picks for `array` and the reason, as the module docstring describes."""
    if modality is not None and modality.upper() == "CT":
        return WINDOW_PRESETS["soft-tissue"], "DICOM Modality is CT, so soft-tissue (level 40, width 400 HU)"
    if array.dtype == np.uint8:
        return "none", "the image is already uint8"
    minimum = float(array.min())
    maximum = float(array.max())
    if modality is None and minimum <= AUTO_HU_THRESHOLD and maximum <= AUTO_HU_MAXIMUM and _is_whole_numbers(array):
        return WINDOW_PRESETS["soft-tissue"], (
            f"whole-number values {minimum:g}..{maximum:g} reach {AUTO_HU_THRESHOLD:g} or below, which looks like "
            f"CT in Hounsfield units, so soft-tissue (level 40, width 400 HU)"
        )
    described = f"modality {modality}" if modality else f"{array.dtype} values {minimum:g}..{float(array.max()):g}"
    return "percentile", f"{described}, so the 0.5-99.5 percentile normalisation"


def to_uint8(array: np.ndarray, window: str | tuple[float, float] = "auto", modality: str | None = None) -> np.ndarray:
    """Convert raw intensities to the model's uint8 input with a window, percentiles or no change.

    `window` is anything `parse_window` accepts. `modality` is the DICOM Modality when known; it only
    affects `auto`. Returns a new uint8 array of the same shape; `array` is not modified. Raises
    `ImageFileError` for non-numeric data, NaN or infinity, and for `none` on values that are not
    whole numbers in 0..255.
    """
    array = np.asarray(array)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageFileError(f"image data type {array.dtype} is not supported; give integers or real floats")
    if array.size == 0:
        raise ImageFileError(f"image of shape {array.shape} is empty")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ImageFileError(
                f"image contains {bad} NaN or infinite value(s); replace them (e.g. with numpy.nan_to_num) "
                f"before segmenting"
            )

    method = parse_window(window)
    if method == "auto":
        method, reason = choose_window(array, modality)
        logger.info("intensity: %s", reason)
    if method == "none":
        return _as_is(array)
    if method == "percentile":
        return _percentile_normalise(array)
    return _apply_window(array, *method)


def _as_is(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.array(array, copy=True)
    minimum, maximum = float(array.min()), float(array.max())
    if minimum < 0 or maximum > 255 or not _is_whole_numbers(array):
        raise ImageFileError(
            f"window 'none' needs whole numbers in 0..255, but the {array.dtype} image has values "
            f"{minimum:g}..{maximum:g}; use --window percentile, a preset or LEVEL,WIDTH"
        )
    return array.astype(np.uint8)


def _scale_slicewise(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high], scale to 0..255 in float64 and truncate to uint8, one slice at a time.

    Slices bound the float64 copy to the size of one slice of a volume.
    """
    output = np.empty(array.shape, dtype=np.uint8)
    planes = array if array.ndim >= 3 else array[None]
    out_planes = output if array.ndim >= 3 else output[None]
    for index in range(planes.shape[0]):
        clipped = np.clip(planes[index].astype(np.float64), low, high)
        out_planes[index] = ((clipped - low) / (high - low) * 255.0).astype(np.uint8)
    return output


def _apply_window(array: np.ndarray, level: float, width: float) -> np.ndarray:
    low = level - width / 2
    high = level + width / 2
    return _scale_slicewise(array, low, high)


def _percentile_normalise(array: np.ndarray) -> np.ndarray:
    positive = array[array > 0]
    if positive.size == 0:
        logger.info("intensity: no value above 0, so the percentiles are taken over all values")
        positive = array.ravel()
    low, high = (float(value) for value in np.percentile(positive, PERCENTILE_RANGE))
    if high <= low:
        logger.warning("intensity: the 0.5 and 99.5 percentiles are equal (%g), so the image maps to all zeros", low)
        return np.zeros(array.shape, dtype=np.uint8)
    output = _scale_slicewise(array, low, high)
    output[array == 0] = 0
    return output


# ---- Writing label maps ----


def label_file_name(like: ImageFile) -> str:
    """Return the output file name for `like`'s label map: "scan_labels.nii.gz" or "photo_labels.png"."""
    suffix = ".nii.gz" if like.is_volume else ".png"
    return f"{like.name}_labels{suffix}"


def _check_labels(labels: np.ndarray, like: ImageFile) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        raise ImageFileError(f"labels must be an integer NumPy array, got {type(labels).__name__} {getattr(labels, 'dtype', None)}")
    if labels.shape != like.spatial_shape:
        raise ImageFileError(f"labels of shape {labels.shape} do not match the image's shape {like.spatial_shape}")
    if labels.size and labels.min() < 0:
        raise ImageFileError(f"labels must not be negative, got minimum {labels.min()}")
    maximum = int(labels.max()) if labels.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if maximum <= np.iinfo(dtype).max:
            return labels.astype(dtype, copy=False)
    raise ImageFileError(f"label {maximum} does not fit uint32")


def write_label_file(path: str | os.PathLike, labels: np.ndarray, like: ImageFile) -> Path:
    """Write the label map `labels` of the image `like` to `path` atomically and return `path`.

    `labels` is (D, H, W) for a volume and (H, W) for a 2D image, in npsam's axis order. Volumes are
    written as NIfTI (`path` ends with .nii or .nii.gz) with `like`'s affine, 2D label maps as PNG.
    Raises `ImageFileError` for a wrong shape, dtype or suffix, and when `path` is the input file.
    `labels` is not modified.
    """
    path = Path(path)
    labels = _check_labels(labels, like)
    if same_file(path, like.path):
        raise ImageFileError(f"output {path} is the input file itself; write the label map to another path")
    check_output_path(path)

    if like.is_volume:
        if not _has_suffix(path, NIFTI_SUFFIXES):
            raise ImageFileError(f"label map of a volume must be NIfTI, so {path} must end with .nii or .nii.gz")
        image = _label_nifti(labels, like)
        nibabel = _import_extra("nibabel")
        suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
        write_atomically(path, lambda temporary: nibabel.save(image, str(temporary)), suffix=suffix)
        return path

    if not _has_suffix(path, (".png",)):
        raise ImageFileError(f"label map of a 2D image is written as PNG, so {path} must end with .png")
    image = _label_png(labels)
    write_atomically(path, lambda temporary: image.save(temporary, format="PNG"), suffix=".png")
    return path


def _label_nifti(labels: np.ndarray, like: ImageFile):
    nibabel = _import_extra("nibabel")
    data = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (D, H, W) -> (i, j, k)
    if like.header is not None:
        image_class = nibabel.Nifti2Image if isinstance(like.header, nibabel.Nifti2Header) else nibabel.Nifti1Image
        header = like.header.copy()
        header.set_data_dtype(data.dtype)
        image = image_class(data, like.affine, header=header)
    else:
        image = nibabel.Nifti1Image(data, like.affine)
        image.set_qform(like.affine, code=1)
        image.set_sform(like.affine, code=1)
    image.header.set_data_dtype(data.dtype)
    image.header.set_slope_inter(None, None)
    image.header.set_intent("label")
    image.header["cal_min"] = 0
    image.header["cal_max"] = int(data.max()) if data.size else 0
    return image


def _label_png(labels: np.ndarray):
    _import_extra("PIL")
    pil_image = importlib.import_module("PIL.Image")
    if labels.dtype == np.uint8:
        from npsam.overlay import MAX_PALETTE_LABEL, label_palette

        image = pil_image.fromarray(labels)  # mode "L"
        image.putpalette(label_palette(MAX_PALETTE_LABEL).tobytes(), rawmode="RGB")  # mode "P", pixel value = label
        return image
    if labels.dtype == np.uint16:
        logger.warning(
            "label map has labels above 255, which a PNG palette cannot hold; writing a 16-bit grey PNG "
            "(exact values, dark in ordinary viewers)"
        )
        return pil_image.fromarray(labels)  # mode "I;16"
    raise ImageFileError(f"a PNG label map supports at most 65,535 labels, got maximum {int(labels.max())}")
