"""One comparison helper for numerical tests, with the per-stage tolerances in one table.

An element passes when |actual - expected| <= atol + rtol * |expected| (the `np.isclose` rule).
Measurements quoted below, unless stated otherwise: the torch 2.13.0 CPU float32 reference against
the same reference run in float64 (`.double()`), on the first kvasir_seg case (531x570, one box),
on a 2-core AMD EPYC with AVX2. That gap is the reference's own float32 rounding, so an independent
float32 implementation should land within about twice of it. "Prototype" numbers come from a NumPy
float32 prototype of the model compared with the torch reference on one random image and one box.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TOLERANCES", "assert_close"]

ENCODER_STAGE_TOLERANCE = 1e-4

# stage -> (atol, rtol, how the tolerance was chosen)
TOLERANCES: dict[str, tuple[float, float, str]] = {
    "patch_embed": (
        ENCODER_STAGE_TOLERANCE,
        ENCODER_STAGE_TOLERANCE,
        "float32 vs float64 reference: max |d| 4.9e-7 at max |value| 0.71",
    ),
    "layers.0": (
        ENCODER_STAGE_TOLERANCE,
        ENCODER_STAGE_TOLERANCE,
        "float32 vs float64 reference: max |d| 3.5e-5 at max |value| 7.3 (largest of the encoder stages)",
    ),
    "layers.1": (
        ENCODER_STAGE_TOLERANCE,
        ENCODER_STAGE_TOLERANCE,
        "float32 vs float64 reference: max |d| 2.4e-5 at max |value| 11.6",
    ),
    "layers.2": (
        ENCODER_STAGE_TOLERANCE,
        ENCODER_STAGE_TOLERANCE,
        "float32 vs float64 reference: max |d| 3.0e-5 at max |value| 19.8",
    ),
    "layers.3": (
        ENCODER_STAGE_TOLERANCE,
        ENCODER_STAGE_TOLERANCE,
        "float32 vs float64 reference: max |d| 6.5e-6 at max |value| 4.5",
    ),
    "image_embeddings": (
        ENCODER_STAGE_TOLERANCE,
        ENCODER_STAGE_TOLERANCE,
        "float32 vs float64 reference: max |d| 2.0e-6; prototype vs torch: 2.3e-6; tanh GELU gives 3.8e-3",
    ),
    "sparse_embeddings": (
        1e-5,
        1e-5,
        "float32 vs float64 box tokens: max |d| 1.4e-6 at max |value| 1.4; prototype vs torch: 9e-7",
    ),
    "dense_embeddings": (
        0.0,
        0.0,
        "no_mask_embed.weight broadcast to every position: a copy, so exact",
    ),
    "dense_pe": (
        1e-5,
        1e-5,
        "float32 vs float64 dense PE: max |d| 2.6e-6; prototype with float32 2*pi vs torch: 6e-8",
    ),
    "low_res_logits": (
        5e-4,
        1e-4,
        "float32 vs float64 decoder on the same embedding: max |d| 3.2e-5 at max |logit| 39; "
        "prototype vs torch: 4.2e-5 on the same embedding, 6.7e-5 end to end",
    ),
    "iou_predictions": (
        1e-5,
        1e-5,
        "float32 vs float64 decoder: max |d| 1.0e-7; prototype vs torch: 1e-6",
    ),
    "resize_bilinear": (
        2e-5,
        1e-6,
        "F.interpolate bilinear on identical float32 logits: torch's float32 source index with one "
        "rounding leaves <= 4e-6 (prototype); a float64 source index differs by 1.4e-4 (kvasir case)",
    ),
}


def _describe(array: np.ndarray) -> str:
    return f"{type(array).__name__} {getattr(array, 'dtype', None)} {getattr(array, 'shape', None)}"


def assert_close(actual: np.ndarray, expected: np.ndarray, *, stage: str) -> None:
    """Assert that `actual` matches `expected` in shape, then dtype, then values within `stage`'s tolerance.

    Both must be NumPy arrays. NaN or infinity anywhere in `actual` that is not at the same place in
    `expected` fails. The message names the stage, the maximum absolute difference, its index and
    the two values there.
    """
    if stage not in TOLERANCES:
        raise KeyError(
            f"no tolerance for stage {stage!r}; add it to TOLERANCES or use one of {sorted(TOLERANCES)}"
        )
    atol, rtol, _ = TOLERANCES[stage]
    if not isinstance(actual, np.ndarray) or not isinstance(expected, np.ndarray):
        raise TypeError(
            f"{stage}: compare NumPy arrays, got actual {_describe(actual)}, expected {_describe(expected)}"
        )

    assert actual.shape == expected.shape, f"{stage}: shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == expected.dtype, f"{stage}: dtype {actual.dtype} != expected {expected.dtype}"
    if actual.size == 0:
        return

    # Differences in float64, so float32 inputs cannot overflow or round the gap away.
    actual64 = actual.astype(np.float64)
    expected64 = expected.astype(np.float64)
    close = np.isclose(actual64, expected64, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return

    difference = np.abs(actual64 - expected64)
    difference[np.isnan(difference)] = np.inf  # NaN against a number counts as the largest difference
    overall_max = float(np.max(np.where(close, np.nan_to_num(difference, posinf=0.0), difference)))
    failing_difference = np.where(close, -1.0, difference)
    worst = np.unravel_index(int(np.argmax(failing_difference)), difference.shape)
    raise AssertionError(
        f"{stage}: {int((~close).sum())} of {close.size} elements outside atol={atol:g}, rtol={rtol:g}; "
        f"max |actual - expected| = {overall_max:.3e}; worst failing element at index "
        f"{tuple(int(i) for i in worst)}: actual {float(actual64[worst]):.9g}, "
        f"expected {float(expected64[worst]):.9g}, |difference| {float(difference[worst]):.3e}"
    )
