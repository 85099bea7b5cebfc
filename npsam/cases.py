"""Challenge cases: read an .npz case, segment it in 2D or 3D, write its `segs` file atomically.

The format is the one of the CVPR 2024 "MedSAM on Laptop" challenge:
- a file whose name starts with "3D" is a 3D case: `imgs` (D, H, W) uint8, `boxes` (N, 6) as
  [x_min, y_min, z_min, x_max, y_max, z_max] and `spacing` (3,);
- any other file is a 2D case: `imgs` (H, W, 3) or (H, W) uint8 and `boxes` (N, 4) as
  [x_min, y_min, x_max, y_max];
- the output file has one array, `segs`, with the shape of the image without channels: 0 is the
  background and object k (1-based, in box order) is label k, later objects drawn over earlier ones.

`segs` is uint8 as the challenge expects when there are at most 255 boxes. More boxes get the smallest
wider unsigned dtype that fits every label (uint16 up to 65,535 boxes), because uint8 would wrap.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npsam.output_files import check_output_path, same_file, write_atomically

__all__ = ["Case", "CaseError", "read_case", "write_segs", "segment_case", "is_3d_name", "ProgressCallback"]

logger = logging.getLogger(__name__)

# progress(completed, total): called after each unit of work (a 2D image, or one slice of one 3D object).
ProgressCallback = Callable[[int, int], None]

IMAGE_KEY = "imgs"
BOXES_KEY = "boxes"
SPACING_KEY = "spacing"
SEGS_KEY = "segs"


class CaseError(ValueError):
    """An .npz case file that cannot be read or does not match the challenge format."""


@dataclass(frozen=True)
class Case:
    """One challenge case as read from its .npz file.

    `name` is the file name without `.npz`. `imgs` is (H, W, 3) or (H, W) for 2D and (D, H, W) or
    (D, H, W, 3) for 3D, uint8. `boxes` is (N, 4) for 2D and (N, 6) for 3D, as stored (integers or
    floats). `spacing` is the stored (3,) voxel spacing of a 3D case in the file's own axis order, or None.
    `path` is the file the case was read from, or None for a case built in memory.
    """

    name: str
    is_3d: bool
    imgs: np.ndarray
    boxes: np.ndarray
    spacing: np.ndarray | None
    path: Path | None = None

    @property
    def num_objects(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def file_name(self) -> str:
        return f"{self.name}.npz"


def is_3d_name(file_name: str) -> bool:
    """Return True when the challenge treats `file_name` as a 3D case: its name starts with "3D"."""
    return Path(file_name).name.startswith("3D")


# ---- Reading ----


def read_case(path: str | os.PathLike) -> Case:
    """Read and check one challenge .npz case; 2D or 3D is chosen by the "3D" file-name prefix.

    Raises FileNotFoundError for a missing file. Raises `CaseError` (a ValueError) for a file that is
    not a readable .npz archive or lacks `imgs` or `boxes`, and for arrays of the wrong shape, dtype
    or value (NaN or infinite boxes, an empty image, no boxes). The returned arrays are read-only copies.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"case file {path} not found")
    is_3d = is_3d_name(path.name)
    arrays = _load_npz(path)

    missing = [key for key in (IMAGE_KEY, BOXES_KEY) if key not in arrays]
    if missing:
        raise CaseError(
            f"{path}: missing key(s) {missing}; a case file needs '{IMAGE_KEY}' and '{BOXES_KEY}', "
            f"found {sorted(arrays)}"
        )
    imgs = _check_image(path, arrays[IMAGE_KEY], is_3d)
    boxes = _check_boxes(path, arrays[BOXES_KEY], is_3d)
    spacing = _check_spacing(path, arrays.get(SPACING_KEY), is_3d)

    for array in (imgs, boxes, spacing):
        if array is not None:
            array.setflags(write=False)
    name = path.name[: -len(".npz")] if path.name.endswith(".npz") else path.name
    return Case(name=name, is_3d=is_3d, imgs=imgs, boxes=boxes, spacing=spacing, path=path)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an .npz file, turning the many ways a damaged file fails into `CaseError`."""
    with open(path, "rb") as file:
        magic = file.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise CaseError(f"{path} is a single .npy array, not an .npz archive of named arrays")
    if not magic.startswith(b"PK"):
        raise CaseError(
            f"{path} is not an .npz (zip) archive; the file is truncated or corrupt, or another format "
            f"saved under an .npz name"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise CaseError(
            f"{path} is not a readable .npz file ({type(error).__name__}: {error}); the file is "
            f"truncated or corrupt, so copy or export it again"
        ) from error
    except ValueError as error:
        # np.load raises ValueError for object arrays (pickles are not allowed) and bad array headers.
        raise CaseError(f"{path}: cannot load the arrays ({error}); save them as plain numeric arrays") from error


def _check_image(path: Path, imgs: np.ndarray, is_3d: bool) -> np.ndarray:
    if is_3d:
        expected = "(D, H, W) or (D, H, W, 3)"
        shape_ok = imgs.ndim == 3 or (imgs.ndim == 4 and imgs.shape[3] == 3)
        kind = "3D case (its file name starts with '3D')"
    else:
        expected = "(H, W, 3) or (H, W)"
        shape_ok = imgs.ndim == 2 or (imgs.ndim == 3 and imgs.shape[2] == 3)
        kind = "2D case (its file name does not start with '3D')"
    if not shape_ok:
        raise CaseError(
            f"{path}: '{IMAGE_KEY}' has shape {imgs.shape}, but a {kind} needs {expected}; rename the "
            f"file if the dimension is wrong"
        )
    if imgs.dtype != np.uint8:
        raise CaseError(
            f"{path}: '{IMAGE_KEY}' has dtype {imgs.dtype}, but the challenge format is uint8; scale or "
            f"window the intensities to 0..255 and store them as uint8"
        )
    if imgs.size == 0:
        raise CaseError(f"{path}: '{IMAGE_KEY}' of shape {imgs.shape} is empty; every axis needs at least one pixel")
    return np.array(imgs, copy=True)


def _check_boxes(path: Path, boxes: np.ndarray, is_3d: bool) -> np.ndarray:
    width = 6 if is_3d else 4
    layout = "[x_min, y_min, z_min, x_max, y_max, z_max]" if is_3d else "[x_min, y_min, x_max, y_max]"
    if not (np.issubdtype(boxes.dtype, np.integer) or np.issubdtype(boxes.dtype, np.floating)):
        raise CaseError(f"{path}: '{BOXES_KEY}' has dtype {boxes.dtype}; store the boxes as integers or floats")
    if boxes.ndim != 2 or boxes.shape[1] != width:
        other = "2D" if is_3d else "3D"
        raise CaseError(
            f"{path}: '{BOXES_KEY}' has shape {boxes.shape}, but a {'3D' if is_3d else '2D'} case needs "
            f"(N, {width}) rows of {layout}; if this is a {other} case, rename the file (only names that "
            f"start with '3D' are 3D)"
        )
    if boxes.shape[0] == 0:
        raise CaseError(f"{path}: '{BOXES_KEY}' is empty; give at least one box as {layout}")
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        raise CaseError(
            f"{path}: box {index + 1} {boxes[index].tolist()} contains NaN or infinity; give pixel coordinates"
        )
    return np.array(boxes, copy=True)


def _check_spacing(path: Path, spacing: np.ndarray | None, is_3d: bool) -> np.ndarray | None:
    if spacing is None:
        if is_3d:
            # Inference does not use the spacing; only the metrics read it (from the ground-truth file).
            logger.warning("%s: 3D case without '%s'; segmenting it anyway", path, SPACING_KEY)
        return None
    if not np.issubdtype(spacing.dtype, np.number) or spacing.shape != (3,):
        raise CaseError(
            f"{path}: '{SPACING_KEY}' must be 3 numbers (voxel size in mm per axis), got dtype "
            f"{spacing.dtype} shape {spacing.shape}"
        )
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise CaseError(f"{path}: '{SPACING_KEY}' {spacing.tolist()} must be finite and positive")
    return np.array(spacing, dtype=np.float64, copy=True)


# ---- Writing ----


def write_segs(path: str | os.PathLike, segs: np.ndarray, *, input_path: str | os.PathLike | None = None) -> Path:
    """Write `segs` to `path` with `np.savez_compressed` under the key "segs", atomically.

    The archive is first written to a temporary file in the same folder and then moved over `path` with
    `os.replace`, so a crash leaves either the previous file or the complete new one. `segs` is not
    modified. Raises ValueError when `path` is `input_path` (the case file itself) and for a `segs` that
    is not an integer label map. Returns `path`.
    """
    path = Path(path)
    if not isinstance(segs, np.ndarray) or not np.issubdtype(segs.dtype, np.integer) or segs.ndim not in (2, 3):
        raise ValueError(
            f"segs must be an integer label map of shape (H, W) or (D, H, W), got {type(segs).__name__} "
            f"{getattr(segs, 'dtype', None)} {getattr(segs, 'shape', None)}"
        )
    if input_path is not None and same_file(path, Path(input_path)):
        raise ValueError(
            f"output {path} is the input case file itself; write the segmentation to another folder"
        )
    check_output_path(path)

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            np.savez_compressed(file, **{SEGS_KEY: segs})

    return write_atomically(path, write)


# ---- Segmenting ----


def segment_case(case: Case, model_or_predictor, progress: ProgressCallback | None = None) -> np.ndarray:
    """Segment every box of a case and return its `segs` label map.

    `model_or_predictor` is a loaded `Model`, a `Predictor` (its image is replaced) or a model name or
    weights path for `load_model`. 2D cases run the encoder once and decode the boxes in batches, after
    `npsam.predictor.normalize_boxes` checks and corrects them. 3D cases are propagated slice by slice
    by `npsam.propagation.segment_volume`, which corrects 3D boxes its own way. The label map is
    (H, W) or (D, H, W) in the smallest unsigned dtype that fits N: uint8 up to 255 boxes, uint16
    up to 65,535.
    `progress(completed, total)` is called after the 2D image and after each slice of each 3D object.
    """
    from npsam.model import Model
    from npsam.predictor import Predictor

    if isinstance(model_or_predictor, Predictor):
        predictor = model_or_predictor
    elif isinstance(model_or_predictor, Model):
        predictor = Predictor(model_or_predictor)
    else:
        from npsam.model import load_model

        predictor = Predictor(load_model(model_or_predictor))

    if case.is_3d:
        from npsam.propagation import segment_volume

        return segment_volume(predictor.model, case.imgs, case.boxes, progress=progress)
    return _segment_2d(predictor, case, progress)


def _segment_2d(predictor, case: Case, progress: ProgressCallback | None) -> np.ndarray:
    predictor.set_image(case.imgs)
    segs = predictor.predict_labels(case.boxes)  # (H, W), smallest unsigned dtype for N labels
    predictor.reset_image()
    if progress is not None:
        progress(1, 1)
    return segs
