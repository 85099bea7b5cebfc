"""glibc malloc settings that let the encoder reuse freed memory instead of faulting in fresh pages.

One 256x256 slice allocates and frees temporary arrays of up to 67 MB. By default glibc's malloc serves
large blocks with mmap and returns them to the kernel on free. Its threshold starts at 128 KiB and
adapts up to 32 MiB, and it also trims the heap when more than a few MB at its top are free. Every encoder run then faults in and zeroes its working memory
again. On the 2-core development machine (glibc 2.36) that was about a quarter of LiteMedSAM's encoder
time; benchmarks/README.md gives the measurement. `keep_freed_memory` raises the mmap and trim
thresholds with `mallopt`, so freed blocks stay in the process and the next slice reuses them. The
process keeps its peak heap size until it exits, which is the memory one encoder run needs anyway.

`npsam.load_model` applies the settings once per process, on glibc only. It leaves malloc alone when
the user has set any of glibc's malloc variables or `NPSAM_KEEP_FREED_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

__all__ = ["keep_freed_memory", "MALLOPT_SETTINGS", "USER_VARIABLES"]

logger = logging.getLogger(__name__)

# mallopt parameter (number from glibc's <malloc.h>) -> value in bytes.
MALLOPT_SETTINGS = {
    "M_MMAP_THRESHOLD": (-3, 512 << 20),  # serve blocks up to 512 MiB from the heap, which is reused
    "M_TRIM_THRESHOLD": (-1, 1 << 30),  # return the heap's free top to the kernel only above 1 GiB
    "M_TOP_PAD": (-2, 256 << 20),  # grow the heap in steps of 256 MiB extra, so fewer system calls
}
# Environment variables through which a user tunes glibc's malloc; any of them leaves malloc as it is.
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
OPT_OUT_VARIABLE = "NPSAM_KEEP_FREED_MEMORY"


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Apply `MALLOPT_SETTINGS` once per process and return whether they are in effect."""
    if os.environ.get(OPT_OUT_VARIABLE, "1") == "0":
        logger.debug("%s=0: glibc's malloc settings left unchanged", OPT_OUT_VARIABLE)
        return False
    user_set = [name for name in USER_VARIABLES if name in os.environ]
    if user_set:
        logger.debug("%s set by the user: glibc's malloc settings left unchanged", ", ".join(user_set))
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        process = ctypes.CDLL(None)
        process.gnu_get_libc_version  # glibc only: other C libraries have other tuning interfaces
        mallopt = process.mallopt
    except (OSError, AttributeError):
        logger.debug("not running on glibc: malloc settings left unchanged")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = []
    for name, (parameter, value) in MALLOPT_SETTINGS.items():
        if mallopt(parameter, value) == 1:
            applied.append(name)
        else:
            logger.debug("mallopt(%s, %d) was rejected", name, value)
    logger.debug("glibc malloc settings applied: %s", ", ".join(applied) or "none")
    return len(applied) == len(MALLOPT_SETTINGS)
