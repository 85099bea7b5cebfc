"""Tests of npsam.image_files on real NIfTI, DICOM, PNG, JPEG and TIFF files.

The files come from the real-data folder (raw originals) and from the test data that the nibabel and
pydicom wheels ship. Only `test_box_in_voxel_indices_*` runs the model, on two CT slices.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npsam import image_files
from npsam.image_files import ImageFileError, MissingDependencyError

REPO_ROOT = Path(__file__).resolve().parent.parent
CT_NIFTI = "PSEUDO_GT_totalsegmentator_example/raw/example_ct_sm.nii.gz"
CT_SEG_NIFTI = "PSEUDO_GT_totalsegmentator_example/raw/example_seg.nii.gz"
MR_NIFTI = "colin27_aal_mricron/raw/ch2.nii.gz"
FLAIR_NIFTI = "brats2021_sammed3d/raw/BraTS2021_01646_flair.nii.gz"
LIVER_LABEL = 5  # TotalSegmentator's liver, the largest organ of example_seg.nii.gz


def _package_data(module_name: str, *parts: str) -> Path:
    module = importlib.import_module(module_name)  # a missing package fails the test; it never skips
    return Path(module.__file__).resolve().parent.joinpath(*parts)


@pytest.fixture(scope="module")
def nibabel_data() -> Path:
    return _package_data("nibabel", "tests", "data")


@pytest.fixture(scope="module")
def pydicom_data() -> Path:
    return _package_data("pydicom", "data", "test_files")


def _nib_array(path: Path) -> np.ndarray:
    import nibabel

    return np.asanyarray(nibabel.load(str(path)).dataobj)


def _challenge_ct_formula(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """The CT branch of MedSAM's pre_CT_MR.py, written out as the oracle."""
    lower = level - width / 2
    upper = level + width / 2
    clipped = np.clip(image, lower, upper)
    return np.uint8((clipped - np.min(clipped)) / (np.max(clipped) - np.min(clipped)) * 255.0)


def _challenge_mr_formula(image: np.ndarray) -> np.ndarray:
    """The MR branch of MedSAM's pre_CT_MR.py, written out as the oracle."""
    lower, upper = np.percentile(image[image > 0], 0.5), np.percentile(image[image > 0], 99.5)
    clipped = np.clip(image, lower, upper)
    scaled = (clipped - np.min(clipped)) / (np.max(clipped) - np.min(clipped)) * 255.0
    scaled[image == 0] = 0
    return np.uint8(scaled)


# ---- NIfTI ----


def test_nifti_ct_axes_spacing_affine(data_dir):
    import nibabel

    path = data_dir / CT_NIFTI
    image = image_files.read_image_file(path)
    stored = _nib_array(path)  # (i, j, k)

    assert image.format == "nifti"
    assert image.is_volume
    assert image.array.shape == stored.shape[::-1]
    assert image.array.dtype == np.int16
    np.testing.assert_array_equal(image.array, stored.transpose(2, 1, 0))
    assert image.array[7, 20, 30] == stored[30, 20, 7], "volume[z, y, x] must be the file's voxel (i=x, j=y, k=z)"
    assert image.spacing == (3.0, 3.0, 3.0)
    np.testing.assert_array_equal(image.affine, nibabel.load(str(path)).affine)
    assert image.modality is None
    assert not image.array.flags.writeable


def test_ct_window_matches_challenge_formula(data_dir):
    image = image_files.read_image_file(data_dir / CT_NIFTI)
    ct = image.array

    # The CT reaches both ends of the soft-tissue window, so the script's min/max scaling is the window's.
    assert ct.min() < 40 - 200
    assert ct.max() > 40 + 200
    expected = _challenge_ct_formula(ct, 40, 400)
    np.testing.assert_array_equal(image_files.to_uint8(ct, "soft-tissue"), expected)
    np.testing.assert_array_equal(image_files.to_uint8(ct, "auto"), expected)
    np.testing.assert_array_equal(image_files.to_uint8(ct, "40,400"), expected)

    # The lung window starts at -1350 HU, below this CT's minimum. npsam keeps the window's fixed ends,
    # where the script's min/max scaling would stretch the image.
    lung = np.uint8((np.clip(ct.astype(np.float64), -1350, 150) + 1350) / 1500 * 255.0)
    np.testing.assert_array_equal(image_files.to_uint8(ct, "lung"), lung)


