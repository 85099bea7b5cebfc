"""Tests of npsam.overlay: overlay PNGs and label-map PNGs, read back with Pillow and checked pixel by pixel.

The expected overlays come from `expected_overlay` below, a slow per-object version of the drawing
rules (binary erosion for contours, a loop over boxes for rectangles). The real images are a
Kvasir-SEG polyp, the DSB2018 nuclei image (125 objects), a pyradiomics brain MR volume and the
Colin27 atlas (12 objects). Their ground-truth label maps stand in for segmentations, so no model runs.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from npsam import overlay
from npsam.overlay import (
    DEFAULT_ALPHA,
    MONTAGE_GAP,
    axial_montage,
    default_line_width,
    label_map_image,
    label_palette,
    middle_slice,
    montage_slice_indices,
    object_slice_overlays,
    overlay_image,
    write_case_overlays,
    write_label_png,
    write_png,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

KVASIR_CASE = "2DBox_Endoscopy_kvasir_cju0sxqiclckk08551ycbwhno"
BRAIN_CASE = "3DBox_MR_pyradiomics_brain1"
ATLAS_CASE = "3DBox_MR_colin27_aal_subcortical"
PILLOW_HINT = 'pip install "npsam[images]"'
# The fill is computed in float32 and rounded once; the float64 oracle may differ by one grey level.
BLEND_TOLERANCE = 1


# ---- Helpers: loading cases and the slow oracle ----


def _load(data_dir: Path, source: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(data_dir / source / "npz" / "imgs" / f"{name}.npz") as case:
        imgs, boxes = case["imgs"], case["boxes"]
    with np.load(data_dir / source / "npz" / "gts" / f"{name}.npz") as gt:
        gts = gt["gts"]
    return imgs, boxes, gts


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.array(image.convert("RGB"))


def _oracle_contour(mask: np.ndarray, line_width: int) -> np.ndarray:
    """Return the pixels of `mask` within `line_width` (Chebyshev distance) of a pixel outside it or of the image edge."""
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=line_width, border_value=0)
    return mask & ~eroded


def _oracle_box_band(shape: tuple[int, int], box, line_width: int) -> np.ndarray:
    """Return the (H, W) mask of a box rectangle drawn `line_width` pixels wide inside its clipped extent."""
    height, width = shape
    x_min, y_min, x_max, y_max = (int(round(value)) for value in box)
    x_min, x_max = sorted((x_min, x_max))
    y_min, y_max = sorted((y_min, y_max))
    band = np.zeros(shape, dtype=bool)
    if x_max < 0 or y_max < 0 or x_min >= width or y_min >= height:
        return band
    x_min, x_max = max(x_min, 0), min(x_max, width - 1)
    y_min, y_max = max(y_min, 0), min(y_max, height - 1)
    rows, columns = np.mgrid[0:height, 0:width]
    inside = (rows >= y_min) & (rows <= y_max) & (columns >= x_min) & (columns <= x_max)
    near_edge = (
        (rows - y_min < line_width) | (y_max - rows < line_width)
        | (columns - x_min < line_width) | (x_max - columns < line_width)
    )
    return inside & near_edge


def expected_overlay(image, labels, boxes, box_labels, line_width, alpha=DEFAULT_ALPHA):
    """Return (expected (H, W, 3) int array, mask of blended pixels) by the documented drawing rules."""
    rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
    expected = rgb.astype(np.int64).copy()
    blended = np.zeros(rgb.shape[:2], dtype=bool)
    max_label = max(int(labels.max()) if labels is not None else 0, max(box_labels, default=0))
    palette = label_palette(max_label).astype(np.int64)

    if labels is not None:
        for label in np.unique(labels[labels > 0]):
            mask = labels == label
            expected[mask] = np.rint((1 - alpha) * expected[mask] + alpha * palette[label])
            blended |= mask
        for label in np.unique(labels[labels > 0]):
            contour = _oracle_contour(labels == label, line_width)
            expected[contour] = palette[label]
            blended &= ~contour
    for box, label in zip(boxes, box_labels):
        band = _oracle_box_band(rgb.shape[:2], box, line_width)
        expected[band] = palette[label]
        blended &= ~band
    return expected, blended


def assert_matches_oracle(actual: np.ndarray, expected: np.ndarray, blended: np.ndarray) -> None:
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == np.uint8
    difference = np.abs(actual.astype(np.int64) - expected)
    exact = ~blended
    assert difference[exact].max(initial=0) == 0, (
        f"{np.count_nonzero(difference[exact].max(axis=-1))} contour, box or background pixels differ, "
        f"first at {np.argwhere(exact & (difference.max(axis=-1) > 0))[:3].tolist()}"
    )
    assert difference[blended].max(initial=0) <= BLEND_TOLERANCE, "filled pixels differ from the documented blend"


@pytest.fixture(scope="module")
def kvasir(data_dir):
    return _load(data_dir, "kvasir_seg", KVASIR_CASE)


@pytest.fixture(scope="module")
def brain(data_dir):
    return _load(data_dir, "pyradiomics_3d", BRAIN_CASE)


@pytest.fixture(scope="module")
def atlas(data_dir):
    return _load(data_dir, "colin27_aal_mricron", ATLAS_CASE)


# ---- Import and palette ----


def test_import_does_not_load_pillow():
    code = "import sys, npsam, npsam.overlay; print('PIL' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False", "importing npsam.overlay imported Pillow"


def test_palette_colours_distinct_and_bright():
    palette = label_palette(255)
    assert palette.shape == (256, 3)
    assert palette.dtype == np.uint8
    assert (palette[0] == 0).all(), "background must be black"
    assert len(np.unique(palette[1:], axis=0)) == 255, "labels 1..255 must have distinct colours"
    assert palette[1:].max(axis=1).min() >= 128, "a label colour is too dark to see on black"


def test_palette_base_colours_far_apart():
    base = label_palette(20)[1:].astype(np.float64)
    distances = np.sqrt(((base[:, None] - base[None]) ** 2).sum(axis=-1))
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= 60, f"two base colours are only {distances.min():.1f} apart in RGB"


def test_palette_independent_of_size():
    assert (label_palette(300)[:21] == label_palette(20)).all()
    assert (label_palette(300)[:256] == label_palette(255)).all()


def test_line_width_grows_with_size():
    assert default_line_width(256, 256) == 1
    assert default_line_width(531, 570) == 2
    assert default_line_width(2000, 1500) == 7


# ---- 2D overlays ----


def test_kvasir_overlay_png_pixels(kvasir, tmp_path):
    imgs, boxes, gts = kvasir
    paths = write_case_overlays(tmp_path, KVASIR_CASE, imgs, gts, boxes, is_3d=False)
    assert paths == [tmp_path / f"{KVASIR_CASE}_overlay.png"]
    actual = _read_png(paths[0])

    line_width = default_line_width(*imgs.shape[:2])
    expected, blended = expected_overlay(imgs, gts, boxes, [1], line_width)
    assert_matches_oracle(actual, expected, blended)

    colour = label_palette(1)[1]
    contour = _oracle_contour(gts == 1, line_width)
    assert contour.sum() > 100, "the polyp contour should have pixels"
    assert (actual[contour] == colour).all(), "contour pixels of label 1 must have colour 1"
    x_min, y_min, x_max, y_max = boxes[0]
    for y, x in [(y_min, (x_min + x_max) // 2), (y_max, (x_min + x_max) // 2), ((y_min + y_max) // 2, x_min)]:
        assert (actual[y, x] == colour).all(), f"box edge pixel ({y}, {x}) must have colour 1"
    background = (gts == 0) & ~_oracle_box_band(gts.shape, boxes[0], line_width)
    assert (actual[background] == imgs[background]).all(), "background pixels must keep the image's value"


def test_nuclei_overlay_distinct_colours(data_dir):
    imgs, boxes, gts = _load(data_dir, "stardist_dsb2018_nuclei", "2DBox_Microscopy_dsb2018_stardist")
    assert gts.max() > 100
    actual = overlay_image(imgs, gts, boxes)

    line_width = default_line_width(*imgs.shape[:2])
    expected, blended = expected_overlay(imgs, gts, boxes, list(range(1, len(boxes) + 1)), line_width)
    assert_matches_oracle(actual, expected, blended)

    # Without boxes, each label's contour shows exactly its own colour, and no two labels share one.
    contours_only = overlay_image(imgs, gts, None, alpha=0.0)
    palette = label_palette(int(gts.max()))
    seen = {}
    for label in np.unique(gts[gts > 0]):
        contour = _oracle_contour(gts == label, line_width)
        colours = np.unique(contours_only[contour], axis=0)
        assert colours.tolist() == [palette[label].tolist()], f"label {label} contour colours {colours.tolist()}"
        seen[tuple(colours[0])] = label
    assert len(seen) == len(np.unique(gts[gts > 0])), "two objects share a colour"


def test_grey_image_replicated():
    image = np.full((40, 50), 77, dtype=np.uint8)
    labels = np.zeros((40, 50), dtype=np.uint8)
    labels[10:20, 10:20] = 1
    actual = overlay_image(image, labels, [[5, 5, 30, 30]])
    assert actual.shape == (40, 50, 3)
    assert (actual[35, 45] == 77).all()
    assert (actual[15, 15] == np.rint(0.7 * 77 + 0.3 * label_palette(1)[1])).all(), "fill is the documented blend"


def test_boxes_clipped_skipped_and_swapped():
    image = np.full((100, 120, 3), 50, dtype=np.uint8)
    boxes = np.array([[-10, 5, 20, 500], [200, 200, 300, 300], [90.4, 60.6, 70, 40]])
    actual = overlay_image(image, None, boxes, line_width=1)
    palette = label_palette(3)

    expected, blended = expected_overlay(image, None, boxes, [1, 2, 3], 1)
    assert_matches_oracle(actual, expected, blended)
    assert (actual[50, 0] == palette[1]).all(), "a box clipped on the left shows its edge at x = 0"
    assert (actual[99, 10] == palette[1]).all(), "a box clipped at the bottom shows its edge at y = 99"
    assert not (actual == palette[2]).all(axis=-1).any(), "a box entirely outside must not be drawn"
    assert (actual[41, 70] == palette[3]).all(), "reversed corners are swapped and rounded"
    assert (actual[61, 90] == palette[3]).all()


def test_empty_mask_still_draws_box():
    image = np.zeros((60, 60), dtype=np.uint8)
    labels = np.zeros((60, 60), dtype=np.uint16)
    labels[5:15, 5:15] = 2  # object 1 has no pixels, object 2 has some
    actual = overlay_image(image, labels, [[30, 30, 50, 50], [4, 4, 16, 16]], line_width=1)
    palette = label_palette(2)
    assert (actual[30, 40] == palette[1]).all()
    assert (actual[4, 10] == palette[2]).all()
    assert (actual[5, 10] == palette[2]).all(), "contour of object 2"


def test_contour_at_image_edge():
    image = np.zeros((20, 20), dtype=np.uint8)
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[:, :8] = 1  # touches the top, bottom and left edges
    actual = overlay_image(image, labels, None, alpha=0.0, line_width=1)
    on_contour = (actual == label_palette(1)[1]).all(axis=-1)
    assert on_contour[0, 3], "the top image edge bounds the object"
    assert on_contour[19, 3], "the bottom image edge bounds the object"
    assert on_contour[10, 0], "the left image edge bounds the object"
    assert on_contour[10, 7]
    assert not on_contour[10, 3], "interior pixels keep the image"


def test_no_objects_leaves_image():
    image = np.arange(30 * 40 * 3, dtype=np.uint64).reshape(30, 40, 3).astype(np.uint8)
    assert (overlay_image(image, np.zeros((30, 40), np.uint8), None) == image).all()
    assert (overlay_image(image, None, np.zeros((0, 4))) == image).all()


def test_inputs_not_modified():
    image = np.full((30, 30, 3), 9, dtype=np.uint8)
    labels = np.zeros((30, 30), dtype=np.uint8)
    labels[5:10, 5:10] = 1
    boxes = np.array([[4, 4, 12, 12]])
    for array in (image, labels, boxes):
        array.setflags(write=False)
    overlay_image(image, labels, boxes)
    assert (image == 9).all()
    assert labels.sum() == 25
    assert boxes.tolist() == [[4, 4, 12, 12]]


def test_wide_image_line_width():
    image = np.zeros((2000, 2000), dtype=np.uint8)
    labels = np.zeros((2000, 2000), dtype=np.uint8)
    labels[500:1500, 500:1500] = 1
    actual = overlay_image(image, labels, None, alpha=0.0)
    row = (actual[1000] == label_palette(1)[1]).all(axis=-1)
    assert np.flatnonzero(row).tolist() == list(range(500, 507)) + list(range(1493, 1500)), "7-pixel contour band"


def test_bad_inputs_raise():
    image = np.zeros((10, 10), dtype=np.uint8)
    with pytest.raises(ValueError, match="labels have shape"):
        overlay_image(image, np.zeros((10, 11), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        overlay_image(image.astype(np.float32))
    with pytest.raises(ValueError, match="alpha"):
        overlay_image(image, None, None, alpha=1.5)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        overlay_image(image, None, [[1, 2, 3]])
    with pytest.raises(ValueError, match="NaN"):
        overlay_image(image, None, [[1, 2, np.nan, 4]])


# ---- 3D overlays ----


def test_object_slices_at_box_middle(brain, tmp_path):
    volume, boxes, gts = brain
    paths = write_case_overlays(tmp_path, BRAIN_CASE, volume, gts, boxes, is_3d=True)

    z_middles = [int(box[2] + (box[5] - box[2]) // 2) for box in boxes]
    assert z_middles == [11, 14]
    expected_names = [f"{BRAIN_CASE}_object{k}_z{z}.png" for k, z in zip((1, 2), z_middles)]
    assert [path.name for path in paths] == expected_names + [f"{BRAIN_CASE}_montage.png"]

    line_width = default_line_width(*volume.shape[1:])
    for index, (path, z) in enumerate(zip(paths, z_middles)):
        actual = _read_png(path)
        expected, blended = expected_overlay(volume[z], gts[z], boxes[index : index + 1, [0, 1, 3, 4]], [index + 1], line_width)
        assert_matches_oracle(actual, expected, blended)


def test_object_slices_list_order(brain):
    volume, boxes, gts = brain
    overlays = object_slice_overlays(volume, gts, boxes)
    assert [z for z, _ in overlays] == [middle_slice(box[2], box[5], len(volume)) for box in boxes]
    assert all(rgb.shape == volume.shape[1:] + (3,) for _, rgb in overlays)


def test_middle_slice_rule():
    assert middle_slice(11, 12, 25) == 11
    assert middle_slice(12, 17, 25) == 14
    assert middle_slice(17, 12, 25) == 14, "reversed ends are swapped"
    assert middle_slice(20, 40, 25) == 24, "clipped to the volume"


def test_montage_tiles_and_size(atlas):
    volume, boxes, gts = atlas
    depth, height, width = volume.shape
    indices = montage_slice_indices(depth, gts, boxes)
    labelled = np.flatnonzero(gts.reshape(depth, -1).any(axis=1))
    first = min(labelled[0], boxes[:, 2].min())
    last = max(labelled[-1], boxes[:, 5].max())
    assert len(indices) == 16
    assert indices[0] == first
    assert indices[-1] == last
    assert (np.diff(indices) > 0).all()
    assert np.ptp(np.diff(indices)) <= 1, "slices must be evenly spaced"

    montage = axial_montage(volume, gts, boxes)
    assert montage.shape == (4 * height + 3 * MONTAGE_GAP, 4 * width + 3 * MONTAGE_GAP, 3)

    # At full size each tile, outside its slice-number corner, is the overlay of its slice.
    line_width = default_line_width(height, width)
    for position in (0, 7, 15):
        z = indices[position]
        top = (position // 4) * (height + MONTAGE_GAP)
        left = (position % 4) * (width + MONTAGE_GAP)
        tile = montage[top : top + height, left : left + width]
        on_slice = np.flatnonzero((boxes[:, 2] <= z) & (z <= boxes[:, 5]))
        expected, blended = expected_overlay(volume[z], gts[z], boxes[on_slice][:, [0, 1, 3, 4]], on_slice + 1, line_width)
        corner = (slice(0, 12), slice(0, 20))
        blended[corner] = False
        expected[corner] = tile[corner]
        assert_matches_oracle(tile, expected, blended)
        assert (tile[corner] == 255).any(), "the slice number is written in white"


def test_montage_shrinks_to_max_size(atlas):
    volume, boxes, gts = atlas
    montage = axial_montage(volume, gts, boxes, max_size=400, max_tiles=9)
    height, width = volume.shape[1:]
    factor = 2  # 3 tiles of ceil(217 / 2) = 109 rows and 2 gaps fit in 400 pixels; factor 1 does not
    assert montage.shape == (3 * -(-height // factor) + 2 * MONTAGE_GAP, 3 * -(-width // factor) + 2 * MONTAGE_GAP, 3)
    assert max(montage.shape[:2]) <= 400


def test_montage_short_range(brain):
    volume, boxes, gts = brain
    indices = montage_slice_indices(len(volume), gts, boxes)
    assert indices.tolist() == list(range(11, 18)), "a 7-slice range gives one tile per slice"
    montage = axial_montage(volume, gts, boxes)
    assert montage.shape == (3 * 256 + 2 * MONTAGE_GAP, 3 * 256 + 2 * MONTAGE_GAP, 3)


def test_montage_without_objects_spans_volume():
    assert montage_slice_indices(40, None, None, max_tiles=5).tolist() == [0, 10, 20, 29, 39]


def test_rgb_volume_and_no_boxes(tmp_path):
    volume = np.random.default_rng(0).integers(0, 256, (6, 30, 40, 3), dtype=np.uint8)
    labels = np.zeros((6, 30, 40), dtype=np.uint8)
    labels[2:4, 10:20, 10:20] = 1
    boxes = np.array([[10, 10, 2, 19, 19, 3]])

    overlays = object_slice_overlays(volume, labels, boxes)
    assert [z for z, _ in overlays] == [2]
    assert (overlays[0][1][0, 0] == volume[2, 0, 0]).all(), "RGB slices keep their colours"

    paths = write_case_overlays(tmp_path, "3DBox_empty", volume, None, None, is_3d=True)
    assert [path.name for path in paths] == ["3DBox_empty_montage.png"]


# ---- Label-map PNGs ----


def test_label_png_exact_and_visible(kvasir, tmp_path):
    _, _, gts = kvasir
    assert gts.max() == 1
    path = write_label_png(tmp_path / "labels.png", gts)
    with Image.open(path) as image:
        assert image.mode == "P"
        values = np.array(image)
        palette = np.array(image.getpalette()[:6]).reshape(2, 3)
        visible = np.array(image.convert("RGB"))
    assert (values == gts).all(), "pixel values must be the labels"
    assert palette[1].max() > 0, "label 1 must not be black"
    assert (palette[1] == label_palette(1)[1]).all()
    assert visible[gts == 1].max(axis=-1).min() >= 128, "label pixels must be visible"


def test_label_png_many_labels(data_dir, tmp_path):
    _, _, gts = _load(data_dir, "stardist_dsb2018_nuclei", "2DBox_Microscopy_dsb2018_stardist")
    path = write_label_png(tmp_path / "nuclei.png", gts)
    with Image.open(path) as image:
        values = np.array(image)
        palette = np.array(image.getpalette()).reshape(-1, 3)
    assert values.dtype == np.uint8
    assert (values == gts).all()
    used = np.unique(gts[gts > 0])
    assert (palette[used].max(axis=1) > 0).all(), "a used label has a black palette entry"
    assert (palette[: gts.max() + 1] == label_palette(int(gts.max()))).all()


def test_label_png_above_255_rgb(tmp_path):
    labels = np.arange(300 * 4, dtype=np.uint16).reshape(40, 30) % 301  # labels 0..300
    assert label_map_image(labels).mode == "RGB"
    path = write_label_png(tmp_path / "many.png", labels)
    with Image.open(path) as image:
        assert image.mode == "RGB"
        pixels = np.array(image)
    assert (pixels == label_palette(300)[labels]).all()
    assert pixels[labels > 0].max(axis=-1).min() >= 128, "no labelled pixel may be dark"
    assert (pixels[labels == 0] == 0).all()


def test_label_map_rejects_3d():
    with pytest.raises(ValueError, match=r"labels\[z\]"):
        label_map_image(np.zeros((2, 3, 4), np.uint8))


# ---- Writing files ----


def _temporary_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_write_png_atomic_replace(tmp_path):
    path = tmp_path / "image.png"
    write_png(path, np.zeros((8, 9, 3), np.uint8))
    write_png(path, np.full((8, 9, 3), 200, np.uint8))
    assert (_read_png(path) == 200).all(), "overwrite=True replaces the existing file"
    assert _temporary_files(tmp_path) == []


def test_write_png_keeps_existing(tmp_path):
    path = tmp_path / "image.png"
    write_png(path, np.zeros((8, 9), np.uint8))
    with pytest.raises(FileExistsError):
        write_png(path, np.full((8, 9), 200, np.uint8), overwrite=False)
    assert (_read_png(path) == 0).all(), "overwrite=False must keep the existing file"
    assert _temporary_files(tmp_path) == []
    fresh = write_png(tmp_path / "fresh.png", np.full((8, 9), 7, np.uint8), overwrite=False)
    assert (_read_png(fresh) == 7).all()


def test_write_png_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "image.png"
    write_png(path, np.zeros((8, 9, 3), np.uint8))

    def failing_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(path, np.full((8, 9, 3), 200, np.uint8))
    monkeypatch.undo()
    assert (_read_png(path) == 0).all()
    assert _temporary_files(tmp_path) == []


def test_write_png_rejects_input_path(tmp_path):
    source = tmp_path / "case.png"
    source.write_bytes(b"input")
    with pytest.raises(ValueError, match="input file"):
        write_png(source, np.zeros((4, 4), np.uint8), input_path=source)
    assert source.read_bytes() == b"input"


def test_write_png_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        write_png(tmp_path / "missing" / "image.png", np.zeros((4, 4), np.uint8))


def test_missing_pillow_names_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ImportError, match=re.escape(PILLOW_HINT)):
        write_png(tmp_path / "image.png", image)
    with pytest.raises(ImportError, match="Pillow"):
        write_label_png(tmp_path / "labels.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ImportError, match="Pillow"):
        write_case_overlays(tmp_path, "case", image, None, [[0, 0, 2, 2]], is_3d=False)
    assert list(tmp_path.iterdir()) == []


def test_case_overlays_log_paths(kvasir, tmp_path, caplog):
    imgs, boxes, gts = kvasir
    with caplog.at_level(logging.INFO, logger=overlay.__name__):
        paths = write_case_overlays(tmp_path, "case", imgs, gts, boxes, is_3d=False)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [f"wrote overlay {paths[0]}"]


def test_case_overlays_bad_arguments(tmp_path):
    image = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="case_name"):
        write_case_overlays(tmp_path, "sub/case", image, None, None, is_3d=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        write_case_overlays(tmp_path / "missing", "case", image, None, None, is_3d=False)
    source = tmp_path / "case_overlay.png"
    source.write_bytes(b"input")
    with pytest.raises(ValueError, match="input file"):
        write_case_overlays(tmp_path, "case", image, None, None, is_3d=False, input_path=source)
    assert source.read_bytes() == b"input"
