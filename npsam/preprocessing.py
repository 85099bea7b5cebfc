"""Image and box preprocessing of the LiteMedSAM challenge pipeline, reproduced bit for bit.

An (H, W, 3) uint8 image becomes the (1, 3, 256, 256) float32 encoder input in four steps:
1. resize so that the longest side is 256, with OpenCV's INTER_AREA rule on uint8 (emulated exactly,
   so OpenCV is not needed at run time);
2. min-max normalise over the whole resized image, all channels together;
3. zero-pad at the bottom and right to 256x256;
4. reorder HWC to CHW and add the batch axis.

Boxes are scaled to the same 256-pixel frame by truncation. In 3D, the box of the next slice comes
from the previous slice's mask (`box_from_mask_256`). Every function validates its input and leaves it
unmodified.
"""

from __future__ import annotations

import numbers

import numpy as np

from npsam import kernels

__all__ = [
    "TARGET_LENGTH",
    "longest_side_size",
    "resize_area_uint8",
    "resize_longest_side",
    "normalize_intensity",
    "pad_to_square",
    "preprocess_image",
    "scale_boxes_to_256",
    "box_from_mask_256",
]

# Side of the square encoder input, in pixels.
TARGET_LENGTH = 256

# OpenCV takes its integer-factor fast path when both scales are this close to an integer (DBL_EPSILON).
_INTEGER_SCALE_TOLERANCE = np.finfo(np.float64).eps


def _positive_int(value, name: str) -> int:
    """Return `value` as an int, or raise ValueError naming `name` unless it is a positive integer."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _size_pair(size, name: str) -> tuple[int, int]:
    """Validate a (height, width) pair of positive integers."""
    if not isinstance(size, (tuple, list, np.ndarray)) or len(size) != 2:
        raise ValueError(f"{name} must be a (height, width) pair, got {size!r}")
    return _positive_int(size[0], f"{name}[0] (height)"), _positive_int(size[1], f"{name}[1] (width)")


def _require_uint8_image(image, function: str) -> None:
    """Raise unless `image` is a non-empty (H, W) or (H, W, C) uint8 NumPy array."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{function} expects a NumPy array, got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(f"{function} expects an (H, W) or (H, W, C) image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"{function} got an empty image of shape {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"{function} expects a uint8 image, got dtype {image.dtype}. Convert the intensities to 0..255 "
            f"and cast with image.astype(np.uint8)"
        )


def longest_side_size(original_size, target_length: int = TARGET_LENGTH) -> tuple[int, int]:
    """Return the (new_h, new_w) that scales the longest side of an (H, W) image to `target_length`.

    s = target_length / max(H, W) in float64, and each side becomes int(side * s + 0.5), which rounds
    half up (unlike the box scaling, which truncates). Raises ValueError when the short side would
    become 0 pixels, for example a 1x1000 image.
    """
    height, width = _size_pair(original_size, "original_size")
    target_length = _positive_int(target_length, "target_length")

    scale = target_length / max(height, width)
    new_height = int(height * scale + 0.5)
    new_width = int(width * scale + 0.5)
    if new_height == 0 or new_width == 0:
        raise ValueError(
            f"a {height}x{width} (height x width) image resized to longest side {target_length} would be "
            f"{new_height}x{new_width}. Crop or pad it to an aspect ratio of at most {2 * target_length}:1"
        )
    return new_height, new_width


def resize_area_uint8(image: np.ndarray, size) -> np.ndarray:
    """Resize a uint8 image to `size` = (height, width) as OpenCV 4.10's `cv2.resize(INTER_AREA)` does.

    `image` is (H, W) or (H, W, C) with any C >= 1, and the output keeps that layout (an (H, W, 1)
    input gives (h, w, 1), where OpenCV would drop the channel axis). Note the order: OpenCV's `dsize`
    is (width, height). The output is bit-identical to OpenCV's on every path: a copy at equal size,
    the integer-factor fast path, the general area downscale, and the fixed-point linear upscale used
    when either side grows. OpenCV accepts more than 4 channels only on the integer-factor path. On the
    other paths this function resizes each channel as OpenCV resizes a single-channel image.
    """
    _require_uint8_image(image, "resize_area_uint8")
    out_height, out_width = _size_pair(size, "size")
    source = np.ascontiguousarray(image if image.ndim == 3 else image[:, :, None])  # (H, W, C)
    height, width, channels = source.shape
    if (out_height, out_width) == (height, width):
        return image.copy()

    # OpenCV's scales: the reciprocal of dst/src, not src/dst, which can differ in the last bit.
    inv_scale_x = out_width / width
    inv_scale_y = out_height / height
    scale_x = 1.0 / inv_scale_x
    scale_y = 1.0 / inv_scale_y

    resized = np.empty((out_height, out_width, channels), dtype=np.uint8)
    if scale_x >= 1.0 and scale_y >= 1.0:
        _area_downscale(source, resized, scale_x, scale_y)
    else:
        _area_upscale(source, resized, scale_x, scale_y, inv_scale_x, inv_scale_y)
    return resized if image.ndim == 3 else resized[:, :, 0]


