"""Atomic output files: every file npsam writes goes through `write_atomically`.

The content is written to a temporary file in the destination folder, flushed to disk and given the
permissions a plain `open()` would give (the process umask applied to 0o666). Only then is it moved
over the destination with `os.replace`, or hard-linked to it when existing files must be kept. A crash
or an error leaves either the previous file or the complete new one, never a partial file, and the
temporary file is removed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["check_output_path", "same_file", "write_atomically"]


def same_file(a: Path, b: Path) -> bool:
    """Return whether `a` and `b` name the same file (through links too), or the same path if one is missing."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output_path(path: Path, input_path: str | os.PathLike | None = None, content: str = "the output") -> None:
    """Raise a clear error when `path` cannot receive an output file.

    ValueError when `path` is `input_path` (an input must never be overwritten), FileNotFoundError
    when its folder is missing and IsADirectoryError when `path` is a folder.
    """
    if input_path is not None and same_file(path, Path(input_path)):
        raise ValueError(f"output {path} is the input file itself; write {content} to another path")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} not found; create it before writing {path.name}")
    if path.is_dir():
        raise IsADirectoryError(f"output path {path} is a folder; give a file name inside it")


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], *, suffix: str = "", overwrite: bool = True) -> Path:
    """Call `write(temporary)` to fill a new file next to `path`, then move it to `path`; return `path`.

    `write` receives the path of an existing empty file whose name ends with ".tmp" + `suffix`
    (libraries such as nibabel choose the format from the suffix). With `overwrite=False` the file is
    hard-linked to `path` instead of replacing it. An existing `path` then raises FileExistsError and
    is never replaced, even by a concurrent writer. This mode needs a file system with hard links.
    """
    path = Path(path)
    folder = path.parent
    temporary = folder / f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}"
    # os.open with mode 0o666 lets the umask set the permissions, as a plain open() would.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(temporary)
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _sync_folder(folder)
    return path


def _sync_folder(folder: Path) -> None:
    """Flush the folder entry of a new file to disk, where the platform allows opening folders."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
