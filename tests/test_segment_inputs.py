"""Bad input to `npsam.segment` and `Predictor`: a clear error naming the value, or a documented correction."""

from __future__ import annotations

import numpy as np
import pytest

import npsam
from npsam.config import get_config
from npsam.model import Model
from npsam.predictor import Predictor, label_dtype, normalize_boxes


@pytest.fixture(scope="module")
def model(litemedsam_state_dict_numpy):
    return Model(get_config("litemedsam"), litemedsam_state_dict_numpy)


@pytest.fixture(scope="module")
def ultrasound(cases):
    image, boxes = cases("hc18_fetal_us")[0].load_image_and_boxes()
    return image, boxes


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((40, 50, 3), np.nan, np.float32), "non-finite"),
        (np.zeros((40, 50, 3), np.float32), "uint8"),
        (np.zeros((1, 40, 50, 3), np.uint8), r"\(H, W\) grey or \(H, W, 3\) RGB"),
        (np.zeros((40, 50, 2), np.uint8), "1 or 3 channels"),
        (np.zeros((40, 50, 4), np.uint8), "alpha"),
        (np.zeros((0, 50, 3), np.uint8), "empty"),
    ],
    ids=["nan", "float", "4d", "two-channels", "rgba", "empty"],
)
def test_bad_image_is_rejected(model, image, message):
    with pytest.raises((ValueError, TypeError), match=message):
        npsam.segment(image, [5, 5, 30, 30], model=model)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([5000, 5000, 6000, 6000], "entirely outside"),
        ([10, np.nan, 30, 30], "not finite"),
        ([10, 10, 30], r"\(N, 4\)"),
        (np.zeros((0, 4)), r"N >= 1"),
        (["a", "b", "c", "d"], "integers or floats"),
    ],
    ids=["outside", "nan", "three-numbers", "no-boxes", "strings"],
)
def test_bad_box_is_rejected(model, ultrasound, box, message):
    image, _ = ultrasound
    with pytest.raises(ValueError, match=message):
        npsam.segment(image, box, model=model)


def test_reversed_corners_give_same_mask(model, ultrasound):
    image, boxes = ultrasound
    x0, y0, x1, y1 = boxes[0]
    expected = npsam.segment(image, [x0, y0, x1, y1], model=model)
    np.testing.assert_array_equal(npsam.segment(image, [x1, y1, x0, y0], model=model), expected)
    np.testing.assert_array_equal(npsam.segment(image, [x1, y0, x0, y1], model=model), expected)


def test_flat_box_is_one_pixel_wide(model, ultrasound, caplog):
    image, boxes = ultrasound
    x0, y0, _, y1 = boxes[0]
    with caplog.at_level("WARNING", logger="npsam.predictor"):
        mask = npsam.segment(image, [x0 + 50, y0, x0 + 50, y1], model=model)
    assert "one pixel wide" in caplog.text
    assert mask.shape == image.shape[:2]


def test_box_outside_image_is_clipped(model, ultrasound):
    image, _ = ultrasound
    height, width = image.shape[:2]
    clipped = npsam.segment(image, [-40, -10, width + 99, height + 5], model=model)
    expected = npsam.segment(image, [0, 0, width - 1, height - 1], model=model)
    np.testing.assert_array_equal(clipped, expected)


def test_normalize_boxes_does_not_modify_input():
    boxes = np.array([[30, 40, 10, 5], [-5, 2, 500, 9]], dtype=np.int64)
    before = boxes.copy()
    corrected = normalize_boxes(boxes, (100, 200))
    np.testing.assert_array_equal(boxes, before)
    np.testing.assert_array_equal(corrected, [[10, 5, 30, 40], [0, 2, 199, 9]])


def test_constant_image_gives_finite_result(model):
    image = np.full((64, 80), 128, np.uint8)
    predictor = Predictor(model)
    predictor.set_image(image)
    _, iou_predictions, low_res_logits = predictor.predict([[5, 5, 60, 50]])
    assert np.isfinite(low_res_logits).all()
    assert np.isfinite(iou_predictions).all()


def test_label_dtype_widens_past_255():
    assert label_dtype(1) == np.uint8
    assert label_dtype(255) == np.uint8
    assert label_dtype(256) == np.uint16
    assert label_dtype(65536) == np.uint32


def test_many_boxes_use_wide_labels(model, ultrasound):
    """300 small boxes need labels above 255, so the label map is uint16 and keeps label 300."""
    image, _ = ultrasound
    height, width = image.shape[:2]
    rng = np.random.default_rng(0)
    x0 = rng.integers(0, width - 40, 300)
    y0 = rng.integers(0, height - 40, 300)
    boxes = np.stack([x0, y0, x0 + 30, y0 + 30], axis=1)
    labels = npsam.segment(image, boxes, model=model)
    assert labels.dtype == np.uint16
    assert labels.max() > 255


def test_predict_before_set_image_raises(model):
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(model).predict([0, 0, 10, 10])


def test_predictor_features_are_read_only(model, ultrasound):
    image, _ = ultrasound
    predictor = Predictor(model)
    predictor.set_image(image)
    assert predictor.features.shape == (1, 256, 64, 64)
    with pytest.raises(ValueError):
        predictor.features[0, 0, 0, 0] = 1.0
