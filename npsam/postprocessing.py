"""Postprocessing of the decoder's low-resolution logits, as the LiteMedSAM challenge pipeline does it.

The (256, 256) logits are cropped to the resized image (input_size), resized bilinearly to the
original (H, W) with torch's `F.interpolate(mode="bilinear", align_corners=False)` rule and no
antialiasing, and thresholded with float32 sigmoid > 0.5. Resizing and thresholding run in one Numba
kernel that writes the mask or label map directly, so no float buffer of the image size is allocated.
"""

from __future__ import annotations

import numpy as np

from npsam import kernels
from npsam.preprocessing import _positive_int, _size_pair  # the same argument checks as preprocessing

__all__ = ["resize_bilinear", "mask_from_logits", "paint_label"]


def _require_float32(logits, name: str, shapes: str, ndims: tuple[int, ...]) -> None:
    """Raise unless `logits` is a non-empty float32 NumPy array with one of the allowed `ndims`."""
    if not isinstance(logits, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(logits).__name__}")
    if logits.ndim not in ndims:
        raise ValueError(f"{name} must have shape {shapes}, got {logits.shape}")
    if logits.size == 0:
        raise ValueError(f"{name} is empty: shape {logits.shape}")
    if logits.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {logits.dtype}. Cast with .astype(np.float32)")


def resize_bilinear(logits: np.ndarray, size) -> np.ndarray:
    """Resize float32 (h, w) or (N, h, w) logits to `size` = (H, W) with torch's bilinear rule.

    Matches `F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=False)` of torch
    2.13 on the CPU, including a float32 source index rounded once and fused multiply-adds in torch's
    order. It works for growing and shrinking sizes. Shrinking applies no low-pass filter, as in torch.
    Returns a new float32 array of shape (H, W) or (N, H, W).
    """
    _require_float32(logits, "logits", "(h, w) or (N, h, w)", (2, 3))
    out_height, out_width = _size_pair(size, "size")
    planes = np.ascontiguousarray(logits if logits.ndim == 3 else logits[None])  # (N, h, w)
    count, height, width = planes.shape

    resized = np.empty((count, out_height, out_width), dtype=np.float32)
    kernels.resize_bilinear_planes(
        planes,
        resized,
        *kernels.bilinear_table(height, out_height),
        *kernels.bilinear_table(width, out_width),
    )
    return resized if logits.ndim == 3 else resized[0]


def _validate_low_res_logits(low_res_logits, input_size) -> tuple[int, int]:
    """Check (h, w) float32 logits and return the (new_h, new_w) crop that must fit inside them."""
    _require_float32(low_res_logits, "low_res_logits", "(256, 256)", (2,))
    new_height, new_width = _size_pair(input_size, "input_size")
    if new_height > low_res_logits.shape[0] or new_width > low_res_logits.shape[1]:
        raise ValueError(
            f"input_size {(new_height, new_width)} is larger than low_res_logits {low_res_logits.shape}. "
            f"Pass the input_size returned by preprocess_image for this image"
        )
    return new_height, new_width


def _paint(low_res_logits: np.ndarray, input_size: tuple[int, int], out: np.ndarray, label) -> None:
    """Write `label` into `out` (H, W) where the cropped, resized logits have sigmoid > 0.5."""
    new_height, new_width = input_size
    out_height, out_width = out.shape
    kernels.paint_bilinear_foreground(
        np.ascontiguousarray(low_res_logits),
        new_height,
        new_width,
        out,
        label,
        *kernels.bilinear_table(new_height, out_height),
        *kernels.bilinear_table(new_width, out_width),
    )


def mask_from_logits(low_res_logits: np.ndarray, input_size, original_size) -> np.ndarray:
    """Return the (H, W) bool mask of one box from its (256, 256) float32 decoder logits.

    The logits are cropped to `input_size` = (new_h, new_w), resized bilinearly to `original_size` =
    (H, W), and compared with float32 sigmoid(x) > 0.5. That test is False for 0 < x < 8.94e-8, where
    the float32 sigmoid rounds to exactly 0.5, so it is not the same as x > 0. Memory use is the
    (H, W) bool output only.
    """
    input_size = _validate_low_res_logits(low_res_logits, input_size)
    original_size = _size_pair(original_size, "original_size")

    mask = np.zeros(original_size, dtype=np.bool_)
    _paint(low_res_logits, input_size, mask, True)
    return mask


def paint_label(label_map: np.ndarray, low_res_logits: np.ndarray, input_size, label: int) -> None:
    """Write `label` into `label_map` (H, W) in place wherever the mask of `low_res_logits` is True.

    The mask is the one `mask_from_logits(low_res_logits, input_size, label_map.shape)` returns, but no
    temporary mask is allocated. Pixels outside the mask keep their value, so painting boxes in order
    lets later boxes overwrite earlier ones, as in the challenge pipeline. `label_map` must be a
    writeable 2D array of an unsigned integer dtype that can hold `label`. It is the only argument
    that is modified.
    """
    if not isinstance(label_map, np.ndarray) or label_map.ndim != 2:
        raise ValueError(
            f"label_map must be a 2D NumPy array, got {type(label_map).__name__} {getattr(label_map, 'shape', None)}"
        )
    if not np.issubdtype(label_map.dtype, np.unsignedinteger):
        raise TypeError(f"label_map must have an unsigned integer dtype such as uint8, got {label_map.dtype}")
    if not label_map.flags.writeable:
        raise ValueError("label_map is read-only. Pass a writeable array, for example label_map.copy()")
    if label_map.size == 0:
        raise ValueError(f"label_map is empty: shape {label_map.shape}")
    label = _positive_int(label, "label")
    max_label = int(np.iinfo(label_map.dtype).max)
    if label > max_label:
        raise ValueError(
            f"label {label} does not fit label_map dtype {label_map.dtype} (max {max_label}). Use a wider dtype"
        )
    input_size = _validate_low_res_logits(low_res_logits, input_size)

    _paint(low_res_logits, input_size, label_map, label_map.dtype.type(label))