def test_ct_window_spot_values():
    hu = np.array([-1000, -160, -159, 0, 40, 239, 240, 1000], dtype=np.int16)
    # (hu + 160) / 400 * 255, truncated, clipped to 0..255.
    expected = np.array([0, 0, 0, 102, 127, 254, 255, 255], dtype=np.uint8)
    np.testing.assert_array_equal(image_files.to_uint8(hu, "soft-tissue"), expected)


def test_percentile_matches_challenge_formula(data_dir):
    flair = image_files.read_image_file(data_dir / FLAIR_NIFTI).array  # float32, zeros outside the brain
    converted = image_files.to_uint8(flair, "auto")

    np.testing.assert_array_equal(converted, _challenge_mr_formula(flair))
    assert np.all(converted[flair == 0] == 0), "zero voxels stay 0"
    assert converted.max() == 255


def test_auto_window_choices(data_dir, caplog):
    mr = image_files.read_image_file(data_dir / MR_NIFTI).array  # uint8 T1
    with caplog.at_level(logging.INFO, logger="npsam.image_files"):
        np.testing.assert_array_equal(image_files.to_uint8(mr), mr)
    assert "already uint8" in caplog.text

    ct = image_files.read_image_file(data_dir / CT_NIFTI).array
    assert image_files.choose_window(ct)[0] == image_files.WINDOW_PRESETS["soft-tissue"]
    assert image_files.choose_window(ct, "MR")[0] == "percentile", "a known non-CT modality never gets the HU rule"
    assert image_files.choose_window(ct.astype(np.float32) + 0.5)[0] == "percentile", "fractional values are not HU"
    assert image_files.choose_window(mr.astype(np.uint16), "CT")[0] == (40.0, 400.0)


def test_auto_window_mr_with_negative_values():
    import nibabel

    # nibabel's anatomical.nii is a head MR whose values reach -610 (and 30393): not Hounsfield units.
    path = Path(nibabel.__file__).resolve().parent / "tests" / "data" / "anatomical.nii"
    array = image_files.read_image_file(path).array
    assert array.min() < -500
    assert image_files.choose_window(array)[0] == "percentile"
    # The same values shifted into the CT range, reaching air at -1000, count as HU.
    as_ct = np.clip(array.astype(np.int32) - 1000, -1024, 3071)
    assert image_files.choose_window(as_ct)[0] == image_files.WINDOW_PRESETS["soft-tissue"]


def test_window_presets_and_parsing():
    assert image_files.WINDOW_PRESETS["soft-tissue"] == (40.0, 400.0)
    for name in ("lung", "bone", "brain", "liver", "abdomen", "mediastinum"):
        assert image_files.parse_window(name) == image_files.WINDOW_PRESETS[name]
    assert image_files.parse_window(" Soft-Tissue ") == (40.0, 400.0)
    assert image_files.parse_window("-600,1500") == (-600.0, 1500.0)
    assert image_files.parse_window("percentile") == "percentile"
    for bad in ("soft", "40", "40,0", "40,-10", "a,b", "nan,400", "1,2,3"):
        with pytest.raises(ImageFileError, match="window"):
            image_files.parse_window(bad)


def test_none_window_rules(data_dir):
    mr = image_files.read_image_file(data_dir / MR_NIFTI).array
    np.testing.assert_array_equal(image_files.to_uint8(mr.astype(np.float32), "none"), mr)
    ct = image_files.read_image_file(data_dir / CT_NIFTI).array
    with pytest.raises(ImageFileError, match="0..255"):
        image_files.to_uint8(ct, "none")


def test_nan_and_constant_images(data_dir):
    flair = np.array(image_files.read_image_file(data_dir / FLAIR_NIFTI).array)
    flair[50, 80, 80] = np.nan
    with pytest.raises(ImageFileError, match="1 NaN"):
        image_files.to_uint8(flair)

    with np.errstate(all="raise"):
        constant = np.full((3, 8, 8), 700.0, dtype=np.float32)
        np.testing.assert_array_equal(image_files.to_uint8(constant, "percentile"), np.zeros((3, 8, 8), np.uint8))
        zeros = np.zeros((8, 8), dtype=np.uint16)
        np.testing.assert_array_equal(image_files.to_uint8(zeros), np.zeros((8, 8), np.uint8))


def test_to_uint8_does_not_modify_input(data_dir):
    flair = np.array(image_files.read_image_file(data_dir / FLAIR_NIFTI).array)
    before = flair.copy()
    image_files.to_uint8(flair, "percentile")
    image_files.to_uint8(flair, "brain")
    np.testing.assert_array_equal(flair, before)


