"""Work on many small matrix products, shared between threads by npsam instead of by OpenBLAS.

TinyViT's window attention multiplies one small pair of matrices per window and head: 125 products of
196x32 by 32x196 in a stage-2 block of LiteMedSAM, 1,444 of 49x32 by 32x49 in stage 1. NumPy hands them
to BLAS one at a time. Measured on the 2-core development machine, splitting a 49-token stack between
two threads nearly halved its time, so OpenBLAS runs those products on one thread. The 196-token
products took 1.3 to 2.5 times longer with npsam's OPENBLAS_THREAD_TIMEOUT=4 (see npsam/__init__.py)
than with OpenBLAS's default, which fits OpenBLAS waking its sleeping threads for each product.
`run_split` instead sets OpenBLAS to one thread for the duration of the call and splits the work
between Python threads, which run in parallel because NumPy releases the GIL inside matmul (and npsam's
`nogil` kernels do too). The window attention runs its products and softmax this way, each thread on
its own windows. Each product is the same single-threaded BLAS call as before, so the results equal
np.matmul's bit for bit in the tests. Stage 0's MBConv blocks and the PatchMerging steps use the same
threads for bands of rows (`npsam.image_encoder.expand_depthwise_project`). benchmarks/README.md
gives the effect on the encoder.

This needs the OpenBLAS that NumPy loaded and its thread-count functions, found through the process's
memory map (Linux only). Elsewhere, with another BLAS, or with `NPSAM_SPLIT_PRODUCTS=0` in the
environment when npsam first encodes, `split_threads` returns 1: the window attention then uses
NumPy's stacked matmul on all of BLAS's threads, and the MBConv and PatchMerging steps run in
whole-grid passes.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["run_split", "split_threads", "openblas_threads", "OPT_OUT_VARIABLE"]

logger = logging.getLogger(__name__)

OPT_OUT_VARIABLE = "NPSAM_SPLIT_PRODUCTS"

# Names of OpenBLAS's thread-count functions: NumPy's wheels rename them with a prefix and suffix.
_FUNCTION_NAMES = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


class _OpenBLASThreads:
    """The set and get thread-count functions of one loaded OpenBLAS library."""

    def __init__(self, path: str, set_threads, get_threads):
        self.path = path
        self._set = set_threads
        self._get = get_threads

    def get(self) -> int:
        return int(self._get())

    def set(self, count: int) -> None:
        self._set(int(count))


@functools.lru_cache(maxsize=1)
def openblas_threads() -> _OpenBLASThreads | None:
    """Return the thread-count functions of the OpenBLAS that NumPy uses, or None if none is found or the user opted out."""
    if os.environ.get(OPT_OUT_VARIABLE, "1") == "0":
        logger.debug("%s=0: stacked products left to np.matmul", OPT_OUT_VARIABLE)
        return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            loaded = set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps.read(), flags=re.IGNORECASE))
    except OSError:
        return None
    # SciPy may load an OpenBLAS of its own: take the one inside NumPy's installation, or the only one.
    numpy_folder = os.path.dirname(np.__file__)
    candidates = sorted(path for path in loaded if "/numpy.libs/" in path or path.startswith(numpy_folder + os.sep))
    if not candidates and len(loaded) == 1:
        candidates = list(loaded)
    for path in candidates:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _FUNCTION_NAMES:
            set_threads = getattr(library, set_name, None)
            get_threads = getattr(library, get_name, None)
            if set_threads is not None and get_threads is not None:
                set_threads.argtypes = [ctypes.c_int]
                set_threads.restype = None
                get_threads.argtypes = []
                get_threads.restype = ctypes.c_int
                logger.debug("splitting stacked products between threads with %s from %s", set_name, path)
                return _OpenBLASThreads(path, set_threads, get_threads)
    return None


# The pool and the lock belong to the process that created them: a forked child makes its own.
_state: dict = {"pid": None}
_state_lock = threading.Lock()


def _pool_and_lock(workers: int):
    """Return this process's thread pool, with at least `workers` threads, and the lock of `run_split`.

    A smaller pool that a concurrent caller may still be using is replaced but not shut down.
    """
    with _state_lock:
        if _state["pid"] != os.getpid() or _state["workers"] < workers:
            _state.update(
                pid=os.getpid(),
                workers=workers,
                pool=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npsam-matmul"),
                lock=threading.Lock(),
            )
        return _state["pool"], _state["lock"]


def split_threads() -> int:
    """Return how many threads `run_split` uses: OpenBLAS's thread count, or 1 without a usable OpenBLAS."""
    blas = openblas_threads()
    if blas is None:
        return 1
    return blas.get()


def run_split(function, count: int) -> None:
    """Call function(start, stop) on `split_threads()` threads for parts of range(count), OpenBLAS on one thread.

    `function` must release the GIL for most of its work (NumPy's matmul and `nogil` kernels do) and
    write only its own part of any output. OpenBLAS gets its thread count back afterwards. With one
    thread, function(0, count) runs on the calling thread.
    """
    threads = split_threads()
    parts = min(threads, count)
    if parts < 2:
        function(0, count)
        return
    bounds = [count * part // parts for part in range(parts + 1)]
    pool, lock = _pool_and_lock(parts - 1)
    blas = openblas_threads()
    # The lock keeps concurrent callers from restoring each other's thread count too early.
    with lock:
        blas.set(1)
        try:
            futures = [pool.submit(function, start, stop) for start, stop in zip(bounds[1:-1], bounds[2:])]
            function(bounds[0], bounds[1])
            for future in futures:
                future.result()
        finally:
            blas.set(threads)

