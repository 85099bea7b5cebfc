"""Location of npsam's per-user cache and of the on-disk cache of compiled Numba kernels.

Numba writes compiled kernels next to the source by default, which fails for a read-only install and
is lost in a fresh virtual environment. npsam sends them to a per-user folder instead, so a second
process loads the machine code rather than compiling again.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_home", "compile_cache_dir", "configure"]


def cache_home() -> Path:
    """Return npsam's per-user cache folder, which may not exist yet.

    `$NPSAM_HOME` if set, else `$XDG_CACHE_HOME/npsam`, else `~/.cache/npsam`.
    """
    npsam_home = os.environ.get("NPSAM_HOME")
    if npsam_home:
        return Path(npsam_home).expanduser()
    xdg_cache_home = os.environ.get("XDG_CACHE_HOME")
    # The XDG base directory specification requires ignoring a relative path.
    if xdg_cache_home and os.path.isabs(xdg_cache_home):
        return Path(xdg_cache_home) / "npsam"
    return Path.home() / ".cache" / "npsam"


def compile_cache_dir() -> Path:
    """Return the folder of compiled kernels: `$NUMBA_CACHE_DIR` if set, else `<cache_home>/numba`."""
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return cache_home() / "numba"


def configure() -> Path:
    """Point Numba's kernel cache at `compile_cache_dir()`; must run before any `cache=True` kernel is defined."""
    from numba.core import config as numba_config

    folder = compile_cache_dir()
    numba_config.CACHE_DIR = str(folder)
    return folder