def _area_downscale(source: np.ndarray, resized: np.ndarray, scale_x: float, scale_y: float) -> None:
    """Fill `resized` from `source` with the INTER_AREA downscale: integer fast path or weight tables."""
    factor_x = int(np.rint(scale_x))
    factor_y = int(np.rint(scale_y))
    is_integer = (
        abs(scale_x - factor_x) < _INTEGER_SCALE_TOLERANCE and abs(scale_y - factor_y) < _INTEGER_SCALE_TOLERANCE
    )
    if is_integer:
        kernels.resize_area_integer(source, resized, factor_y, factor_x)
        return

    height, width = source.shape[:2]
    out_height, out_width = resized.shape[:2]
    x_dst, x_src, x_weight = kernels.area_weight_table(width, out_width, scale_x)
    y_dst, y_src, y_weight = kernels.area_weight_table(height, out_height, scale_y)
    # y_dst is sorted, so each output row owns one contiguous run of the y table.
    y_offsets = np.searchsorted(y_dst, np.arange(out_height + 1))
    kernels.resize_area_general(source, resized, x_dst, x_src, x_weight, y_offsets, y_src, y_weight)


def _area_upscale(
    source: np.ndarray,
    resized: np.ndarray,
    scale_x: float,
    scale_y: float,
    inv_scale_x: float,
    inv_scale_y: float,
) -> None:
    """Fill `resized` from `source` with OpenCV's linear INTER_AREA rule for a growing side."""
    height, width = source.shape[:2]
    out_height, out_width = resized.shape[:2]
    x_index, x_weight0, x_weight1, x_border_start = kernels.area_linear_table(width, out_width, scale_x, inv_scale_x)
    y_index, y_weight0, y_weight1, _ = kernels.area_linear_table(height, out_height, scale_y, inv_scale_y)
    kernels.resize_area_upscale(
        source, resized, x_index, x_weight0, x_weight1, x_border_start, y_index, y_weight0, y_weight1
    )


def resize_longest_side(image: np.ndarray, target_length: int = TARGET_LENGTH) -> np.ndarray:
    """Resize a uint8 (H, W) or (H, W, C) image so that its longest side is `target_length` (INTER_AREA)."""
    _require_uint8_image(image, "resize_longest_side")
    return resize_area_uint8(image, longest_side_size(image.shape[:2], target_length))


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Min-max normalise a uint8 image to float32 in [0, 1], over all pixels and channels together.

    As in the challenge pipeline: the minimum is subtracted in uint8 (never negative), the division by
    max(max - min, 1e-8) is in float64, and only the result is cast to float32. A constant image gives
    zeros.
    """
    _require_uint8_image(image, "normalize_intensity")
    lowest = image.min()
    value_range = max(float(image.max() - lowest), 1e-8)
    return ((image - lowest) / value_range).astype(np.float32)


def pad_to_square(image: np.ndarray, target_length: int = TARGET_LENGTH) -> np.ndarray:
    """Zero-pad an (h, w) or (h, w, C) array at the bottom and right to (target_length, target_length[, C])."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ValueError(
            f"pad_to_square expects an (h, w) or (h, w, C) NumPy array, got {type(image).__name__} "
            f"{getattr(image, 'shape', None)}"
        )
    target_length = _positive_int(target_length, "target_length")
    height, width = image.shape[:2]
    if height > target_length or width > target_length:
        raise ValueError(
            f"pad_to_square: image of {height}x{width} pixels is larger than {target_length}x{target_length}. "
            f"Resize it first with resize_longest_side"
        )

    padded = np.zeros((target_length, target_length) + image.shape[2:], dtype=image.dtype)
    padded[:height, :width] = image
    return padded