def test_nibabel_shipped_niftis(nibabel_data):
    anatomical = image_files.read_image_file(nibabel_data / "anatomical.nii")
    assert anatomical.array.shape == _nib_array(nibabel_data / "anatomical.nii").shape[::-1]

    standard = image_files.read_image_file(nibabel_data / "standard.nii.gz")
    assert standard.array.shape == _nib_array(nibabel_data / "standard.nii.gz").shape[::-1]

    with pytest.raises(ImageFileError, match="4-D NIfTI"):
        image_files.read_image_file(nibabel_data / "example_nifti2.nii.gz")


def test_nifti2_round_trip(tmp_path, nibabel_data):
    import nibabel

    source = nibabel.load(str(nibabel_data / "example_nifti2.nii.gz"))
    first_volume = nibabel.Nifti2Image(np.asanyarray(source.dataobj)[..., 0], source.affine, source.header)
    nibabel.save(first_volume, str(tmp_path / "first.nii.gz"))

    image = image_files.read_image_file(tmp_path / "first.nii.gz")
    labels = (image.array > np.median(image.array)).astype(np.uint8)
    output = image_files.write_label_file(tmp_path / "first_labels.nii.gz", labels, image)
    written = nibabel.load(str(output))
    assert isinstance(written, nibabel.Nifti2Image)
    np.testing.assert_array_equal(written.affine, image.affine)
    np.testing.assert_array_equal(image_files.read_image_file(output).array, labels)


def test_nifti_4d_rejected(nibabel_data):
    with pytest.raises(ImageFileError, match="4-D NIfTI .* 2 volumes"):
        image_files.read_image_file(nibabel_data / "example4d.nii.gz")


def test_nifti_corrupt_file(tmp_path, data_dir):
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes((data_dir / MR_NIFTI).read_bytes()[:20000])
    with pytest.raises(ImageFileError, match="not a readable NIfTI"):
        image_files.read_image_file(truncated)

    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"not a nifti header" * 40)
    with pytest.raises(ImageFileError, match="not a readable NIfTI"):
        image_files.read_image_file(garbage)


def test_nifti_label_round_trip(tmp_path, data_dir):
    import nibabel

    image = image_files.read_image_file(data_dir / CT_NIFTI)
    labels = _nib_array(data_dir / CT_SEG_NIFTI).transpose(2, 1, 0)  # real labels 0..117 as (z, y, x)
    output = image_files.write_label_file(tmp_path / image_files.label_file_name(image), labels, image)

    assert output.name == "example_ct_sm_labels.nii.gz"
    written = nibabel.load(str(output))
    np.testing.assert_array_equal(written.affine, image.affine)
    assert written.get_data_dtype() == np.uint8
    assert np.isnan(written.header["scl_slope"]) or written.header["scl_slope"] in (0, 1)
    assert written.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), labels.transpose(2, 1, 0))
    np.testing.assert_array_equal(image_files.read_image_file(output).array, labels)
    assert sorted(path.name for path in tmp_path.iterdir()) == [output.name], "no temporary file is left"


def test_nifti_label_write_wide_labels(tmp_path, data_dir):
    import nibabel

    image = image_files.read_image_file(data_dir / CT_NIFTI)
    labels = np.zeros(image.spatial_shape, dtype=np.uint16)
    labels[3, 10:20, 10:20] = 300
    output = image_files.write_label_file(tmp_path / "wide.nii", labels, image)
    written = nibabel.load(str(output))
    assert written.get_data_dtype() == np.uint16
    assert np.asanyarray(written.dataobj).max() == 300


def test_label_write_rejects_bad_input(tmp_path, data_dir):
    image = image_files.read_image_file(data_dir / CT_NIFTI)
    with pytest.raises(ImageFileError, match="do not match"):
        image_files.write_label_file(tmp_path / "a.nii.gz", np.zeros((2, 3, 4), np.uint8), image)
    with pytest.raises(ImageFileError, match=r"\.nii"):
        image_files.write_label_file(tmp_path / "a.png", np.zeros(image.spatial_shape, np.uint8), image)
    copy = tmp_path / "copy.nii.gz"
    shutil.copy(data_dir / CT_NIFTI, copy)
    own = image_files.read_image_file(copy)
    with pytest.raises(ImageFileError, match="input file itself"):
        image_files.write_label_file(copy, np.zeros(own.spatial_shape, np.uint8), own)
    assert copy.read_bytes() == (data_dir / CT_NIFTI).read_bytes()


