"""Tests of `npsam segment` on image files: NIfTI, a DICOM series folder and a JPEG, with --box and --window.

The segmenting tests run the model on a few slices only (about 10 to 30 s each on 2 shared cores).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from npsam import cli

CT_NIFTI = "PSEUDO_GT_totalsegmentator_example/raw/example_ct_sm.nii.gz"
CT_SEG_NIFTI = "PSEUDO_GT_totalsegmentator_example/raw/example_seg.nii.gz"
LIVER_LABEL = 5
CXR_IMAGE = "cxr_lungs_imlab/raw/1.jpg"
CXR_MASK = "cxr_lungs_imlab/raw/1-mask.png"


@pytest.fixture(scope="module")
def pydicom_data() -> Path:
    import pydicom

    return Path(pydicom.__file__).resolve().parent / "data" / "test_files"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _bounding_box(mask: np.ndarray) -> list[int]:
    rows, columns = np.nonzero(mask)
    return [int(columns.min()), int(rows.min()), int(columns.max()), int(rows.max())]


def test_segment_nifti_writes_label_map(tmp_path, data_dir, capsys):
    import nibabel

    liver = np.asanyarray(nibabel.load(str(data_dir / CT_SEG_NIFTI)).dataobj) == LIVER_LABEL  # (i, j, k)
    k0, k1 = 15, 16
    i_index, j_index = np.nonzero(liver[:, :, k0 : k1 + 1].any(axis=2))
    box = [i_index.min(), j_index.min(), k0, i_index.max(), j_index.max(), k1]
    output = tmp_path / "out"

    status = cli.main(["segment", str(data_dir / CT_NIFTI), "--box", *map(str, box), "-o", str(output)])
    captured = capsys.readouterr()

    assert status == 0, captured.err
    assert sorted(path.name for path in output.iterdir()) == ["efficiency.csv", "example_ct_sm_labels.nii.gz"]
    assert "soft-tissue" in captured.err, "auto must log the window it chose"
    written = nibabel.load(str(output / "example_ct_sm_labels.nii.gz"))
    np.testing.assert_array_equal(written.affine, nibabel.load(str(data_dir / CT_NIFTI)).affine)
    labels = np.asanyarray(written.dataobj)
    assert labels.shape == liver.shape
    assert set(np.unique(labels)) == {0, 1}
    dice = _dice(labels[:, :, k0 : k1 + 1] == 1, liver[:, :, k0 : k1 + 1])
    assert dice > 0.8, f"liver Dice {dice:.3f}"
    rows = _read_csv(output / "efficiency.csv")
    assert [row["case"] for row in rows] == ["example_ct_sm.nii.gz"]
    assert float(rows[0]["time"]) > 0


def test_segment_jpeg_writes_palette_png(tmp_path, data_dir):
    from PIL import Image

    mask = np.asarray(Image.open(data_dir / CXR_MASK)) > 0
    # The two lungs lie in the mask's left and right halves (image columns).
    middle = mask.shape[1] // 2
    right_lung, left_lung = mask.copy(), mask.copy()
    right_lung[:, middle:] = False
    left_lung[:, :middle] = False
    output = tmp_path / "out"

    argv = ["segment", str(data_dir / CXR_IMAGE), "-o", str(output)]
    for lung in (right_lung, left_lung):
        argv += ["--box", *map(str, _bounding_box(lung))]
    status = cli.main(argv)

    assert status == 0
    with Image.open(output / "1_labels.png") as written:
        assert written.mode == "P"
        labels = np.asarray(written)
        palette = np.array(written.getpalette()[:9]).reshape(3, 3)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].max() > 0
    assert palette[2].max() > 0
    assert _dice(labels == 1, right_lung) > 0.8
    assert _dice(labels == 2, left_lung) > 0.8


def test_segment_dicom_folder(tmp_path, pydicom_data):
    import nibabel

    folder = pydicom_data / "dicomdirtests" / "98892001" / "CT5N"
    output = tmp_path / "out"
    status = cli.main(["segment", str(folder), "--box", "2", "2", "1", "13", "13", "2", "-o", str(output), "--window", "bone"])

    assert status == 0
    written = nibabel.load(str(output / "CT5N_labels.nii.gz"))
    labels = np.asanyarray(written.dataobj)  # (i, j, k)
    assert labels.shape == (16, 16, 5)
    assert not labels[:, :, [0, 3, 4]].any(), "slices outside the box's z range stay empty"
    assert int(written.header["sform_code"]) == 1


def test_segment_image_errors(tmp_path, data_dir, capsys):
    ct = str(data_dir / CT_NIFTI)
    jpeg = str(data_dir / CXR_IMAGE)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    cases = [
        (["segment", ct, "-o", str(tmp_path / "a")], "needs at least one box"),
        (["segment", ct, "--box", "1", "2", "3", "4", "-o", str(tmp_path / "b")], "--box 1 has 4 numbers"),
        (["segment", jpeg, "--box", "1", "2", "3", "4", "5", "6", "-o", str(tmp_path / "c")], "a 2D image needs 4 numbers"),
        (["segment", ct, "--box", "0", "0", "0", "5", "5", "5", "--window", "sharp", "-o", str(tmp_path / "d")], "invalid window"),
        (["segment", ct, "--box", "500", "500", "0", "600", "600", "1", "-o", str(tmp_path / "e")], "entirely outside"),
        (["segment", jpeg, "--box", "600", "600", "700", "700", "-o", str(tmp_path / "f")], "entirely outside"),
        (["segment", str(tmp_path / "missing.png"), "--box", "1", "2", "3", "4", "-o", str(tmp_path / "g")], "missing.png not found"),
        (["segment", str(notes), "--box", "1", "2", "3", "4", "-o", str(tmp_path / "h")], "not a supported image file"),
    ]
    for argv, message in cases:
        status = cli.main(argv)
        captured = capsys.readouterr()
        assert status == 1, argv
        assert message in captured.err, (argv, captured.err)
        assert "Traceback" not in captured.err
        assert "loading" not in captured.err, "bad input must fail before the model loads"


def test_segment_4d_nifti_rejected(tmp_path, capsys):
    import nibabel

    path = Path(nibabel.__file__).resolve().parent / "tests" / "data" / "example4d.nii.gz"
    status = cli.main(["segment", str(path), "--box", "0", "0", "0", "5", "5", "5", "-o", str(tmp_path / "out")])
    assert status == 1
    assert "4-D NIfTI" in capsys.readouterr().err


def test_segment_npz_rejects_box(tmp_path, data_dir, capsys):
    case = data_dir / "cxr_lungs_imlab" / "npz" / "imgs" / "2DBox_XRay_cxrlung_1.npz"
    status = cli.main(["segment", str(case), "--box", "1", "2", "3", "4", "-o", str(tmp_path / "out")])
    assert status == 1
    assert "carries its own boxes" in capsys.readouterr().err


def test_segment_mixed_dicom_series_rejected(tmp_path, pydicom_data, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(pydicom_data / "dicomdirtests" / "98892003" / "MR2", folder)
    status = cli.main(["segment", str(folder), "--box", "0", "0", "0", "5", "5", "1", "-o", str(tmp_path / "out")])
    assert status == 1
    assert "DICOM series" in capsys.readouterr().err


def test_segment_image_over_255_boxes_writes_preview(tmp_path, data_dir, capsys):
    from PIL import Image

    # 256 small boxes tiled over the 512x512 nuclei image: the labels need a 16-bit PNG.
    corners = [(x, y) for y in range(0, 512, 32) for x in range(0, 512, 32)]
    argv = ["segment", str(data_dir / "stardist_dsb2018_nuclei/raw/img2d.tif"), "-o", str(tmp_path / "out")]
    for x, y in corners:
        argv += ["--box", str(x + 4), str(y + 4), str(x + 27), str(y + 27)]

    status = cli.main(argv)
    assert status == 0, capsys.readouterr().err

    with Image.open(tmp_path / "out" / "img2d_labels.png") as exact:
        labels = np.asarray(exact)
    with Image.open(tmp_path / "out" / "img2d_labels_preview.png") as preview:
        assert preview.mode == "RGB"
        colours = np.asarray(preview)
    assert labels.max() > 255
    labelled = labels > 0
    assert colours[labelled].max(axis=-1).min() >= 128, "every labelled pixel has a bright colour"
    assert not colours[~labelled].any(), "the background stays black"


def test_window_level_and_width_as_two_numbers(tmp_path, data_dir, capsys):
    ct = str(data_dir / CT_NIFTI)
    for name, window in (("comma", ["40,400"]), ("space", ["40", "400"])):
        status = cli.main(["segment", ct, "--box", "20", "20", "12", "70", "60", "12", "--window", *window, "-o", str(tmp_path / name)])
        assert status == 0, capsys.readouterr().err
    import nibabel

    comma = np.asanyarray(nibabel.load(str(tmp_path / "comma" / "example_ct_sm_labels.nii.gz")).dataobj)
    space = np.asanyarray(nibabel.load(str(tmp_path / "space" / "example_ct_sm_labels.nii.gz")).dataobj)
    assert comma.any()
    np.testing.assert_array_equal(comma, space)
