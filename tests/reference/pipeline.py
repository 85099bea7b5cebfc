"""Reference box-prompted pipeline: the challenge's final `CVPR24_LiteMedSAM_infer.py`, rebuilt for tests.

Written from a description of that script (MedSAM repository, branch LiteMedSAM, commit 2a5a0556 of
2024-05-23) and checked against its source. OpenCV resizes the images and torch resizes the logits,
as in the script. The steps:
- resize the longest side to 256 with cv2 INTER_AREA on uint8, where the new size is int(side * s + 0.5);
- min-max normalise over the whole resized image (all channels) in float64, pad bottom/right to 256;
- scale boxes by 256 / max(H, W) with int() truncation;
- decode each box alone with `multimask_output=False`, crop the logits to the resized image, resize
  them bilinearly (align_corners=False) to (H, W), then sigmoid > 0.5;
- later boxes (2D) and later objects (3D) overwrite earlier ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# `.model` comes before torch because it turns a missing torch into an install message.
from .model import ReferenceSam

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

try:
    import cv2
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the reference pipeline resizes images with OpenCV; install it with "
        "`pip install opencv-python-headless==4.10.0.84`"
    ) from error

__all__ = [
    "IMAGE_SIZE",
    "BOX_SHIFT",
    "reference_resize_longest_side",
    "reference_preprocess_image",
    "reference_resize_box",
    "reference_box_from_mask",
    "reference_upscale_logits",
    "reference_segment_2d",
    "reference_segment_3d",
    "reference_segment_case",
    "per_object_dice",
]

IMAGE_SIZE = 256
# Margin in pixels added around a propagated mask's bounding box in 3D; clipped at 256, not 255.
BOX_SHIFT = 3


def reference_resize_longest_side(image: np.ndarray) -> np.ndarray:
    """Resize (H, W) or (H, W, C) uint8 so that the longest side is 256, with cv2 INTER_AREA."""
    height, width = image.shape[:2]
    scale = IMAGE_SIZE * 1.0 / max(height, width)
    # Round half up for the size, unlike the box scaling below, which truncates.
    new_width = int(width * scale + 0.5)
    new_height = int(height * scale + 0.5)
    return cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_AREA)


def _pad_to_image_size(image: np.ndarray) -> np.ndarray:
    pad_bottom = IMAGE_SIZE - image.shape[0]
    pad_right = IMAGE_SIZE - image.shape[1]
    padding = [(0, pad_bottom), (0, pad_right)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, padding)


def _check_image_hw3(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be a uint8 NumPy array of shape (H, W, 3), got {type(image).__name__} "
            f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', None)}; repeat a grey image "
            f"to 3 channels first"
        )


def reference_preprocess_image(image_hw3: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the encoder input (1, 3, 256, 256) float32 and the resized size (new_h, new_w)."""
    _check_image_hw3(image_hw3)
    resized = reference_resize_longest_side(image_hw3)  # (new_h, new_w, 3) uint8

    # uint8 subtraction (never negative, because min is subtracted), then float64 division.
    lowest = resized.min()
    value_range = max(float(resized.max() - lowest), 1e-8)
    normalised = (resized - lowest) / value_range  # float64

    padded = _pad_to_image_size(normalised)  # (256, 256, 3) float64
    encoder_input = padded.astype(np.float32).transpose(2, 0, 1)[None]  # (1, 3, 256, 256)
    return np.ascontiguousarray(encoder_input), resized.shape[:2]