def preprocess_image(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Turn a uint8 image into the encoder input and return it with the resized size.

    `image` is (H, W, 3) RGB, or (H, W) or (H, W, 1) grey, which is used as three equal channels.
    Returns the (1, 3, 256, 256) float32 input and input_size = (new_h, new_w), the part of the
    256x256 frame that the resized image covers.
    """
    _validate_model_image(image)
    grey = image.ndim == 2 or image.shape[2] == 1

    # Resizing one grey channel equals resizing it repeated 3 times: OpenCV resizes channels
    # independently and picks the same paths (including the 2x2 rounding) for 1 and 3 channels.
    resized = resize_longest_side(image[:, :, 0] if image.ndim == 3 and grey else image)  # (h, w[, 3])
    input_size = resized.shape[:2]
    if grey:
        resized = np.repeat(resized[:, :, None], 3, axis=2)  # (h, w, 3)

    normalized = normalize_intensity(resized)  # (h, w, 3) float32
    padded = pad_to_square(normalized, TARGET_LENGTH)  # (256, 256, 3)
    input_image = np.ascontiguousarray(padded.transpose(2, 0, 1)[None])  # (1, 3, 256, 256)
    return input_image, (int(input_size[0]), int(input_size[1]))


def _validate_model_image(image) -> None:
    """Raise a ValueError or TypeError that names the problem and the fix unless `image` fits `preprocess_image`."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a NumPy array, got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) grey or (H, W, 3) RGB, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 4:
        raise ValueError(
            f"image has 4 channels (shape {image.shape}), which looks like RGBA. Drop the alpha channel "
            f"with image[:, :, :3]"
        )
    if image.ndim == 3 and image.shape[2] not in (1, 3):
        raise ValueError(
            f"image must have 1 or 3 channels, got {image.shape[2]} (shape {image.shape}). Give (H, W) grey "
            f"or (H, W, 3) RGB"
        )

    if np.issubdtype(image.dtype, np.inexact):
        non_finite = int(np.count_nonzero(~np.isfinite(image)))
        if non_finite:
            raise ValueError(
                f"image contains {non_finite} non-finite pixel values (NaN or infinity) out of {image.size}. "
                f"Replace them, for example with np.nan_to_num, before converting to uint8"
            )
    if image.dtype != np.uint8:
        raise TypeError(
            f"image dtype must be uint8 (intensities 0..255), got {image.dtype}. Window or rescale the "
            f"intensities to 0..255 and cast with image.astype(np.uint8)"
        )


def scale_boxes_to_256(boxes: np.ndarray, original_size) -> np.ndarray:
    """Scale boxes from pixels of an (H, W) image to the 256-pixel frame of the encoder input.

    Each coordinate becomes int(coordinate * (256 / max(H, W))), truncated toward zero, without clipping
    or reordering, and is returned in the dtype of `boxes`, as the challenge script does. `boxes` is (4,)
    or (N, 4) as [x_min, y_min, x_max, y_max], and the output has the same shape. The product is computed
    with NumPy 2's rules, so float32 boxes are multiplied in float32 and integer boxes in float64.
    """
    if not isinstance(boxes, np.ndarray):
        raise TypeError(f"boxes must be a NumPy array, got {type(boxes).__name__}")
    if boxes.dtype == np.bool_ or not (np.issubdtype(boxes.dtype, np.integer) or np.issubdtype(boxes.dtype, np.floating)):
        raise TypeError(f"boxes must hold integers or floats, got dtype {boxes.dtype}")
    if boxes.ndim not in (1, 2) or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (4,) or (N, 4) as [x_min, y_min, x_max, y_max], got {boxes.shape}")
    if np.issubdtype(boxes.dtype, np.floating) and not np.isfinite(boxes).all():
        raise ValueError(f"boxes contain NaN or infinity: {boxes.tolist()}")
    height, width = _size_pair(original_size, "original_size")

    ratio = TARGET_LENGTH / max(height, width)
    # Adding 0 turns the -0.0 that np.trunc gives for small negative values into int()'s 0.
    truncated = np.trunc(boxes * ratio) + 0
    return truncated.astype(boxes.dtype)


def box_from_mask_256(mask_256: np.ndarray, shift: int = 3, limit: int = TARGET_LENGTH) -> np.ndarray | None:
    """Return the propagation box [x_min, y_min, x_max, y_max] of a padded 256x256 mask, or None if empty.

    The box is the extent of the nonzero pixels grown by `shift` on each side and clipped to 0 below
    and to `limit` (256, not 255) above, as the challenge script builds the next slice's box in 3D.
    Returns int64 (4,).
    """
    if not isinstance(mask_256, np.ndarray) or mask_256.ndim != 2:
        raise ValueError(
            f"mask_256 must be a 2D NumPy array, got {type(mask_256).__name__} {getattr(mask_256, 'shape', None)}"
        )
    if isinstance(shift, (bool, np.bool_)) or not isinstance(shift, numbers.Integral) or shift < 0:
        raise ValueError(f"shift must be a non-negative integer, got {shift!r}")
    limit = _positive_int(limit, "limit")

    foreground = mask_256 > 0
    rows = np.flatnonzero(foreground.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(foreground.any(axis=0))

    x_min = max(0, int(columns[0]) - shift)
    x_max = min(limit, int(columns[-1]) + shift)
    y_min = max(0, int(rows[0]) - shift)
    y_max = min(limit, int(rows[-1]) + shift)
    return np.array([x_min, y_min, x_max, y_max], dtype=np.int64)
