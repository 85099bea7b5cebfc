"""3D segmentation by propagating each box slice by slice, with one encoder run per slice.

The algorithm is the one of the final CVPR 2024 "MedSAM on Laptop" LiteMedSAM baseline script
(MedSAM repository, branch LiteMedSAM, `CVPR24_LiteMedSAM_infer.py` of 2024-05-23). For object k
(1-based, in box order) with box [x_min, y_min, z_min, x_max, y_max, z_max]:
1. start at z_mid = int((z_max - z_min) / 2 + z_min) with the box's x/y extent scaled to the 256 frame;
2. go up from z_mid to z_max, then down from z_mid - 1 to z_min, both inclusive;
3. prompt every other slice with the box of the neighbouring slice's mask. That mask, with values 0/k,
   is resized to the 256 frame with area interpolation. Its bounding box, grown by 3 pixels and clipped
   to [0, 256], is the prompt, and when the resized mask is empty the middle-slice box is used again;
4. after both passes, the object's voxels get label k, over any earlier object.

Because the mask is resized with label value k rather than 1, rounding can keep a partly covered pixel
for a large k and drop it for a small one, so the propagated box can depend on the object's index.
This is kept for parity.

Differences from the reference script, where it crashes or misbehaves (each logged):
- a box with z_min == z_max (the script asserts z_min < z_max) segments that one slice;
- reversed corners (min > max on any axis) are swapped;
- coordinates beyond the volume are clipped to it before z_mid is computed. The script computes z_mid
  from the unclipped box, so its start slice moves, and it fails with an IndexError when z_mid lies
  outside the volume. A box entirely outside the volume raises ValueError;
- more than 255 objects give a uint16 label map (the script's uint8 volume overflows). Objects above
  255 resize their mask with the value 255, the largest uint8 label.

Each object's prompts depend only on its own masks, so the objects can be segmented together: one
upward sweep over the slices runs every object's upward pass, and one downward sweep every downward
pass. A slice is encoded once and the decoder's box-independent work is done once per slice and sweep
for all objects that cover it. The encoder is deterministic, so the result equals running it again
for every object, as the reference does.

NOTE: a slice read by both sweeps keeps its embeddings (4 MiB) between them, so a volume whose
objects' upward and downward passes overlap on many slices holds that many embeddings at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from npsam import postprocessing, preprocessing
from npsam.predictor import label_dtype

__all__ = [
    "BOX_SHIFT",
    "SliceEmbeddingCache",
    "normalize_boxes_3d",
    "slice_range",
    "count_slice_steps",
    "slice_uses",
    "propagated_box",
    "pass_ranges",
    "segment_volume",
]

logger = logging.getLogger(__name__)

# Margin in pixels added around a propagated mask's bounding box, in the 256 frame.
BOX_SHIFT = 3
# Largest label value the reference can paint into its uint8 object volume before resizing.
MAX_RESIZED_LABEL = 255


# ---- Boxes ----


def normalize_boxes_3d(boxes, volume_shape: tuple[int, int, int]) -> np.ndarray:
    """Check 3D boxes [x_min, y_min, z_min, x_max, y_max, z_max] and apply the documented corrections.

    `volume_shape` is (D, H, W). Reversed corners are swapped and coordinates are clipped to the volume
    (x to [0, W - 1], y to [0, H - 1], z to [0, D - 1]). Raises ValueError for a shape other than (N, 6)
    with N >= 1, for NaN or infinity, and for a box entirely outside the volume. Returns a new float64
    (N, 6) array; the input is not modified.
    """
    depth, height, width = (int(size) for size in volume_shape)
    array = np.asarray(boxes)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"3D boxes must be integers or floats, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 6 or array.shape[0] == 0:
        raise ValueError(
            f"3D boxes must have shape (N, 6) with N >= 1 as [x_min, y_min, z_min, x_max, y_max, z_max], "
            f"got {array.shape}"
        )
    array = array.astype(np.float64)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"3D box {index + 1} is not finite: {array[index].tolist()}; give voxel coordinates")

    low = np.minimum(array[:, :3], array[:, 3:])  # (N, 3) as x, y, z
    high = np.maximum(array[:, :3], array[:, 3:])
    swapped = (array[:, :3] > array[:, 3:]).any(axis=1)
    if swapped.any():
        logger.warning(
            "swapped reversed corners of %d 3D box(es), first: box %d %s",
            swapped.sum(), np.flatnonzero(swapped)[0] + 1, array[np.flatnonzero(swapped)[0]].tolist(),
        )

    limit = np.array([width - 1, height - 1, depth - 1], dtype=np.float64)
    outside = ((high < 0) | (low > limit)).any(axis=1)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"3D box {index + 1} {array[index].tolist()} lies entirely outside the volume of {width}x{height}x"
            f"{depth} (x by y by z) voxels; boxes are [x_min, y_min, z_min, x_max, y_max, z_max] in voxels"
        )
    corrected = np.concatenate([np.clip(low, 0, limit), np.clip(high, 0, limit)], axis=1)
    clipped = (corrected != np.concatenate([low, high], axis=1)).any(axis=1)
    if clipped.any():
        first = int(np.flatnonzero(clipped)[0])
        logger.warning(
            "clipped %d 3D box(es) to the %dx%dx%d volume, first: box %d %s -> %s",
            clipped.sum(), width, height, depth, first + 1, array[first].tolist(), corrected[first].tolist(),
        )
    return corrected


def slice_range(box: np.ndarray) -> tuple[int, int, int]:
    """Return (z_lo, z_mid, z_hi) of a corrected box: the first, middle and last slice it covers."""
    z_min, z_max = box[2], box[5]
    z_mid = int((z_max - z_min) / 2 + z_min)
    return int(z_min), z_mid, int(z_max)


def count_slice_steps(corrected_boxes: np.ndarray) -> int:
    """Return the number of (object, slice) steps `segment_volume` runs for corrected boxes."""
    return int(sum(z_hi - z_lo + 1 for z_lo, _, z_hi in map(slice_range, corrected_boxes)))


# ---- Embedding cache ----


class SliceEmbeddingCache:
    """Image embeddings of a volume's slices, encoded on first use and kept while an object still needs them.

    `uses[z]` is the number of objects that will read slice z. Each `release(z)` counts one read as done,
    and the embeddings are dropped when no read remains, so the cache keeps only slices still needed
    (4 MiB each for a 256-channel 64x64 embedding). Cached embeddings are read-only.
    """

    def __init__(self, model, volume: np.ndarray, uses: np.ndarray):
        self._model = model
        self._volume = volume
        self._uses = np.array(uses, dtype=np.int64, copy=True)
        self._entries: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
        self.encoder_runs = 0
        self.max_cached = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, z: int) -> bool:
        return z in self._entries

    def get(self, z: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Return (image_embeddings (1, 256, 64, 64) read-only, input_size (h, w)) of slice z."""
        if self._uses[z] <= 0:
            raise KeyError(f"slice {z} has no remaining use; the cache was built for other boxes")
        entry = self._entries.get(z)
        if entry is None:
            entry = self._encode(z)
            self._entries[z] = entry
            self.max_cached = max(self.max_cached, len(self._entries))
        return entry

    def release(self, z: int) -> None:
        """Count one read of slice z as done; drop its embeddings after the last one."""
        self._uses[z] -= 1
        if self._uses[z] <= 0:
            self._entries.pop(z, None)

    def _encode(self, z: int) -> tuple[np.ndarray, tuple[int, int]]:
        input_image, input_size = preprocessing.preprocess_image(self._volume[z])
        embeddings = self._model.encode(input_image)
        embeddings.setflags(write=False)
        self.encoder_runs += 1
        return embeddings, (int(input_size[0]), int(input_size[1]))