def reference_resize_box(box: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """Scale a box from the original frame to the 256-pixel frame, truncating, in the box's dtype."""
    ratio = IMAGE_SIZE / max(original_hw)
    return np.array([int(coordinate * ratio) for coordinate in box], dtype=np.asarray(box).dtype)


def reference_box_from_mask(mask_256: np.ndarray) -> np.ndarray:
    """Return [x_min, y_min, x_max, y_max] of the nonzero pixels of a padded 256x256 mask, grown by 3.

    The growth is clipped to 0 below and to 256 (not 255) above, as in the challenge script.
    """
    rows, columns = np.nonzero(mask_256)
    if rows.size == 0:
        raise ValueError("mask_256 is empty; the caller must fall back to the middle-slice box")
    x_min = max(0, int(columns.min()) - BOX_SHIFT)
    x_max = min(IMAGE_SIZE, int(columns.max()) + BOX_SHIFT)
    y_min = max(0, int(rows.min()) - BOX_SHIFT)
    y_max = min(IMAGE_SIZE, int(rows.max()) + BOX_SHIFT)
    return np.array([x_min, y_min, x_max, y_max])


def reference_upscale_logits(
    low_res_logits: np.ndarray, resized_hw: tuple[int, int], original_hw: tuple[int, int]
) -> np.ndarray:
    """Crop (N, 1, 256, 256) logits to `resized_hw` and resize them bilinearly to `original_hw`.

    Uses `F.interpolate(mode="bilinear", align_corners=False)` without antialiasing, so images smaller
    than 256 pixels are downsampled without a low-pass filter, as in the challenge script.
    Returns float32 logits (N, 1, H, W) before the sigmoid.
    """
    with torch.inference_mode():
        logits = _upscale_logits_tensor(torch.tensor(np.asarray(low_res_logits)), resized_hw, original_hw)
    return logits.numpy().copy()


def _upscale_logits_tensor(
    low_res_logits: torch.Tensor, resized_hw: tuple[int, int], original_hw: tuple[int, int]
) -> torch.Tensor:
    cropped = low_res_logits[..., : resized_hw[0], : resized_hw[1]]
    return F.interpolate(cropped, size=tuple(original_hw), mode="bilinear", align_corners=False)


def _encode(model: ReferenceSam, encoder_input: np.ndarray) -> torch.Tensor:
    return model.image_encoder(torch.from_numpy(encoder_input))  # (1, 256, 64, 64)


def _segment_box(
    model: ReferenceSam,
    image_embeddings: torch.Tensor,
    box_256: np.ndarray,
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
) -> np.ndarray:
    """Decode one box and return its (H, W) uint8 mask in {0, 1}."""
    box = torch.as_tensor(np.asarray(box_256)[None, None, :], dtype=torch.float32)  # (1, 1, 4)
    sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
    low_res_logits, _ = model.mask_decoder(
        image_embeddings=image_embeddings,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )  # (1, 1, 256, 256)
    logits = _upscale_logits_tensor(low_res_logits, resized_hw, original_hw)  # (1, 1, H, W)
    probabilities = torch.sigmoid(logits)[0, 0].numpy()
    return (probabilities > 0.5).astype(np.uint8)


def reference_segment_2d(model: ReferenceSam, image_hw3: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Segment a 2D image: one encoder run, one decoder run per box, label k for box k (1-based).

    `boxes` (N, 4) is [x_min, y_min, x_max, y_max] in original pixels. Where masks overlap, the later
    box wins. Returns uint8 (H, W).
    """
    _check_image_hw3(image_hw3)
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"2D boxes must have shape (N, 4) as [x_min, y_min, x_max, y_max], got {boxes.shape}"
        )
    original_hw = image_hw3.shape[:2]
    segmentation = np.zeros(original_hw, dtype=np.uint8)

    encoder_input, resized_hw = reference_preprocess_image(image_hw3)
    with torch.inference_mode():
        image_embeddings = _encode(model, encoder_input)
        for label, box in enumerate(boxes, start=1):
            box_256 = reference_resize_box(box, original_hw)
            mask = _segment_box(model, image_embeddings, box_256, resized_hw, original_hw)
            segmentation[mask > 0] = label
    return segmentation


def _check_volume_and_boxes(volume: np.ndarray, boxes: np.ndarray) -> None:
    if not isinstance(volume, np.ndarray) or volume.dtype != np.uint8 or volume.ndim not in (3, 4):
        raise ValueError(
            f"volume must be a uint8 NumPy array of shape (D, H, W) or (D, H, W, 3), got "
            f"{type(volume).__name__} {getattr(volume, 'shape', None)} {getattr(volume, 'dtype', None)}"
        )
    if volume.ndim == 4 and volume.shape[3] != 3:
        raise ValueError(f"a 4-D volume must have 3 channels last, got shape {volume.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 6:
        raise ValueError(
            f"3D boxes must have shape (N, 6) as [x_min, y_min, z_min, x_max, y_max, z_max], "
            f"got {boxes.shape}"
        )
    for index, box in enumerate(boxes):
        # The challenge script asserts this; a flat box crashes it.
        if not box[2] < box[5]:
            raise ValueError(
                f"3D box {index} has z_min={box[2]} >= z_max={box[5]}; the reference needs z_min < z_max"
            )


def _slice_as_rgb(volume: np.ndarray, z: int) -> np.ndarray:
    image = volume[z]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)  # (H, W, 3)
    return image


def _slice_embeddings(
    model: ReferenceSam, volume: np.ndarray, z: int, encoder_cache: dict | None
) -> tuple[torch.Tensor, tuple[int, int]]:
    if encoder_cache is not None and z in encoder_cache:
        return encoder_cache[z]
    encoder_input, resized_hw = reference_preprocess_image(_slice_as_rgb(volume, z))
    entry = (_encode(model, encoder_input), resized_hw)
    if encoder_cache is not None:
        encoder_cache[z] = entry
    return entry


def _propagated_box(neighbour_mask: np.ndarray, middle_box_256: np.ndarray) -> np.ndarray:
    """Return the box for a slice from its neighbour's (H, W) mask with values {0, label}.

    The mask is resized with INTER_AREA as label values (not 0/1), and the empty check runs after the
    resize, so a tiny mask can vanish and the box falls back to the middle slice's.
    """
    resized = reference_resize_longest_side(neighbour_mask)
    if resized.max() > 0:
        return reference_box_from_mask(_pad_to_image_size(resized))
    return middle_box_256


def reference_segment_3d(
    model: ReferenceSam, volume: np.ndarray, boxes: np.ndarray, encoder_cache: dict | None = None
) -> np.ndarray:
    """Segment a 3D volume object by object, slice by slice, as the challenge script does.

    `volume` is (D, H, W) (or (D, H, W, 3)) uint8 and `boxes` (N, 6) is [x_min, y_min, z_min, x_max,
    y_max, z_max]. For object k (1-based): start at z_mid = int((z_max - z_min) / 2 + z_min) with the
    box's x/y extent, go up to z_max and then down from z_mid - 1 to z_min (both inclusive, clipped to
    the volume), prompting each slice with the previous slice's mask box grown by 3 pixels. The later
    object wins where objects overlap. Returns uint8 (D, H, W).

    By default every slice of every object re-runs the encoder, as the reference does. Pass a dict as
    `encoder_cache` to reuse embeddings per slice index instead; the encoder is deterministic, so the
    output is identical. A cache belongs to one volume: never share it between volumes.

    NOTE: for a (D, H, W, 3) volume the challenge script writes (D, H, W, 3) labels, the same label
    on every channel. This function returns (D, H, W).
    """
    boxes = np.asarray(boxes)
    _check_volume_and_boxes(volume, boxes)
    depth, height, width = volume.shape[:3]
    original_hw = (height, width)
    segmentation = np.zeros((depth, height, width), dtype=np.uint8)

    with torch.inference_mode():
        for label, box in enumerate(boxes, start=1):
            object_mask = _segment_object(model, volume, box, label, original_hw, encoder_cache)
            segmentation[object_mask > 0] = label
    return segmentation


def _segment_object(
    model: ReferenceSam,
    volume: np.ndarray,
    box: np.ndarray,
    label: int,
    original_hw: tuple[int, int],
    encoder_cache: dict | None,
) -> np.ndarray:
    """Propagate one 3D box through the volume and return its (D, H, W) mask with values {0, label}."""
    depth = volume.shape[0]
    x_min, y_min, z_min, x_max, y_max, z_max = box
    z_mid = int((z_max - z_min) / 2 + z_min)
    middle_box = np.array([x_min, y_min, x_max, y_max], dtype=box.dtype)
    middle_box_256 = reference_resize_box(middle_box, original_hw)
    object_mask = np.zeros((depth,) + tuple(original_hw), dtype=np.uint8)

    def segment_slice(z: int, box_256: np.ndarray) -> None:
        image_embeddings, resized_hw = _slice_embeddings(model, volume, z, encoder_cache)
        mask = _segment_box(model, image_embeddings, box_256, resized_hw, original_hw)
        object_mask[z][mask > 0] = label

    # Upward pass: z_mid .. z_max inclusive, each slice prompted from the slice below.
    for z in range(z_mid, min(int(z_max) + 1, depth)):
        box_256 = middle_box_256 if z == z_mid else _propagated_box(object_mask[z - 1], middle_box_256)
        segment_slice(z, box_256)

    # Downward pass: z_mid - 1 .. z_min inclusive, each slice prompted from the slice above.
    for z in range(z_mid - 1, max(-1, int(z_min) - 1), -1):
        segment_slice(z, _propagated_box(object_mask[z + 1], middle_box_256))
    return object_mask


def reference_segment_case(
    model: ReferenceSam, npz_path: str | Path, *, cache_embeddings: bool = False
) -> np.ndarray:
    """Segment one challenge-format npz file; a file name starting with "3D" selects the 3D path.

    `cache_embeddings` applies to 3D cases only and reuses slice embeddings across objects.
    """
    npz_path = Path(npz_path)
    with np.load(npz_path, allow_pickle=False) as case:
        image = case["imgs"]
        boxes = case["boxes"]
    if npz_path.name.startswith("3D"):
        return reference_segment_3d(model, image, boxes, encoder_cache={} if cache_embeddings else None)
    return reference_segment_2d(model, image, boxes)


def per_object_dice(a: np.ndarray, b: np.ndarray, n_objects: int) -> np.ndarray:
    """Return the Dice coefficient of labels 1..n_objects between label maps `a` and `b`, as float64.

    A label absent from both maps gets NaN, as in the challenge's DSC.
    """
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    dice = np.full(n_objects, np.nan)
    for label in range(1, n_objects + 1):
        in_a = a == label
        in_b = b == label
        total = int(in_a.sum()) + int(in_b.sum())
        if total > 0:
            dice[label - 1] = 2.0 * int(np.logical_and(in_a, in_b).sum()) / total
    return dice
