"""Tests of the `npsam` command line: segment, evaluate, convert and info, end to end on real cases.

Most tests call `npsam.cli.main` in this process; the `--workers` and `python -m npsam` tests start
subprocesses. The end-to-end tests take about 1 to 2 min each on the shared 2-core test machine.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npsam import cli, metrics
from npsam.cases import read_case, segment_case

REPO_ROOT = Path(__file__).resolve().parent.parent
CASE_2D = ("cxr_lungs_imlab", "2DBox_XRay_cxrlung_1")  # 512x512, 2 lungs
CASE_2D_OTHER = ("cxr_lungs_imlab", "2DBox_XRay_cxrlung_2")
CASE_3D = ("pyradiomics_3d", "3DBox_MR_pyradiomics_breast1")  # 21x120x45, one box over 3 slices


def _image_path(data_dir: Path, source: str, name: str) -> Path:
    return data_dir / source / "npz" / "imgs" / f"{name}.npz"


def _gt_path(data_dir: Path, source: str, name: str) -> Path:
    return data_dir / source / "npz" / "gts" / f"{name}.npz"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _subprocess_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def input_folder(tmp_path, data_dir) -> Path:
    """A folder with one real 2D case, one real 3D case and one corrupt case."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for source, name in (CASE_2D, CASE_3D):
        shutil.copy(_image_path(data_dir, source, name), folder)
    (folder / "2DBox_Endoscopy_corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip archive")
    return folder


# ---- segment and evaluate ----


def test_segment_and_evaluate_end_to_end(tmp_path, data_dir, input_folder, capsys):
    output = tmp_path / "segs"
    status = cli.main(["segment", str(input_folder), "-o", str(output)])
    captured = capsys.readouterr()

    assert status == 1, "a corrupt case must make the exit status non-zero"
    assert "2DBox_Endoscopy_corrupt.npz" in captured.err
    assert "not a readable .npz" in captured.err
    assert "Traceback" not in captured.err
    assert "segmented 2 of 3 case(s)" in captured.out
    assert sorted(path.name for path in output.iterdir()) == sorted(
        [f"{CASE_2D[1]}.npz", f"{CASE_3D[1]}.npz", "efficiency.csv"]
    )

    # Outputs equal a direct segment_case run and keep the challenge's dtype and shapes.
    for source, name in (CASE_2D, CASE_3D):
        case = read_case(_image_path(data_dir, source, name))
        with np.load(output / f"{name}.npz") as archive:
            assert archive.files == ["segs"]
            segs = archive["segs"]
        assert segs.dtype == np.uint8
        assert segs.shape == case.imgs.shape[: 3 if case.is_3d else 2]
        np.testing.assert_array_equal(segs, segment_case(case, "litemedsam"), err_msg=name)

    efficiency = _read_csv(output / "efficiency.csv")
    assert [row["case"] for row in efficiency] == sorted([f"{CASE_2D[1]}.npz", f"{CASE_3D[1]}.npz"])
    assert all(float(row["time"]) > 0 for row in efficiency)

    # Evaluate against the ground truth of the two real cases.
    gts = tmp_path / "gts"
    gts.mkdir()
    for source, name in (CASE_2D, CASE_3D):
        shutil.copy(_gt_path(data_dir, source, name), gts)
    metrics_csv = tmp_path / "scores" / "metrics.csv"
    metrics_csv.parent.mkdir()
    status = cli.main(["evaluate", str(output), str(gts), "-o", str(metrics_csv)])
    captured = capsys.readouterr()

    assert status == 0, captured.err
    rows = _read_csv(metrics_csv)
    assert [row["case"] for row in rows] == sorted([f"{CASE_2D[1]}.npz", f"{CASE_3D[1]}.npz"])
    assert [row["modality"] for row in rows] == ["XRay", "MR"]
    for row, (source, name) in zip(rows, sorted((CASE_2D, CASE_3D), key=lambda entry: entry[1])):
        with np.load(_gt_path(data_dir, source, name)) as gt, np.load(output / f"{name}.npz") as seg:
            is_3d = name.startswith("3D")
            expected = metrics.score_case(gt["gts"], seg["segs"], gt["spacing"] if is_3d else None, is_3d=is_3d)
        assert float(row["dsc"]) == round(expected["dsc"], 4), name
        assert float(row["nsd"]) == round(expected["nsd"], 4), name
        assert len(row["dsc"].split(".")[1]) == 4
    assert float(rows[0]["dsc"]) > 0.8, "LiteMedSAM segments both lungs of a chest X-ray well"

    summary = _read_csv(metrics_csv.with_name("metrics_by_modality.csv"))
    assert [row["modality"] for row in summary] == ["MR", "XRay", "all"]
    assert [row["cases"] for row in summary] == ["1", "1", "2"]
    assert "XRay" in captured.out
    assert "all" in captured.out