# ---- DICOM ----


def test_dicom_single_ct_slice(pydicom_data):
    import pydicom

    path = pydicom_data / "CT_small.dcm"
    image = image_files.read_image_file(path)
    dataset = pydicom.dcmread(path)

    assert image.format == "dicom"
    assert image.modality == "CT"
    assert image.array.shape == (1, 128, 128)
    expected_hu = dataset.pixel_array.astype(np.int32) * int(dataset.RescaleSlope) + int(dataset.RescaleIntercept)
    np.testing.assert_array_equal(image.array[0], expected_hu)
    assert image.spacing[:2] == (float(dataset.PixelSpacing[1]), float(dataset.PixelSpacing[0]))
    assert image_files.choose_window(image.array, image.modality)[0] == (40.0, 400.0)
    np.testing.assert_array_equal(image_files.to_uint8(image.array, modality="CT"), _challenge_ct_formula(image.array, 40, 400))

    # The affine maps voxel (0, 0, 0) to ImagePositionPatient in RAS (x and y negated from LPS).
    position = np.array(dataset.ImagePositionPatient, dtype=np.float64)
    np.testing.assert_allclose(image.affine @ [0, 0, 0, 1], [-position[0], -position[1], position[2], 1])


def test_dicom_mr_slice_uses_percentile(pydicom_data):
    image = image_files.read_image_file(pydicom_data / "MR_small.dcm")
    assert image.modality == "MR"
    assert image_files.choose_window(image.array, image.modality)[0] == "percentile"


def test_dicom_series_sorted_by_position(pydicom_data):
    import pydicom

    folder = pydicom_data / "dicomdirtests" / "98892001" / "CT5N"
    image = image_files.read_image_file(folder)
    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    by_height = sorted(datasets, key=lambda dataset: float(dataset.ImagePositionPatient[2]))

    assert image.array.shape == (5, 16, 16)
    # Instance numbers run opposite to the position, so sorting by position reverses them.
    assert [int(d.InstanceNumber) for d in by_height] == [10, 9, 8, 7, 6]
    for z, dataset in enumerate(by_height):
        expected = dataset.pixel_array.astype(np.int32) + int(dataset.RescaleIntercept)
        np.testing.assert_array_equal(image.array[z], expected, err_msg=f"slice {z}")
        position = np.array(dataset.ImagePositionPatient, dtype=np.float64)
        np.testing.assert_allclose(image.affine @ [0, 0, z, 1], [-position[0], -position[1], position[2], 1], atol=1e-4)
    np.testing.assert_allclose(image.spacing, (0.488281, 0.488281, 2.5), atol=1e-6)

    # One step along i (a column) moves by the column spacing along the row direction.
    row_direction = np.array(by_height[0].ImageOrientationPatient[:3], dtype=np.float64)
    step = image.affine @ [1, 0, 0, 1] - image.affine @ [0, 0, 0, 1]
    np.testing.assert_allclose(step[:3], row_direction * [-1, -1, 1] * float(by_height[0].PixelSpacing[1]), atol=1e-9)


def test_dicom_label_map_written_as_nifti(tmp_path, pydicom_data):
    import nibabel

    image = image_files.read_image_file(pydicom_data / "dicomdirtests" / "98892001" / "CT5N")
    labels = np.zeros(image.spatial_shape, dtype=np.uint8)
    labels[1:4, 4:10, 2:8] = 1
    output = image_files.write_label_file(tmp_path / image_files.label_file_name(image), labels, image)

    assert output.name == "CT5N_labels.nii.gz"
    written = nibabel.load(str(output))
    np.testing.assert_allclose(written.affine, image.affine, atol=1e-5)
    assert int(written.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), labels.transpose(2, 1, 0))


def test_dicom_mixed_series_rejected(pydicom_data):
    with pytest.raises(ImageFileError, match="3 DICOM series"):
        image_files.read_image_file(pydicom_data / "dicomdirtests" / "98892003" / "MR2")


def test_dicom_mixed_orientations_rejected(pydicom_data):
    with pytest.raises(ImageFileError, match="ImageOrientationPatient differs"):
        image_files.read_image_file(pydicom_data / "dicomdirtests" / "98892003" / "MR700")


def test_dicom_duplicate_positions_rejected(tmp_path, pydicom_data):
    folder = tmp_path / "series"
    folder.mkdir()
    source = pydicom_data / "dicomdirtests" / "98892001" / "CT5N" / "2062"
    shutil.copy(source, folder / "a")
    shutil.copy(source, folder / "b")
    with pytest.raises(ImageFileError, match="same position"):
        image_files.read_image_file(folder)


