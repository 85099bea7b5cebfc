"""Tests of npsam.postprocessing against torch: bilinear logit resize, sigmoid > 0.5 masks, label painting.

torch is the oracle, so these tests fail (never skip) when torch 2.13.0 is missing.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from numerics import assert_close

from npsam import kernels
from npsam.postprocessing import mask_from_logits, paint_label, resize_bilinear

TORCH_INSTALL_HINT = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


@pytest.fixture(scope="module")
def torch():
    try:
        import torch as torch_module
    except ImportError as error:
        pytest.fail(f"torch is required as the bilinear reference ({error}). Run: {TORCH_INSTALL_HINT}", pytrace=False)
    return torch_module


def torch_resize(torch, logits: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """F.interpolate(bilinear, no antialias) of (h, w) or (N, h, w) float32 logits, as NumPy."""
    import torch.nn.functional as F

    planes = torch.from_numpy(np.ascontiguousarray(logits if logits.ndim == 3 else logits[None]))
    with torch.inference_mode():
        resized = F.interpolate(planes[None], size=size, mode="bilinear", align_corners=align_corners, antialias=False)
    resized = resized[0].numpy().copy()
    return resized if logits.ndim == 3 else resized[0]


def torch_mask(torch, low_res_logits: np.ndarray, input_size, original_size) -> np.ndarray:
    """The challenge script's postprocessing: crop, F.interpolate to (H, W), sigmoid > 0.5."""
    cropped = low_res_logits[: input_size[0], : input_size[1]]
    resized = torch_resize(torch, cropped, original_size)
    with torch.inference_mode():
        return (torch.sigmoid(torch.from_numpy(resized)) > 0.5).numpy()


def assert_same_mask(actual: np.ndarray, expected: np.ndarray, context: str) -> None:
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == np.bool_, f"{context}: dtype {actual.dtype} != bool"
    differing = int(np.count_nonzero(actual != expected))
    assert differing == 0, f"{context}: {differing} of {actual.size} mask pixels differ from torch"


def smooth_logits(rng: np.random.Generator) -> np.ndarray:
    """(256, 256) float32 logits shaped like a decoder output: one blob, about -30 to +30."""
    rows, columns = np.mgrid[:256, :256]
    centre = rng.uniform(60, 190, size=2)
    radius = np.hypot(rows - centre[0], columns - centre[1])
    noise = rng.standard_normal((256, 256))
    return (25.0 - radius / 2.5 + noise).astype(np.float32)


RESIZE_CASES = [
    ((256, 256), (512, 512)),
    ((192, 256), (1920, 2560)),
    ((238, 256), (531, 570)),
    ((256, 171), (700, 467)),
    ((256, 200), (100, 78)),  # shrinking, no antialias
    ((37, 256), (37, 1000)),  # one axis copied
    ((180, 256), (181, 257)),
    ((256, 256), (256, 256)),
    ((1, 5), (3, 9)),
    ((4, 4), (1, 1)),
]


@pytest.mark.parametrize("input_shape, size", RESIZE_CASES)
def test_resize_bilinear_matches_torch(torch, input_shape, size):
    rng = np.random.default_rng(input_shape[0] * 1000 + size[1])
    logits = (rng.standard_normal(input_shape) * 10).astype(np.float32)
    before = logits.copy()

    resized = resize_bilinear(logits, size)

    assert_close(resized, torch_resize(torch, logits, size), stage="resize_bilinear")
    np.testing.assert_array_equal(logits, before)


def test_resize_bilinear_batches_planes(torch):
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((3, 64, 48)) * 10).astype(np.float32)
    resized = resize_bilinear(logits, (150, 97))
    assert_close(resized, torch_resize(torch, logits, (150, 97)), stage="resize_bilinear")
    for index in range(3):
        np.testing.assert_array_equal(resized[index], resize_bilinear(logits[index], (150, 97)))


