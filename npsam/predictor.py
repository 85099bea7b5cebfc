"""Box-prompted segmentation of 2D images: `Predictor` (encode once, decode many) and `segment`.

The pipeline is the one of the CVPR 2024 "MedSAM on Laptop" LiteMedSAM baseline: longest side resized
to 256 with area interpolation, min-max normalisation, zero padding to 256x256, boxes scaled to that
frame, one mask per box, then cropping, bilinear resizing back to the image size and sigmoid > 0.5.

Box corrections, applied before scaling and documented for users (messages number boxes from 1, as
their labels are):
- reversed corners are swapped, so [x_max, y_max, x_min, y_min] means the same box;
- coordinates outside the image are clipped to the image (a box entirely outside raises an error);
- coordinates are inclusive pixel indices, so x_min == x_max is a box one pixel wide: it is segmented,
  with a warning in the log, as the challenge pipeline does.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from npsam import postprocessing, preprocessing
from npsam.model import DECODE_BATCH_SIZE, Model, load_model

__all__ = ["Predictor", "segment", "normalize_boxes", "label_dtype"]

logger = logging.getLogger(__name__)


def label_dtype(num_objects: int) -> np.dtype:
    """Return the smallest unsigned integer dtype that can store labels 0..num_objects."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_objects <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{num_objects} objects do not fit a uint32 label map")


def normalize_boxes(boxes, image_size: tuple[int, int]) -> np.ndarray:
    """Validate boxes [x_min, y_min, x_max, y_max] in pixels and apply the documented corrections.

    Accepts one box (4,) or N boxes (N, 4). Returns a new float64 (N, 4) array; the input is not modified.
    """
    height, width = image_size
    array = np.asarray(boxes)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"boxes must be integers or floats, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4 or array.shape[0] == 0:
        raise ValueError(
            f"boxes must have shape (4,) or (N, 4) with N >= 1 as [x_min, y_min, x_max, y_max], got {np.shape(boxes)}"
        )
    array = array.astype(np.float64)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"box {index + 1} is not finite: {array[index].tolist()}; give pixel coordinates")

    x0 = np.minimum(array[:, 0], array[:, 2])
    x1 = np.maximum(array[:, 0], array[:, 2])
    y0 = np.minimum(array[:, 1], array[:, 3])
    y1 = np.maximum(array[:, 1], array[:, 3])
    swapped = (array[:, 0] > array[:, 2]) | (array[:, 1] > array[:, 3])
    if swapped.any():
        logger.info("swapped reversed corners of %d box(es), first: box %d", swapped.sum(), np.flatnonzero(swapped)[0] + 1)

    outside = (x1 < 0) | (y1 < 0) | (x0 > width - 1) | (y0 > height - 1)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"box {index + 1} {array[index].tolist()} lies entirely outside the {width}x{height} (width x height) "
            f"image; boxes are [x_min, y_min, x_max, y_max] in pixels of this image"
        )
    corrected = np.stack(
        [np.clip(x0, 0, width - 1), np.clip(y0, 0, height - 1), np.clip(x1, 0, width - 1), np.clip(y1, 0, height - 1)],
        axis=1,
    )
    clipped = (corrected != np.stack([x0, y0, x1, y1], axis=1)).any(axis=1)
    if clipped.any():
        logger.info("clipped %d box(es) to the image, first: box %d", clipped.sum(), np.flatnonzero(clipped)[0] + 1)

    flat = (corrected[:, 2] == corrected[:, 0]) | (corrected[:, 3] == corrected[:, 1])
    if flat.any():
        index = int(np.flatnonzero(flat)[0])
        logger.warning(
            "%d box(es) have x_min == x_max or y_min == y_max, first: box %d %s; coordinates are inclusive, "
            "so they are segmented as boxes one pixel wide or high, as the challenge pipeline does",
            flat.sum(), index + 1, array[index].tolist(),
        )
    return corrected


