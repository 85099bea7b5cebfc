"""Tests of `npsam segment --overlay`: the PNGs are read back and compared with the written label maps."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from npsam import cli
from npsam.overlay import label_palette

KVASIR_CASE = "kvasir_seg/npz/imgs/2DBox_Endoscopy_kvasir_cju0sxqiclckk08551ycbwhno.npz"
CT_NIFTI = "PSEUDO_GT_totalsegmentator_example/raw/example_ct_sm.nii.gz"


def _read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _colour_pixels(rgb: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return (rgb == colour).all(axis=-1)


def test_overlay_2d_case_colours(tmp_path, data_dir, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    case_path = shutil.copy(data_dir / KVASIR_CASE, cases)
    output = tmp_path / "out"

    status = cli.main(["segment", str(cases), "-o", str(output), "--overlay"])
    assert status == 0, capsys.readouterr().err

    overlay_path = output / "2DBox_Endoscopy_kvasir_cju0sxqiclckk08551ycbwhno_overlay.png"
    overlay = _read_png(overlay_path)
    with np.load(case_path) as case:
        image, boxes = case["imgs"], case["boxes"]
    with np.load(output / "2DBox_Endoscopy_kvasir_cju0sxqiclckk08551ycbwhno.npz") as written:
        segs = written["segs"]
    assert overlay.shape == image.shape

    colour = label_palette(1)[1]
    x0, y0, x1, y1 = boxes[0]
    assert (overlay[y0, x0:x1 + 1] == colour).all(), "the box's top edge must have the object's colour"
    assert (overlay[y0:y1 + 1, x1] == colour).all(), "the box's right edge must have the object's colour"
    # Contour pixels: object pixels with a background pixel or the image edge next to them.
    inner = segs.astype(bool)
    edge = inner & ~ndimage.binary_erosion(inner, border_value=1)
    assert edge.sum() > 100
    assert _colour_pixels(overlay, colour)[edge].all()
    # Far from the object and the box, the image is unchanged.
    outside = np.ones(segs.shape, bool)
    outside[max(0, y0 - 5) : y1 + 6, max(0, x0 - 5) : x1 + 6] = False
    assert (overlay[outside] == image[outside]).all()


def test_overlay_nifti_volume_files(tmp_path, data_dir, capsys):
    output = tmp_path / "out"
    boxes = [["20", "20", "12", "70", "60", "13"], ["60", "40", "13", "110", "90", "14"]]
    argv = ["segment", str(data_dir / CT_NIFTI), "-o", str(output), "--overlay"]
    for box in boxes:
        argv += ["--box", *box]

    status = cli.main(argv)
    assert status == 0, capsys.readouterr().err

    names = sorted(path.name for path in output.iterdir())
    assert names == [
        "efficiency.csv",
        "example_ct_sm_labels.nii.gz",
        "example_ct_sm_montage.png",
        "example_ct_sm_object1_z12.png",
        "example_ct_sm_object2_z13.png",
    ]
    import nibabel

    labels = np.asanyarray(nibabel.load(str(output / "example_ct_sm_labels.nii.gz")).dataobj).T  # (z, y, x)
    palette = label_palette(2)
    for label, z in ((1, 12), (2, 13)):
        overlay = _read_png(output / f"example_ct_sm_object{label}_z{z}.png")
        assert overlay.shape == labels.shape[1:] + (3,)
        assert (labels[z] == label).any(), "the object must be segmented on its middle slice"
        assert _colour_pixels(overlay, palette[label]).sum() > 0
        x0, y0, _, x1, y1, _ = map(int, boxes[label - 1])
        assert (overlay[y0, x0 : x1 + 1] == palette[label]).all()
    montage = _read_png(output / "example_ct_sm_montage.png")
    assert montage.shape[0] > labels.shape[1], "the montage has several rows of tiles"
    assert montage.shape[1] > labels.shape[2], "the montage has several columns of tiles"
    assert _colour_pixels(montage, palette[1]).any()
    assert _colour_pixels(montage, palette[2]).any()


def test_overlay_without_pillow(tmp_path, data_dir, capsys, monkeypatch):
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(data_dir / KVASIR_CASE, cases)
    monkeypatch.setitem(sys.modules, "PIL", None)
    output = tmp_path / "out"

    status = cli.main(["segment", str(cases), "-o", str(output), "--overlay"])

    assert status == 1
    assert 'pip install "npsam[images]"' in capsys.readouterr().err
    assert not output.exists() or not any(output.glob("*.npz")), "no case may run when overlays cannot be written"


@pytest.mark.parametrize("flag", [[], ["--overlay"]])
def test_overlay_flag_parsed(flag):
    args = cli.build_parser().parse_args(["segment", "in", "-o", "out", *flag])
    assert args.overlay is bool(flag)