def test_resize_bilinear_differs_from_align_corners(torch):
    # Negative control: the tolerance must notice align_corners=True (a known trap).
    rng = np.random.default_rng(12)
    logits = (rng.standard_normal((200, 256)) * 10).astype(np.float32)
    aligned = torch_resize(torch, logits, (531, 570), align_corners=True)
    with pytest.raises(AssertionError, match="resize_bilinear"):
        assert_close(resize_bilinear(logits, (531, 570)), aligned, stage="resize_bilinear")


@pytest.mark.parametrize("input_size, original_size", RESIZE_CASES)
def test_mask_matches_torch_random_logits(torch, input_size, original_size):
    rng = np.random.default_rng(input_size[1] * 1000 + original_size[0])
    low_res_logits = (rng.standard_normal((256, 256)) * 10).astype(np.float32)
    before = low_res_logits.copy()

    mask = mask_from_logits(low_res_logits, input_size, original_size)

    assert_same_mask(mask, torch_mask(torch, low_res_logits, input_size, original_size), f"{input_size} -> {original_size}")
    np.testing.assert_array_equal(low_res_logits, before)


def test_mask_matches_torch_smooth_logits(torch):
    rng = np.random.default_rng(13)
    for input_size, original_size in [((192, 256), (1920, 2560)), ((238, 256), (531, 570)), ((256, 256), (3024, 3024))]:
        low_res_logits = smooth_logits(rng)
        mask = mask_from_logits(low_res_logits, input_size, original_size)
        expected = torch_mask(torch, low_res_logits, input_size, original_size)
        assert_same_mask(mask, expected, f"smooth {input_size} -> {original_size}")
        assert 0.01 < expected.mean() < 0.99, "the blob must cross the crop for the test to mean anything"


def test_mask_large_output(torch):
    rng = np.random.default_rng(14)
    low_res_logits = smooth_logits(rng)
    mask = mask_from_logits(low_res_logits, (192, 256), (3024, 4032))
    assert_same_mask(mask, torch_mask(torch, low_res_logits, (192, 256), (3024, 4032)), "3024x4032")


def test_mask_tiny_positive_logits(torch):
    # float32 sigmoid(x) rounds to exactly 0.5 for 0 < x < 8.94e-8, so "> 0.5" is not "x > 0".
    rng = np.random.default_rng(15)
    low_res_logits = rng.uniform(-2e-7, 2e-7, size=(256, 256)).astype(np.float32)
    for input_size, original_size in [((256, 256), (256, 256)), ((200, 256), (531, 680))]:
        mask = mask_from_logits(low_res_logits, input_size, original_size)
        assert_same_mask(mask, torch_mask(torch, low_res_logits, input_size, original_size), f"tiny {original_size}")

        resized = torch_resize(torch, low_res_logits[: input_size[0], : input_size[1]], original_size)
        positive_but_background = int(np.count_nonzero((resized > 0) & ~mask))
        assert positive_but_background > 1000, "the tiny positive logits must include values below the threshold"

    for value, expected in [(5e-8, False), (8.9e-8, False), (9.0e-8, True), (2e-7, True), (-1e-30, False)]:
        constant = np.full((256, 256), value, dtype=np.float32)
        mask = mask_from_logits(constant, (256, 256), (256, 256))
        assert np.all(mask == expected), f"logit {value}: expected mask {expected}"


