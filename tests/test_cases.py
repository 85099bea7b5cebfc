"""Tests of npsam.cases: reading and checking .npz cases, atomic `segs` writing, 2D case segmentation.

The 2D parity tests compare `segment_case` with the PyTorch reference pipeline in
tests/reference/pipeline.py on real cases from every 2D source folder. On the 2-core test machine,
shared with other jobs, one case takes 10 to 30 s, the 125-nucleus microscopy case about 2 min and
the 241-box memory test about 80 s.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from npsam.cases import Case, CaseError, is_3d_name, read_case, segment_case, write_segs
from reference.pipeline import per_object_dice, reference_segment_2d

REPO_ROOT = Path(__file__).resolve().parent.parent

# (source folder, number of cases) for the 2D parity test: the first cases in sorted order.
PARITY_2D_CASES = [
    ("kvasir_seg", 2),
    ("ph2_dermoscopy", 2),
    ("hc18_fetal_us", 2),
    ("cxr_lungs_imlab", 2),
    ("drive_fundus", 1),
    ("stardist_dsb2018_nuclei", 1),
]
MAMMOGRAPHY_CASE = "NO_GT_medficientsam_mammography_demo/imgs/2DBox_Mammography_demo.npz"
MIN_OBJECT_DICE = 0.999

MEMORY_LIMIT_MIB = 2048
MEMORY_TEST_SIZE = (1920, 2560)
MEMORY_TEST_BOXES = 241


@pytest.fixture(scope="module")
def npsam_model():
    from npsam.model import load_model

    return load_model("litemedsam")


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _rgb_image(height=20, width=30, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _volume(depth=4, height=20, width=30, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (depth, height, width), dtype=np.uint8)


def _parity_cases(cases) -> list:
    selected = []
    for source, count in PARITY_2D_CASES:
        selected.extend(cases(source)[:count])
    return selected


def _describe_differences(actual: np.ndarray, expected: np.ndarray, num_objects: int) -> str:
    different = np.argwhere(actual != expected)
    dice = per_object_dice(actual, expected, num_objects)
    return (
        f"{len(different)} differing pixels of {actual.size}, first {different[:5].tolist()}; "
        f"lowest per-object Dice {np.nanmin(dice):.6f} (object {int(np.nanargmin(dice)) + 1})"
    )


# ---- read_case ----


def test_read_case_2d_round_trip(tmp_path):
    image = _rgb_image()
    boxes = np.array([[1, 2, 10, 12], [5, 5, 25, 18]], dtype=np.int64)
    path = _save(tmp_path / "2DBox_US_example.npz", imgs=image, boxes=boxes)

    case = read_case(path)

    assert case.name == "2DBox_US_example"
    assert case.file_name == "2DBox_US_example.npz"
    assert case.is_3d is False
    assert case.path == path
    assert case.num_objects == 2
    assert case.spacing is None
    np.testing.assert_array_equal(case.imgs, image)
    np.testing.assert_array_equal(case.boxes, boxes)
    assert case.boxes.dtype == np.int64
    assert not case.imgs.flags.writeable
    assert not case.boxes.flags.writeable


def test_read_case_2d_grey_and_float_boxes(tmp_path):
    image = _rgb_image()[:, :, 0]
    boxes = np.array([[1.5, 2.0, 10.25, 12.0]], dtype=np.float32)
    case = read_case(_save(tmp_path / "2DBox_XRay_grey.npz", imgs=image, boxes=boxes))
    assert case.imgs.shape == (20, 30)
    assert case.boxes.dtype == np.float32


def test_read_case_3d_round_trip(tmp_path):
    volume = _volume()
    boxes = np.array([[1, 2, 0, 10, 12, 3]], dtype=np.int64)
    spacing = np.array([0.5, 0.5, 3.0])
    case = read_case(_save(tmp_path / "3DBox_CT_example.npz", imgs=volume, boxes=boxes, spacing=spacing))

    assert case.is_3d is True
    np.testing.assert_array_equal(case.imgs, volume)
    np.testing.assert_array_equal(case.boxes, boxes)
    np.testing.assert_array_equal(case.spacing, spacing)
    assert case.spacing.dtype == np.float64
    assert not case.spacing.flags.writeable


def test_read_case_3d_rgb_slices(tmp_path):
    volume = np.repeat(_volume()[..., None], 3, axis=3)
    boxes = np.array([[1, 2, 0, 10, 12, 3]])
    case = read_case(_save(tmp_path / "3DBox_MR_rgb.npz", imgs=volume, boxes=boxes, spacing=np.ones(3)))
    assert case.imgs.shape == (4, 20, 30, 3)


def test_read_case_3d_without_spacing_warns(tmp_path, caplog):
    path = _save(tmp_path / "3DBox_CT_nospacing.npz", imgs=_volume(), boxes=np.array([[1, 2, 0, 10, 12, 3]]))
    with caplog.at_level(logging.WARNING, logger="npsam.cases"):
        case = read_case(path)
    assert case.spacing is None
    assert "without 'spacing'" in caplog.text


def test_read_case_real_files(data_dir):
    two_d = read_case(data_dir / "kvasir_seg" / "npz" / "imgs" / "2DBox_Endoscopy_kvasir_cju0sxqiclckk08551ycbwhno.npz")
    three_d = read_case(data_dir / "PSEUDO_GT_totalsegmentator_example" / "npz" / "imgs" / "3DBox_CT_totalseg_example_PSEUDOGT.npz")

    assert not two_d.is_3d
    assert two_d.imgs.ndim == 3
    assert two_d.imgs.shape[2] == 3
    assert two_d.boxes.shape[1] == 4
    assert three_d.is_3d
    assert three_d.imgs.shape == (30, 101, 122)
    assert three_d.boxes.shape == (40, 6)
    np.testing.assert_array_equal(three_d.spacing, [3.0, 3.0, 3.0])


def test_is_3d_name_uses_prefix_only():
    assert is_3d_name("3DBox_CT_a.npz")
    assert is_3d_name("/some/folder/3D_anything.npz")
    assert not is_3d_name("2DBox_CT_3D.npz")
    assert not is_3d_name("CT_3DBox.npz")


def test_read_case_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_case(tmp_path / "2DBox_absent.npz")


def test_read_case_truncated_file(tmp_path, data_dir):
    original = (data_dir / "cxr_lungs_imlab" / "npz" / "imgs" / "2DBox_XRay_cxrlung_1.npz").read_bytes()
    path = tmp_path / "2DBox_XRay_truncated.npz"
    path.write_bytes(original[: len(original) // 2])
    with pytest.raises(CaseError, match="truncated or corrupt"):
        read_case(path)


def test_read_case_corrupt_member(tmp_path):
    # A valid zip directory around damaged compressed data fails only when the member is read.
    path = tmp_path / "2DBox_corrupt_member.npz"
    np.savez_compressed(path, imgs=_rgb_image(200, 200), boxes=np.array([[1, 1, 5, 5]]))
    data = bytearray(path.read_bytes())
    start = data.index(b"imgs.npy") + 200
    data[start : start + 200] = bytes(200)
    path.write_bytes(bytes(data))
    with pytest.raises(CaseError, match="not a readable .npz"):
        read_case(path)


def test_read_case_not_a_zip(tmp_path):
    path = tmp_path / "2DBox_text.npz"
    path.write_text("this is not an npz file")
    with pytest.raises(CaseError, match="truncated or corrupt"):
        read_case(path)


def test_read_case_single_npy(tmp_path):
    path = tmp_path / "2DBox_single.npz"
    with open(path, "wb") as file:
        np.save(file, _rgb_image())
    with pytest.raises(CaseError, match="single .npy array"):
        read_case(path)


def test_read_case_object_array(tmp_path):
    path = tmp_path / "2DBox_objects.npz"
    np.savez(path, imgs=_rgb_image(), boxes=np.array([[1, 2, 3, 4], None], dtype=object))
    with pytest.raises(CaseError, match="plain numeric arrays"):
        read_case(path)


@pytest.mark.parametrize("missing", ["imgs", "boxes"])
def test_read_case_missing_key(tmp_path, missing):
    arrays = {"imgs": _rgb_image(), "boxes": np.array([[1, 2, 10, 12]])}
    del arrays[missing]
    with pytest.raises(CaseError, match=rf"missing key\(s\) \['{missing}'\]"):
        read_case(_save(tmp_path / "2DBox_missing.npz", **arrays))


BAD_CASES = [
    # (file name, imgs, boxes, spacing or None, expected message fragment)
    ("2DBox_a.npz", np.zeros((20, 30, 4), np.uint8), np.array([[1, 2, 3, 4]]), None, r"needs \(H, W, 3\) or \(H, W\)"),
    ("2DBox_a.npz", np.zeros((2, 20, 30, 3), np.uint8), np.array([[1, 2, 3, 4]]), None, "rename the file"),
    ("3DBox_a.npz", np.zeros((20, 30), np.uint8), np.array([[1, 2, 0, 3, 4, 1]]), None, r"needs \(D, H, W\)"),
    ("2DBox_a.npz", np.zeros((20, 30, 3), np.float32), np.array([[1, 2, 3, 4]]), None, "dtype float32"),
    ("2DBox_a.npz", np.zeros((20, 30, 3), np.uint16), np.array([[1, 2, 3, 4]]), None, "dtype uint16"),
    ("2DBox_a.npz", np.zeros((0, 30, 3), np.uint8), np.array([[1, 2, 3, 4]]), None, "is empty"),
    ("3DBox_a.npz", np.zeros((0, 20, 30), np.uint8), np.array([[1, 2, 0, 3, 4, 1]]), np.ones(3), "is empty"),
    ("2DBox_a.npz", _rgb_image(), np.zeros((0, 4), np.int64), None, "'boxes' is empty"),
    ("2DBox_a.npz", _rgb_image(), np.array([[1, 2, 0, 3, 4, 1]]), None, r"\(N, 4\).*if this is a 3D case, rename"),
    ("3DBox_a.npz", _volume(), np.array([[1, 2, 3, 4]]), np.ones(3), r"\(N, 6\).*if this is a 2D case, rename"),
    ("2DBox_a.npz", _rgb_image(), np.array([1, 2, 3, 4]), None, r"shape \(4,\)"),
    ("2DBox_a.npz", _rgb_image(), np.array([[1.0, np.nan, 3.0, 4.0]]), None, "NaN or infinity"),
    ("2DBox_a.npz", _rgb_image(), np.array([[1.0, 2.0, np.inf, 4.0]]), None, "NaN or infinity"),
    ("2DBox_a.npz", _rgb_image(), np.array([["1", "2", "3", "4"]]), None, "integers or floats"),
    ("3DBox_a.npz", _volume(), np.array([[1, 2, 0, 3, 4, 1]]), np.ones(2), "must be 3 numbers"),
    ("3DBox_a.npz", _volume(), np.array([[1, 2, 0, 3, 4, 1]]), np.array([1.0, np.nan, 1.0]), "finite and positive"),
    ("3DBox_a.npz", _volume(), np.array([[1, 2, 0, 3, 4, 1]]), np.array([1.0, 0.0, 1.0]), "finite and positive"),
]


@pytest.mark.parametrize("file_name, imgs, boxes, spacing, message", BAD_CASES)
def test_read_case_rejects_bad_arrays(tmp_path, file_name, imgs, boxes, spacing, message):
    arrays = {"imgs": imgs, "boxes": boxes}
    if spacing is not None:
        arrays["spacing"] = spacing
    path = _save(tmp_path / file_name, **arrays)
    with pytest.raises(CaseError, match=message) as raised:
        read_case(path)
    assert str(path) in str(raised.value)


# ---- write_segs ----


def _leftover_temporary_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_write_segs_round_trip(tmp_path):
    segs = np.random.default_rng(1).integers(0, 5, (4, 20, 30)).astype(np.uint8)
    before = segs.copy()
    path = write_segs(tmp_path / "3DBox_CT_a.npz", segs)

    with np.load(path) as archive:
        assert archive.files == ["segs"]
        np.testing.assert_array_equal(archive["segs"], segs)
        assert archive["segs"].dtype == np.uint8
    np.testing.assert_array_equal(segs, before)
    assert _leftover_temporary_files(tmp_path) == []


def test_write_segs_keeps_uint16(tmp_path):
    segs = np.arange(600, dtype=np.uint16).reshape(20, 30)
    path = write_segs(tmp_path / "2DBox_many.npz", segs)
    with np.load(path) as archive:
        assert archive["segs"].dtype == np.uint16
        np.testing.assert_array_equal(archive["segs"], segs)


def test_write_segs_file_mode_follows_umask(tmp_path):
    path = write_segs(tmp_path / "2DBox_mode.npz", np.zeros((3, 3), np.uint8))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_write_segs_crash_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "2DBox_crash.npz"
    previous = np.ones((20, 30), np.uint8)
    write_segs(path, previous)
    previous_bytes = path.read_bytes()

    def crash_midway(file, **arrays):
        file.write(b"PK\x03\x04 partial archive")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez_compressed", crash_midway)
    with pytest.raises(OSError, match="simulated"):
        write_segs(path, np.full((20, 30), 2, np.uint8))

    assert path.read_bytes() == previous_bytes
    assert _leftover_temporary_files(tmp_path) == []


def test_write_segs_crash_leaves_no_file(tmp_path, monkeypatch):
    def crash_midway(file, **arrays):
        file.write(b"PK\x03\x04 partial archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        write_segs(tmp_path / "2DBox_new.npz", np.zeros((3, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_write_segs_replaces_existing_file(tmp_path):
    path = tmp_path / "2DBox_twice.npz"
    write_segs(path, np.ones((5, 5), np.uint8))
    write_segs(path, np.full((5, 5), 7, np.uint8))
    with np.load(path) as archive:
        np.testing.assert_array_equal(archive["segs"], np.full((5, 5), 7, np.uint8))


def test_write_segs_rejects_input_file(tmp_path):
    case_path = _save(tmp_path / "2DBox_input.npz", imgs=_rgb_image(), boxes=np.array([[1, 2, 10, 12]]))
    original = case_path.read_bytes()
    with pytest.raises(ValueError, match="input case file itself"):
        write_segs(case_path, np.zeros((20, 30), np.uint8), input_path=case_path)
    with pytest.raises(ValueError, match="input case file itself"):
        write_segs(tmp_path / "." / "2DBox_input.npz", np.zeros((20, 30), np.uint8), input_path=str(case_path))
    assert case_path.read_bytes() == original


def test_write_segs_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="output folder .* not found"):
        write_segs(tmp_path / "absent" / "2DBox_a.npz", np.zeros((3, 3), np.uint8))


@pytest.mark.parametrize(
    "segs",
    [np.zeros((5, 5), np.float32), np.zeros(5, np.uint8), np.zeros((1, 2, 3, 4), np.uint8), [[0, 1], [1, 0]]],
)
def test_write_segs_rejects_non_label_maps(tmp_path, segs):
    with pytest.raises(ValueError, match="integer label map"):
        write_segs(tmp_path / "2DBox_bad.npz", segs)
    assert list(tmp_path.iterdir()) == []


# ---- segment_case, 2D ----


def test_segment_case_2d_matches_reference(cases, data_dir, npsam_model, litemedsam_reference):
    failures = []
    report = []
    selected = _parity_cases(cases)
    mammography = data_dir / MAMMOGRAPHY_CASE
    paths = [case.image_path for case in selected] + [mammography]

    for path in paths:
        case = read_case(path)
        calls = []
        segs = segment_case(case, npsam_model, progress=lambda completed, total: calls.append((completed, total)))
        expected = reference_segment_2d(litemedsam_reference, np.array(case.imgs), np.array(case.boxes))

        assert calls == [(1, 1)], f"{case.name}: progress calls {calls}"
        assert segs.dtype == np.uint8, f"{case.name}: dtype {segs.dtype}"
        assert segs.shape == case.imgs.shape[:2], f"{case.name}: shape {segs.shape}"
        dice = per_object_dice(segs, expected, case.num_objects)
        report.append(f"{case.name}: {_describe_differences(segs, expected, case.num_objects)}")
        if np.nanmin(dice) < MIN_OBJECT_DICE:
            failures.append(report[-1])
    print("\n".join(report))
    assert not failures, "per-object Dice below 0.999:\n" + "\n".join(failures)


def test_segment_case_2d_grey_equals_rgb(cases, npsam_model, litemedsam_reference):
    # hc18 images are grey pixels stored in three equal channels.
    rgb_case = read_case(cases("hc18_fetal_us")[0].image_path)
    assert np.array_equal(rgb_case.imgs[:, :, 0], rgb_case.imgs[:, :, 2])
    grey_case = Case(rgb_case.name, False, rgb_case.imgs[:, :, 0], rgb_case.boxes, None)

    segs = segment_case(grey_case, npsam_model)
    expected = reference_segment_2d(litemedsam_reference, np.array(rgb_case.imgs), np.array(rgb_case.boxes))

    assert segs.shape == expected.shape
    dice = per_object_dice(segs, expected, rgb_case.num_objects)
    assert np.nanmin(dice) >= MIN_OBJECT_DICE, _describe_differences(segs, expected, rgb_case.num_objects)


def test_segment_case_accepts_predictor_and_name(cases, npsam_model):
    from npsam.predictor import Predictor

    case = read_case(cases("cxr_lungs_imlab")[0].image_path)
    predictor = Predictor(npsam_model)
    by_predictor = segment_case(case, predictor)
    by_name = segment_case(case, "litemedsam")

    np.testing.assert_array_equal(by_predictor, by_name)
    assert set(np.unique(by_predictor)) <= {0, 1, 2}


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    from npsam.cases import Case, segment_case
    from npsam.model import load_model

    source_path, height, width, num_boxes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    with np.load(source_path) as archive:
        tile = archive["imgs"]
    repeats = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    image = np.ascontiguousarray(np.tile(tile, repeats)[:height, :width])

    rng = np.random.default_rng(0)
    x_min = rng.integers(0, width - 160, num_boxes)
    y_min = rng.integers(0, height - 120, num_boxes)
    box_width = rng.integers(20, 400, num_boxes)
    box_height = rng.integers(20, 400, num_boxes)
    boxes = np.stack([x_min, y_min, np.minimum(x_min + box_width, width - 1),
                      np.minimum(y_min + box_height, height - 1)], axis=1)

    def peak_rss_since_reset_mib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    model = load_model("litemedsam")
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Writing 5 to clear_refs resets the peak (VmHWM) on Linux 4.0+, so the segmentation's own peak
    # is measured apart from loading and kernel compilation.
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    segs = segment_case(Case("2DBox_memory", False, image, boxes, None), model)
    print(json.dumps({
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mib": after_load / 1024,
        "segment_peak_rss_mib": peak_rss_since_reset_mib() if reset else None,
        "seconds": time.perf_counter() - start,
        "shape": list(segs.shape),
        "dtype": str(segs.dtype),
        "labels": int(len(np.unique(segs)) - 1),
    }))
    """
)


def test_segment_case_2d_memory_241_boxes(data_dir):
    # A separate process, so its peak resident set size (ru_maxrss, KiB on Linux) is this case's alone.
    source = data_dir / "kvasir_seg" / "npz" / "imgs" / "2DBox_Endoscopy_kvasir_cju0sxqiclckk08551ycbwhno.npz"
    height, width = MEMORY_TEST_SIZE
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    completed = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(source), str(height), str(width), str(MEMORY_TEST_BOXES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"241-box 1920x2560 case: {measured}")

    assert measured["shape"] == [height, width]
    assert measured["dtype"] == "uint8"
    assert measured["labels"] > MEMORY_TEST_BOXES // 2, "most boxes should leave some visible label"
    # The whole process stays under the limit, including model loading and any kernel compilation.
    assert measured["max_rss_mib"] < MEMORY_LIMIT_MIB, f"peak RSS {measured['max_rss_mib']:.0f} MiB"