class Predictor:
    """Encode one image, then segment any number of boxes on it, in the manner of SAM's predictor.

    After `set_image`, `features` are the (1, 256, 64, 64) image embeddings (read-only),
    `original_size` is (H, W) and `input_size` the (h, w) of the resized image inside the 256x256 input.
    """

    def __init__(self, model: Model | str = "litemedsam"):
        self.model = model if isinstance(model, Model) else load_model(model)
        self.reset_image()

    def reset_image(self) -> None:
        self.features = None
        self.original_size = None
        self.input_size = None

    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    def set_image(self, image: np.ndarray) -> None:
        """Preprocess and encode an (H, W) grey or (H, W, 3) RGB uint8 image."""
        input_image, input_size = preprocessing.preprocess_image(image)
        self.set_image_embeddings(self.model.encode(input_image), image.shape[:2], input_size)

    def set_image_embeddings(self, features: np.ndarray, original_size, input_size) -> None:
        """Use embeddings computed earlier for an image of `original_size`, resized to `input_size`."""
        features = np.array(features, dtype=np.float32, copy=True)
        features.setflags(write=False)
        self.features = features
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set; call Predictor.set_image(image) before predicting")

    def predict_logits(self, boxes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode boxes given in pixels of the original image.

        Returns (boxes_256 (N, 4) as fed to the prompt encoder, low_res_logits (N, 1, 256, 256),
        iou_predictions (N, 1)).
        """
        self._require_image()
        corrected = normalize_boxes(boxes, self.original_size)
        boxes_256 = preprocessing.scale_boxes_to_256(corrected, self.original_size)
        low_res_logits, iou_predictions = self.model.decode(self.features, boxes_256)
        return boxes_256, low_res_logits, iou_predictions

    def predict(self, boxes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (masks (N, H, W) bool, iou_predictions (N, 1), low_res_logits (N, 1, 256, 256)).

        Holds N full-size masks in memory; `predict_labels` paints them into one label map instead.
        """
        _, low_res_logits, iou_predictions = self.predict_logits(boxes)
        masks = np.stack([self._mask(logits[0]) for logits in low_res_logits])
        return masks, iou_predictions, low_res_logits

    def predict_labels(self, boxes) -> np.ndarray:
        """Return an (H, W) label map: box k (1-based) is label k, later boxes drawn over earlier ones."""
        self._require_image()
        corrected = normalize_boxes(boxes, self.original_size)
        boxes_256 = preprocessing.scale_boxes_to_256(corrected, self.original_size)
        labels = np.zeros(self.original_size, dtype=label_dtype(len(boxes_256)))
        image_side = self.model.prepare_image(self.features)
        for start in range(0, len(boxes_256), DECODE_BATCH_SIZE):
            low_res_logits, _ = self.model.decode_prepared(
                image_side, boxes_256[start : start + DECODE_BATCH_SIZE], valid_size=self.input_size
            )
            for offset, logits in enumerate(low_res_logits):
                postprocessing.paint_label(labels, logits[0], self.input_size, start + offset + 1)
        return labels

    def _mask(self, low_res_logits: np.ndarray) -> np.ndarray:
        return postprocessing.mask_from_logits(low_res_logits, self.input_size, self.original_size)


# NOTE: models are cached by name or path for the life of the process, so a weights file rewritten
# on disk after its first use is not reloaded; pass a freshly loaded Model to pick up such a change.
@functools.lru_cache(maxsize=2)
def _load_model_cached(name_or_path: str) -> Model:
    return load_model(name_or_path)


def segment(image: np.ndarray, box, model: Model | str = "litemedsam") -> np.ndarray:
    """Segment the objects in `box` on a 2D image and return an (H, W) label map.

    image: (H, W) grey or (H, W, 3) RGB, uint8. box: [x_min, y_min, x_max, y_max] in pixels, or an (N, 4)
    array of such boxes. One box gives a 0/1 mask; N boxes give labels 1..N in box order, later boxes
    drawn over earlier ones, in the smallest unsigned dtype that can store N. model: a loaded `Model`, a
    registered model name or the path of a converted .h5 file.
    """
    predictor = Predictor(model if isinstance(model, Model) else _load_model_cached(str(model)))
    predictor.set_image(image)
    return predictor.predict_labels(box)