def test_paint_label_matches_assignment(torch):
    rng = np.random.default_rng(16)
    for dtype, label in [(np.uint8, 7), (np.uint8, 255), (np.uint16, 300)]:
        label_map = rng.integers(0, 5, size=(531, 570)).astype(dtype)
        expected = label_map.copy()
        low_res_logits = smooth_logits(rng)
        before = low_res_logits.copy()
        expected[torch_mask(torch, low_res_logits, (238, 256), (531, 570))] = label

        paint_label(label_map, low_res_logits, (238, 256), label)

        np.testing.assert_array_equal(label_map, expected)
        assert label_map.dtype == dtype
        np.testing.assert_array_equal(low_res_logits, before)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: resize_bilinear(np.zeros((4, 4), np.float64), (8, 8)), TypeError, "float32"),
        (lambda: resize_bilinear(np.zeros((1, 1, 4, 4), np.float32), (8, 8)), ValueError, "(N, h, w)"),
        (lambda: resize_bilinear(np.zeros((0, 4), np.float32), (8, 8)), ValueError, "empty"),
        (lambda: resize_bilinear(np.zeros((4, 4), np.float32), (0, 8)), ValueError, "positive integer"),
        (lambda: resize_bilinear([[0.0]], (8, 8)), TypeError, "NumPy array"),
        (lambda: mask_from_logits(np.zeros((1, 256, 256), np.float32), (256, 256), (9, 9)), ValueError, "(256, 256)"),
        (lambda: mask_from_logits(np.zeros((256, 256), np.float16), (256, 256), (9, 9)), TypeError, "float32"),
        (lambda: mask_from_logits(np.zeros((256, 256), np.float32), (257, 256), (9, 9)), ValueError, "larger than"),
        (lambda: mask_from_logits(np.zeros((256, 256), np.float32), (0, 256), (9, 9)), ValueError, "positive integer"),
        (lambda: mask_from_logits(np.zeros((256, 256), np.float32), (256, 256), (9, -9)), ValueError, "positive integer"),
        (lambda: mask_from_logits(np.zeros((256, 256), np.float32), 256, (9, 9)), ValueError, "(height, width)"),
        (lambda: paint_label(np.zeros((9, 9), np.uint8), np.zeros((256, 256), np.float32), (256, 256), 256), ValueError, "does not fit"),
        (lambda: paint_label(np.zeros((9, 9), np.uint8), np.zeros((256, 256), np.float32), (256, 256), 0), ValueError, "positive integer"),
        (lambda: paint_label(np.zeros((9, 9), np.int32), np.zeros((256, 256), np.float32), (256, 256), 1), TypeError, "unsigned"),
        (lambda: paint_label(np.zeros((9, 9, 1), np.uint8), np.zeros((256, 256), np.float32), (256, 256), 1), ValueError, "2D"),
        (lambda: paint_label(_read_only_label_map(), np.zeros((256, 256), np.float32), (256, 256), 1), ValueError, "read-only"),
    ],
)
def test_postprocessing_rejects_bad_input(call, error, words):
    with pytest.raises(error) as raised:
        call()
    assert words in str(raised.value)


def _read_only_label_map() -> np.ndarray:
    label_map = np.zeros((9, 9), np.uint8)
    label_map.setflags(write=False)
    return label_map


# ---- the fused multiply-add that reproduces torch's rounding ----


def exact_float32_rounding(value: Fraction) -> np.float32:
    """Round an exact rational to the nearest float32, ties to even, without any intermediate rounding."""
    guess = np.float32(float(value))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    distances = [abs(Fraction(float(c)) - value) for c in candidates]
    best = min(distances)
    nearest = [c for c, d in zip(candidates, distances) if d == best]
    if len(nearest) == 1:
        return nearest[0]
    return next(c for c in nearest if int(np.array(c, np.float32).view(np.uint32)) % 2 == 0)


def test_fma_float32_rounds_once():
    rng = np.random.default_rng(17)
    triples = [tuple(np.float32(v) for v in rng.standard_normal(3) * 10) for _ in range(2000)]
    # A tie that the float64 sum hides: a * b + c = 1 + 3 * 2**-24 - 2**-70, just below the midpoint of
    # 1 + 2**-23 and 1 + 2**-22. Rounding a float64 sum again would give 1 + 2**-22.
    tie = (np.float32(1 + 2**-23), np.float32(2**-24 * (1 - 2**-23)), np.float32(1 + 2**-23))
    triples.append(tie)

    for a, b, c in triples:
        exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
        expected = exact_float32_rounding(exact)
        assert kernels.fma_float32(a, b, c) == expected, f"fma({a!r}, {b!r}, {c!r})"

    a, b, c = tie
    twice_rounded = np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    assert twice_rounded != kernels.fma_float32(a, b, c), "the tie case must exercise the correction"
