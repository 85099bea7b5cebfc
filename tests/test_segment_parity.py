"""End-to-end parity of `npsam.segment` with the reference challenge pipeline on real 2D cases.

The reference is the PyTorch model driven by OpenCV resizing and torch bilinear upsampling, one
encoder run per image and one decoder run per box, later boxes drawn over earlier ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference.pipeline import per_object_dice, reference_segment_2d

import npsam
from npsam.config import get_config
from npsam.model import Model

# Two cases per modality source, and every box of each case.
SOURCES = ["kvasir_seg", "ph2_dermoscopy", "hc18_fetal_us", "cxr_lungs_imlab", "stardist_dsb2018_nuclei", "drive_fundus"]
CASES_PER_SOURCE = 2
MIN_OBJECT_DICE = 0.999


@pytest.fixture(scope="module")
def npsam_model(litemedsam_state_dict_numpy):
    return Model(get_config("litemedsam"), litemedsam_state_dict_numpy)


def case_ids():
    from conftest import list_cases, resolve_data_dir

    data_dir = resolve_data_dir()
    return [(source, index) for source in SOURCES for index in range(min(CASES_PER_SOURCE, len(list_cases(data_dir, source))))]


@pytest.mark.parametrize(("source", "index"), case_ids() or [("missing-data", 0)])
def test_segment_matches_reference_pipeline(source, index, cases, npsam_model, litemedsam_reference):
    case = cases(source)[index]
    image, boxes = case.load_image_and_boxes()
    image_before = image.copy()

    expected = reference_segment_2d(litemedsam_reference, image, boxes)
    actual = npsam.segment(image, boxes, model=npsam_model)

    assert actual.shape == expected.shape
    assert actual.dtype == np.uint8
    differing = int(np.count_nonzero(actual != expected))
    dice = per_object_dice(actual, expected, len(boxes))
    worst = float(np.nanmin(dice))
    assert worst >= MIN_OBJECT_DICE, (
        f"{case.name}: worst per-object Dice {worst:.5f} < {MIN_OBJECT_DICE}; {differing} of {actual.size} pixels differ"
    )
    np.testing.assert_array_equal(image, image_before)
    print(f"{case.name}: {len(boxes)} objects, {differing} of {actual.size} pixels differ, min Dice {worst:.6f}")


def test_segment_grey_equals_rgb(cases, npsam_model):
    image, boxes = cases("hc18_fetal_us")[0].load_image_and_boxes()
    grey = np.ascontiguousarray(image[..., 0])
    np.testing.assert_array_equal(npsam.segment(grey, boxes, model=npsam_model), npsam.segment(image, boxes, model=npsam_model))


def test_segment_single_box_gives_binary_mask(cases, npsam_model):
    image, boxes = cases("kvasir_seg")[0].load_image_and_boxes()
    mask = npsam.segment(image, boxes[0], model=npsam_model)
    assert mask.shape == image.shape[:2]
    assert set(np.unique(mask)) <= {0, 1}
    assert mask.sum() > 100