def pass_ranges(corrected_boxes: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Return each object's inclusive slice range of the upward pass (z_mid, z_hi) and of the downward
    pass (z_lo, z_mid - 1), which is empty when z_lo == z_mid."""
    ranges = [slice_range(box) for box in corrected_boxes]
    upward = [(z_mid, z_hi) for _, z_mid, z_hi in ranges]
    downward = [(z_lo, z_mid - 1) for z_lo, z_mid, _ in ranges]
    return upward, downward


def slice_uses(corrected_boxes: np.ndarray, depth: int) -> np.ndarray:
    """Return (D,) int64: for each slice, how many of `segment_volume`'s two sweeps read it (0, 1 or 2)."""
    uses = np.zeros(depth, dtype=np.int64)
    for ranges in pass_ranges(corrected_boxes):
        covered = np.zeros(depth, dtype=bool)
        for first, last in ranges:
            covered[first : last + 1] = True
        uses += covered
    return uses


# ---- Prompts ----


def propagated_box(neighbour_mask: np.ndarray, label: int, middle_box_256: np.ndarray) -> np.ndarray:
    """Return the prompt for a slice from its neighbour's (H, W) bool mask of the same object.

    The mask is painted with the label value (at most 255) and resized to the 256 frame with area
    interpolation before the empty check, as in the reference. An empty resized mask gives the
    middle-slice box.
    """
    if not neighbour_mask.any():
        return middle_box_256
    labels = neighbour_mask.astype(np.uint8) * np.uint8(min(label, MAX_RESIZED_LABEL))  # (H, W) values 0/k
    resized = preprocessing.resize_longest_side(labels, 256)
    box = preprocessing.box_from_mask_256(preprocessing.pad_to_square(resized, 256), shift=BOX_SHIFT, limit=256)
    return middle_box_256 if box is None else np.asarray(box)


# ---- Whole volume ----


def _check_volume(volume) -> None:
    if not isinstance(volume, np.ndarray) or volume.dtype != np.uint8:
        raise ValueError(
            f"volume must be a uint8 NumPy array, got {type(volume).__name__} {getattr(volume, 'dtype', None)}; "
            f"scale or window the intensities to 0..255 first"
        )
    if not (volume.ndim == 3 or (volume.ndim == 4 and volume.shape[3] == 3)):
        raise ValueError(f"volume must have shape (D, H, W) or (D, H, W, 3), got {volume.shape}")
    if volume.size == 0:
        raise ValueError(f"volume of shape {volume.shape} is empty")


def segment_volume(model, volume: np.ndarray, boxes, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Segment a (D, H, W) or (D, H, W, 3) uint8 volume with 3D boxes by slice-by-slice propagation.

    `boxes` (N, 6) is [x_min, y_min, z_min, x_max, y_max, z_max] in voxels, corrected as described in
    the module docstring. Returns a (D, H, W) label map where object k has label k and later objects
    are drawn over earlier ones. Its dtype is uint8 for N <= 255, uint16 for N <= 65,535 and uint32 above.
    `progress(completed, total)` is called after every slice of every object. `model` needs `encode`,
    `prepare_image` and `decode_prepared`, as `npsam.model.Model` has.
    """
    _check_volume(volume)
    depth, height, width = volume.shape[:3]
    corrected = normalize_boxes_3d(boxes, (depth, height, width))
    segs = np.zeros((depth, height, width), dtype=label_dtype(len(corrected)))
    middle_boxes = preprocessing.scale_boxes_to_256(corrected[:, [0, 1, 3, 4]], (height, width))  # (N, 4)
    cache = SliceEmbeddingCache(model, volume, slice_uses(corrected, depth))
    upward, downward = pass_ranges(corrected)
    total = count_slice_steps(corrected)
    completed = 0

    def sweep(slices, ranges, neighbour_masks: dict[int, np.ndarray], first_masks: dict | None = None) -> None:
        """Segment each object on the slices of its range in `ranges`, in the order of `slices`.

        `neighbour_masks[i]` is object i's mask on the slice before the current one in this sweep; an
        object without one is prompted with its middle-slice box. `first_masks[i]`, when given, receives
        object i's mask on the first slice of its range.
        """
        nonlocal completed
        for z in slices:
            objects = [index for index, (first, last) in enumerate(ranges) if first <= z <= last]
            if not objects:
                continue
            embeddings, input_size = cache.get(z)
            image_side = model.prepare_image(embeddings)  # box-independent decoder work, once per slice
            for index in objects:
                label = index + 1
                neighbour = neighbour_masks.get(index)
                box_256 = middle_boxes[index] if neighbour is None else propagated_box(neighbour, label, middle_boxes[index])
                low_res_logits, _ = model.decode_prepared(
                    image_side, np.asarray(box_256, dtype=np.float32)[None], valid_size=input_size
                )
                mask = postprocessing.mask_from_logits(low_res_logits[0, 0], input_size, (height, width))
                neighbour_masks[index] = mask
                if first_masks is not None and z == ranges[index][0]:
                    first_masks[index] = mask
                # Labels grow with the box index, so the maximum keeps later objects over earlier ones.
                np.maximum(segs[z], mask * segs.dtype.type(label), out=segs[z])
                completed += 1
                if progress is not None:
                    progress(completed, total)
            cache.release(z)

    # Both sweeps visit the slices in order and segment every object whose pass covers the slice, so
    # objects sharing a slice share its encoder run and decoder preparation. The result equals running
    # each object alone: an object's prompts depend only on its own masks.
    middle_masks: dict[int, np.ndarray] = {}
    sweep(range(depth), upward, {}, middle_masks)  # z_mid .. z_hi, each slice prompted from the slice below
    sweep(range(depth - 1, -1, -1), downward, dict(middle_masks))  # z_mid - 1 .. z_lo, from the slice above

    logger.debug(
        "segmented %d objects in %d slice steps with %d encoder runs; at most %d slice embeddings cached",
        len(corrected), total, cache.encoder_runs, cache.max_cached,
    )
    return segs