def test_segment_twice_replaces_outputs(tmp_path, data_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(_image_path(data_dir, *CASE_2D), folder)
    output = tmp_path / "segs"

    assert cli.main(["segment", str(folder), "-o", str(output)]) == 0
    first = (output / f"{CASE_2D[1]}.npz").read_bytes()
    (output / f"{CASE_2D[1]}.npz").write_bytes(b"stale output of an earlier run")
    assert cli.main(["segment", str(folder / f"{CASE_2D[1]}.npz"), "-o", str(output)]) == 0

    with np.load(output / f"{CASE_2D[1]}.npz") as archive:
        replaced = archive["segs"]
    with np.load(_write_bytes(tmp_path / "first.npz", first)) as archive:
        np.testing.assert_array_equal(replaced, archive["segs"])
    assert len(_read_csv(output / "efficiency.csv")) == 1
    assert not [path for path in output.iterdir() if path.name.endswith(".tmp")]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_segment_with_two_workers(tmp_path, data_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for source, name in (CASE_2D, CASE_2D_OTHER):
        shutil.copy(_image_path(data_dir, source, name), folder)
    (folder / "3DBox_CT_corrupt.npz").write_bytes(b"garbage")
    output = tmp_path / "segs"

    completed = subprocess.run(
        [sys.executable, "-m", "npsam", "segment", str(folder), "-o", str(output), "--workers", "2"],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=1200,
    )
    assert completed.returncode == 1, completed.stderr
    assert "3DBox_CT_corrupt.npz" in completed.stderr
    for source, name in (CASE_2D, CASE_2D_OTHER):
        with np.load(output / f"{name}.npz") as archive:
            segs = archive["segs"]
        np.testing.assert_array_equal(segs, segment_case(read_case(_image_path(data_dir, source, name)), "litemedsam"))
    assert [row["case"] for row in _read_csv(output / "efficiency.csv")] == [
        f"{CASE_2D[1]}.npz",
        f"{CASE_2D_OTHER[1]}.npz",
    ]


def test_segment_rejects_input_folder_as_output(input_folder, capsys):
    status = cli.main(["segment", str(input_folder), "-o", str(input_folder)])
    captured = capsys.readouterr()
    assert status == 1
    assert "is the input folder" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_segment_rejects_file_as_output(tmp_path, input_folder, capsys):
    (tmp_path / "out").write_text("a file")
    assert cli.main(["segment", str(input_folder), "-o", str(tmp_path / "out")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_segment_missing_input(tmp_path, capsys):
    status = cli.main(["segment", str(tmp_path / "absent"), "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.strip() == f"npsam: error: input {tmp_path / 'absent'} not found; give an .npz case file or a folder of them"


def test_segment_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["segment", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 1
    assert "no .npz files" in capsys.readouterr().err


def test_segment_unknown_model(tmp_path, data_dir, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(_image_path(data_dir, *CASE_2D), folder)
    status = cli.main(["segment", str(folder), "-o", str(tmp_path / "out"), "--model", "no-such-model"])
    captured = capsys.readouterr()
    assert status == 1
    error_lines = [line for line in captured.err.splitlines() if not line.startswith("INFO: ")]
    assert len(error_lines) == 1
    assert error_lines[0].startswith("npsam: error: cannot load model 'no-such-model'")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_segment_unreadable_weights(tmp_path, data_dir, capsys, workers):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for source, name in (CASE_2D, CASE_2D_OTHER):
        shutil.copy(_image_path(data_dir, source, name), folder)
    weights_file = tmp_path / "broken.h5"
    weights_file.write_text("not an HDF5 file")

    status = cli.main(["segment", str(folder), "-o", str(tmp_path / "out"), "--model", str(weights_file), "--workers", workers])
    captured = capsys.readouterr()
    assert status == 1
    assert "Traceback" not in captured.err
    if workers == "1":
        assert "npsam: error: cannot load model" in captured.err
    else:
        # Each worker reports the load failure for every case it receives.
        assert captured.err.count("cannot load the model from") >= 2
        assert "segmented 0 of 2 case(s)" in captured.out
    assert not list((tmp_path / "out").glob("*.npz"))


def test_segment_rejects_zero_workers(tmp_path, input_folder, capsys):
    assert cli.main(["segment", str(input_folder), "-o", str(tmp_path / "out"), "--workers", "0"]) == 1
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_evaluate_missing_segmentation_scores_zero(tmp_path, data_dir, capsys):
    gts = tmp_path / "gts"
    gts.mkdir()
    shutil.copy(_gt_path(data_dir, *CASE_2D), gts)
    segs = tmp_path / "segs"
    segs.mkdir()

    status = cli.main(["evaluate", str(segs), str(gts)])
    captured = capsys.readouterr()
    assert status == 1
    assert "no segmentation" in captured.err
    rows = _read_csv(segs / "metrics.csv")
    assert rows == [{"case": f"{CASE_2D[1]}.npz", "modality": "XRay", "dsc": "0.0000", "nsd": "0.0000"}]


def test_evaluate_reports_shape_mismatch(tmp_path, data_dir, capsys):
    gts = tmp_path / "gts"
    gts.mkdir()
    shutil.copy(_gt_path(data_dir, *CASE_2D), gts)
    segs = tmp_path / "segs"
    segs.mkdir()
    np.savez_compressed(segs / f"{CASE_2D[1]}.npz", segs=np.zeros((5, 5), np.uint8))

    assert cli.main(["evaluate", str(segs), str(gts)]) == 1
    assert "differs from gts shape" in capsys.readouterr().err


# ---- convert and info ----


def test_convert_writes_weights(tmp_path, reference_checkpoint, capsys):
    from npsam import weights

    output = tmp_path / "litemedsam.h5"
    assert cli.main(["convert", str(reference_checkpoint), "-o", str(output)]) == 0
    loaded = weights.read_weights(output)
    assert loaded.config.name == "litemedsam"
    assert loaded.trained
    assert capsys.readouterr().out.strip()


def test_convert_missing_checkpoint(tmp_path, capsys):
    status = cli.main(["convert", str(tmp_path / "absent.pth"), "-o", str(tmp_path / "out.h5")])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.startswith("npsam: error: ")
    assert len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "out.h5").exists()


def test_info_lists_models_and_caches(capsys):
    from npsam import compile_cache

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "litemedsam" in out
    assert "9,791,300 parameters" in out
    assert "swiftmedsam-v1" in out
    assert "6,996,636 parameters" in out
    assert "swiftmedsam-v2" in out
    assert "5,942,388 parameters" in out
    assert out.count("UNTRAINED seeded random weights") == 2
    assert "39.29 GMAC" in out
    assert "29.80 GMAC" in out
    assert f"compile cache: {compile_cache.compile_cache_dir()}" in out


def test_python_dash_m_help():
    completed = subprocess.run(
        [sys.executable, "-m", "npsam", "--help"], capture_output=True, text=True, env=_subprocess_env(), timeout=120
    )
    assert completed.returncode == 0
    for command in ("segment", "evaluate", "convert", "info"):
        assert command in completed.stdout


def test_evaluate_help_names_spacing_order(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["evaluate", "--help"])
    assert exited.value.code == 0
    assert "(x, y, z) order" in capsys.readouterr().out


# ---- error reporting ----


def test_unexpected_error_prints_one_line(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(cli, "command_info", broken)
    assert cli.main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "npsam: error: RuntimeError: simulated failure (run with --debug for the traceback)"


def test_debug_shows_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(cli, "command_info", broken)
    with pytest.raises(RuntimeError, match="simulated failure"):
        cli.main(["--debug", "info"])
    with pytest.raises(RuntimeError, match="simulated failure"):
        cli.main(["info", "--debug"])


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["segment"])
    assert exited.value.code == 2


# ---- helpers ----


def test_modality_of():
    assert cli.modality_of("3DBox_CT_lung.npz") == "CT"
    assert cli.modality_of("2DBox_XRay_cxrlung_1.npz") == "XRay"
    assert cli.modality_of("2DBox_US.npz") == "US"
    assert cli.modality_of("case.npz") == "unknown"


def test_summarize_by_modality_skips_nan():
    scores = [
        cli.CaseScore("a.npz", "CT", 0.5, 0.25),
        cli.CaseScore("b.npz", "CT", float("nan"), 0.0),
        cli.CaseScore("c.npz", "MR", 1.0, 1.0),
    ]
    assert cli.summarize_by_modality(scores) == [("CT", 2, 0.5, 0.125), ("MR", 1, 1.0, 1.0), ("all", 3, 0.75, 0.4167)]


def test_estimate_steps(tmp_path):
    path_3d = tmp_path / "3DBox_CT_a.npz"
    np.savez(path_3d, imgs=np.zeros((8, 4, 4), np.uint8), boxes=np.array([[0, 0, 2, 3, 3, 6], [0, 0, 5, 3, 3, 5]]))
    path_2d = tmp_path / "2DBox_CT_a.npz"
    np.savez(path_2d, imgs=np.zeros((4, 4, 3), np.uint8), boxes=np.array([[0, 0, 3, 3]] * 9))
    assert cli.estimate_steps(path_3d) == 6
    assert cli.estimate_steps(path_2d) == 1
    (tmp_path / "3DBox_broken.npz").write_bytes(b"broken")
    assert cli.estimate_steps(tmp_path / "3DBox_broken.npz") == 1


def test_progress_reporter_logs_eta(monkeypatch, caplog):
    monkeypatch.setattr(cli, "PROGRESS_LOG_INTERVAL", 0.0)
    reporter = cli.ProgressReporter([1, 4], use_bar=False)
    with caplog.at_level(logging.INFO, logger="npsam.cli"):
        reporter.update(1, 2, 5)  # the 3D case's exact total replaces its estimate
        reporter.finish_case(0)
    reporter.close()
    assert "0/2 cases, 2/6 slice steps" in caplog.text
    assert "left" in caplog.text
    assert reporter.describe().startswith("1/2 cases, 3/6 slice steps")


def test_progress_reporter_with_bar(capsys):
    try:
        import tqdm  # noqa: F401
    except ImportError:
        pytest.fail("the progress bar test needs tqdm: pip install 'npsam[progress]'", pytrace=False)
    reporter = cli.ProgressReporter([1, 3], use_bar=True)
    reporter.update(1, 1, 3)
    reporter.finish_case(1)
    reporter.finish_case(0)
    reporter.close()
    assert "cases 2/2" in capsys.readouterr().err
