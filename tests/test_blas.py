"""Small products split between threads by run_split: same results as np.matmul, OpenBLAS's thread count restored."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from npsam import blas


def numpy_uses_openblas() -> bool:
    config = np.show_config(mode="dicts")
    return "openblas" in str(config["Build Dependencies"]["blas"].get("name", "")).lower()


def split_matmul(a, b):
    """Return the stacked product a @ b, computed in parts by `blas.run_split`."""
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=np.float32)

    def multiply(start, stop):
        np.matmul(a[start:stop], b[start:stop], out=out[start:stop])

    blas.run_split(multiply, a.shape[0])
    return out


def openblas_thread_count():
    """Return OpenBLAS's thread count, or None without a usable OpenBLAS."""
    found = blas.openblas_threads()
    if found is None:
        return None
    return found.get()


def random_stack(batch, rows, inner, columns, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (batch, rows, inner)).astype(np.float32)
    b = rng.normal(0.0, 1.0, (batch, inner, columns)).astype(np.float32)
    return a, b


@pytest.mark.skipif(not sys.platform.startswith("linux") or not numpy_uses_openblas(), reason="needs NumPy with OpenBLAS on Linux")
def test_finds_numpy_openblas():
    found = blas.openblas_threads()
    assert found is not None
    assert found.get() >= 1
    assert "openblas" in found.path.lower()


# Stacks as the window attention makes them (196- and 49-token windows), an odd count and a single product.
@pytest.mark.parametrize("batch, rows, inner, columns", [(125, 196, 32, 196), (25, 196, 196, 32), (37, 49, 32, 49), (1, 5, 3, 4)])
def test_split_products_equal_numpy(batch, rows, inner, columns):
    a, b = random_stack(batch, rows, inner, columns)
    threads_before = openblas_thread_count()
    out = split_matmul(a, b)
    np.testing.assert_array_equal(out, np.matmul(a, b))
    assert openblas_thread_count() == threads_before


@pytest.mark.skipif(blas.openblas_threads() is None or blas.openblas_threads().get() < 2, reason="needs OpenBLAS with 2 or more threads")
def test_run_split_uses_helper_threads():
    a, b = random_stack(8, 49, 32, 49)
    split_matmul(a, b)
    names = [thread.name for thread in threading.enumerate()]
    assert any(name.startswith("npsam-matmul") for name in names)


def test_run_split_without_openblas(monkeypatch):
    monkeypatch.setattr(blas, "openblas_threads", lambda: None)
    calls = []
    blas.run_split(lambda start, stop: calls.append((start, stop, threading.current_thread())), 9)
    assert blas.split_threads() == 1
    assert calls == [(0, 9, threading.current_thread())]


def test_run_split_covers_range_once():
    seen = np.zeros(101, dtype=np.int64)

    def mark(start, stop):
        seen[start:stop] += 1

    blas.run_split(mark, seen.size)
    np.testing.assert_array_equal(seen, np.ones(101, dtype=np.int64))


def test_concurrent_callers_restore_thread_count():
    threads_before = openblas_thread_count()
    stacks = [random_stack(30, 49, 32, 49, seed=seed) for seed in range(6)]
    with ThreadPoolExecutor(max_workers=6) as callers:
        results = list(callers.map(lambda stack: split_matmul(*stack), stacks))
    for (a, b), out in zip(stacks, results):
        np.testing.assert_array_equal(out, np.matmul(a, b))
    assert openblas_thread_count() == threads_before


def test_opt_out_variable_disables_split():
    probe = "from npsam import blas; print(blas.openblas_threads() is None)"
    environment = {**os.environ, blas.OPT_OUT_VARIABLE: "0"}
    result = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