def test_dicom_missing_decoder_named(pydicom_data):
    with pytest.raises(ImageFileError, match="cannot decode .*JPEG-LS.*pylibjpeg"):
        image_files.read_image_file(pydicom_data / "MR_small_jpeg_ls_lossless.dcm")


def test_dicom_truncated_and_imageless(pydicom_data):
    with pytest.raises(ImageFileError, match="invalid DICOM pixel data"):
        image_files.read_image_file(pydicom_data / "MR_truncated.dcm")
    with pytest.raises(ImageFileError, match="no DICOM image with pixel data"):
        image_files.read_image_file(pydicom_data / "dicomdirtests" / "TINY_ALPHA" / "PT000000" / "ST000000" / "SE000000")


def test_is_image_file(tmp_path, data_dir, pydicom_data):
    assert image_files.is_image_file(data_dir / CT_NIFTI)
    assert image_files.is_image_file(pydicom_data / "dicomdirtests" / "98892001" / "CT5N")
    assert image_files.is_image_file(pydicom_data / "CT_small.dcm")
    assert image_files.is_image_file(data_dir / "cxr_lungs_imlab" / "raw" / "1.jpg")
    assert not image_files.is_image_file(data_dir / "cxr_lungs_imlab" / "npz" / "imgs")
    assert not image_files.is_image_file(tmp_path / "missing.nii.gz")
    no_suffix = tmp_path / "slice"
    shutil.copy(pydicom_data / "CT_small.dcm", no_suffix)
    assert image_files.is_image_file(no_suffix)
    assert image_files.read_image_file(no_suffix).modality == "CT"


# ---- PNG, JPEG, TIFF ----


def test_grey_jpeg_and_png(data_dir):
    from PIL import Image

    jpeg = image_files.read_image_file(data_dir / "cxr_lungs_imlab" / "raw" / "1.jpg")
    assert jpeg.format == "image"
    assert not jpeg.is_volume
    assert jpeg.array.shape == (512, 512)
    assert jpeg.array.dtype == np.uint8
    np.testing.assert_array_equal(jpeg.array, np.asarray(Image.open(data_dir / "cxr_lungs_imlab" / "raw" / "1.jpg")))

    png = image_files.read_image_file(data_dir / "hc18_fetal_us" / "raw" / "001_HC.png")
    assert png.array.shape == (540, 800)
    assert png.affine is None
    assert image_files.label_file_name(png) == "001_HC_labels.png"


def test_rgb_tiff_read_through_pillow_fallback(data_dir):
    from PIL import Image

    path = data_dir / "drive_fundus" / "raw" / "images" / "21_training.tif"  # LZW-compressed RGB
    image = image_files.read_image_file(path)
    assert image.array.shape == (584, 565, 3)
    np.testing.assert_array_equal(image.array, np.asarray(Image.open(path).convert("RGB")))


def test_uint16_tiff_uses_percentile(data_dir):
    image = image_files.read_image_file(data_dir / "stardist_dsb2018_nuclei" / "raw" / "img2d.tif")
    assert image.array.dtype == np.uint16
    assert image_files.choose_window(image.array)[0] == "percentile"
    converted = image_files.to_uint8(image.array)
    np.testing.assert_array_equal(converted, _challenge_mr_formula(image.array.astype(np.float64)))


def test_rgba_and_palette_pngs(tmp_path, data_dir):
    from PIL import Image

    rgb = np.asarray(Image.open(data_dir / "drive_fundus" / "raw" / "images" / "21_training.tif").convert("RGB"))
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)]))
    rgba.save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(image_files.read_image_file(tmp_path / "rgba.png").array, rgb)

    palette_image = Image.fromarray(rgb).quantize(16)
    palette_image.save(tmp_path / "palette.png")
    read = image_files.read_image_file(tmp_path / "palette.png").array
    assert read.shape == rgb.shape
    np.testing.assert_array_equal(read, np.asarray(palette_image.convert("RGB")))

    grey_alpha = Image.fromarray(rgb[:, :, 1]).convert("LA")
    grey_alpha.save(tmp_path / "la.png")
    np.testing.assert_array_equal(image_files.read_image_file(tmp_path / "la.png").array, rgb[:, :, 1])


