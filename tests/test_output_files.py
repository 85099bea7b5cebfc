"""Tests of npsam.output_files, the one atomic writer behind every file npsam writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from npsam import output_files
from npsam.output_files import check_output_path, write_atomically

NPSAM_DIR = Path(output_files.__file__).resolve().parent


def _write_bytes(data: bytes):
    def write(temporary: Path) -> None:
        assert temporary.exists(), "write() gets an existing file"
        assert temporary.stat().st_size == 0, "write() gets an empty file"
        temporary.write_bytes(data)

    return write


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "out.bin"
    assert write_atomically(path, _write_bytes(b"first")) == path
    write_atomically(path, _write_bytes(b"second"))
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_mode_follows_umask(tmp_path):
    path = write_atomically(tmp_path / "out.bin", _write_bytes(b"x"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_temporary_name_ends_with_suffix(tmp_path):
    seen = []
    write_atomically(tmp_path / "labels.nii.gz", lambda temporary: seen.append(temporary.name), suffix=".nii.gz")
    assert seen[0].startswith(".labels.nii.gz.")
    assert seen[0].endswith(".tmp.nii.gz")
    assert seen[0] != "labels.nii.gz"


def test_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"previous")

    def crash(temporary: Path) -> None:
        temporary.write_bytes(b"partial")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="simulated"):
        write_atomically(path, crash)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_no_overwrite_keeps_existing_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        write_atomically(path, _write_bytes(b"new"), overwrite=False)
    assert path.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    fresh = write_atomically(tmp_path / "fresh.bin", _write_bytes(b"new"), overwrite=False)
    assert fresh.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.bin", "out.bin"]


def test_check_output_path_errors(tmp_path):
    source = tmp_path / "case.npz"
    source.write_bytes(b"input")
    with pytest.raises(ValueError, match=r"is the input file itself; write the label map to another path"):
        check_output_path(tmp_path / "." / "case.npz", input_path=source, content="the label map")
    link = tmp_path / "link.npz"
    link.symlink_to(source)
    with pytest.raises(ValueError, match="input file"):
        check_output_path(link, input_path=source)
    with pytest.raises(FileNotFoundError, match=r"output folder .*missing not found; create it before writing out.npz"):
        check_output_path(tmp_path / "missing" / "out.npz")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_output_path(tmp_path)
    check_output_path(tmp_path / "new.npz", input_path=source)
    assert source.read_bytes() == b"input"


def test_every_npsam_writer_goes_through_output_files():
    """Only output_files may rename or create temporary files; other modules call write_atomically."""
    offenders = []
    for module in sorted(NPSAM_DIR.glob("*.py")):
        if module.name == "output_files.py":
            continue
        text = module.read_text(encoding="utf-8")
        for marker in ("os.replace(", "os.rename(", "os.link(", "tempfile.", "NamedTemporaryFile"):
            if marker in text:
                offenders.append(f"{module.name}: {marker}")
    assert offenders == []