def test_png_label_map_round_trip(tmp_path, data_dir):
    from PIL import Image

    image = image_files.read_image_file(data_dir / "hc18_fetal_us" / "raw" / "001_HC.png")
    labels = np.zeros(image.spatial_shape, dtype=np.uint8)
    labels[100:200, 100:300] = 1
    labels[300:400, 400:600] = 2
    labels[10:20, 10:20] = 255
    output = image_files.write_label_file(tmp_path / image_files.label_file_name(image), labels, image)

    with Image.open(output) as written:
        assert written.mode == "P"
        np.testing.assert_array_equal(np.asarray(written), labels)
        palette = np.array(written.getpalette()[: 256 * 3]).reshape(-1, 3)
    assert palette[0].tolist() == [0, 0, 0]
    for label in (1, 2, 255):
        assert palette[label].max() >= 100, f"label {label} colour {palette[label]} is too dark to see"
    assert len({tuple(colour) for colour in palette[1:]}) == 255, "labels 1..255 have distinct colours"


def test_png_label_map_above_255(tmp_path, data_dir):
    from PIL import Image

    image = image_files.read_image_file(data_dir / "hc18_fetal_us" / "raw" / "001_HC.png")
    labels = np.zeros(image.spatial_shape, dtype=np.uint16)
    labels[0, :300] = np.arange(1, 301)
    output = image_files.write_label_file(tmp_path / "many.png", labels, image)
    with Image.open(output) as written:
        np.testing.assert_array_equal(np.asarray(written).astype(np.uint16), labels)


def test_corrupt_images(tmp_path, data_dir):
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((data_dir / "hc18_fetal_us" / "raw" / "001_HC.png").read_bytes()[:3000])
    with pytest.raises(ImageFileError, match="not a readable image"):
        image_files.read_image_file(truncated)
    fake = tmp_path / "fake.tif"
    fake.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(ImageFileError, match="TIFF"):
        image_files.read_image_file(fake)
    unknown = tmp_path / "scan.mha"
    unknown.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(ImageFileError, match="unknown image format"):
        image_files.read_image_file(unknown)


# ---- Optional extras ----


@pytest.mark.parametrize(
    ("module_name", "relative", "extra"),
    [
        ("nibabel", CT_NIFTI, "nifti"),
        ("pydicom", None, "dicom"),
        ("PIL", "cxr_lungs_imlab/raw/1.jpg", "images"),
        ("tifffile", "stardist_dsb2018_nuclei/raw/img2d.tif", "images"),
    ],
)
def test_missing_extra_names_install(monkeypatch, data_dir, pydicom_data, module_name, relative, extra):
    path = pydicom_data / "CT_small.dcm" if relative is None else data_dir / relative
    monkeypatch.setitem(sys.modules, module_name, None)  # makes `import module_name` raise ImportError
    with pytest.raises(MissingDependencyError, match=rf'pip install "npsam\[{extra}\]"'):
        image_files.read_image_file(path)


def test_import_npsam_skips_extras():
    code = (
        "import sys, npsam, npsam.image_files, npsam.cli; "
        "loaded = [m for m in ('nibabel', 'pydicom', 'PIL', 'tifffile') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---- Axis convention with the model ----


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def test_box_in_voxel_indices_lands_on_label(data_dir):
    from npsam.cases import Case, segment_case

    image = image_files.read_image_file(data_dir / CT_NIFTI)
    liver_ijk = _nib_array(data_dir / CT_SEG_NIFTI) == LIVER_LABEL  # (i, j, k)
    k0, k1 = 15, 16
    i_index, j_index = np.nonzero(liver_ijk[:, :, k0 : k1 + 1].any(axis=2))
    box = [i_index.min(), j_index.min(), k0, i_index.max(), j_index.max(), k1]  # x0 y0 z0 x1 y1 z1 = i j k

    case = Case(
        name=image.name, is_3d=True, imgs=image_files.to_uint8(image.array), boxes=np.array([box], np.float64),
        spacing=np.array(image.spacing), path=image.path,
    )
    segs = segment_case(case, "litemedsam")  # (z, y, x)
    predicted_ijk = segs.transpose(2, 1, 0) == 1

    dice = _dice(predicted_ijk[:, :, k0 : k1 + 1], liver_ijk[:, :, k0 : k1 + 1])
    assert dice > 0.8, f"liver Dice {dice:.3f} on slices k={k0}..{k1}"
    assert not predicted_ijk[:, :, :k0].any()
    assert not predicted_ijk[:, :, k1 + 1 :].any()
