"""Tests of npsam.propagation: 3D box propagation, the slice embedding cache and the box corrections.

Logic tests use `BoxModel`, a stand-in whose masks are exactly the prompted box, so they run in
milliseconds. Parity tests run npsam and the PyTorch reference pipeline (tests/reference/pipeline.py,
with its per-slice encoder cache) on real 3D cases. On the shared 2-core test machine the five
pyradiomics cases take about 4 min together. The 40-object totalsegmentator case (about 15 min) and
the 256-object test (about 4 min) are marked `slow`.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from npsam import postprocessing, preprocessing
from npsam.cases import read_case
from npsam.propagation import (
    SliceEmbeddingCache,
    count_slice_steps,
    normalize_boxes_3d,
    pass_ranges,
    propagated_box,
    segment_volume,
    slice_range,
    slice_uses,
)
from reference.pipeline import (
    per_object_dice,
    reference_box_from_mask,
    reference_resize_longest_side,
    reference_segment_2d,
    reference_segment_3d,
)

MIN_OBJECT_DICE = 0.999
PYRADIOMICS_CASES = [
    "3DBox_CT_pyradiomics_lung1",
    "3DBox_CT_pyradiomics_lung2",
    "3DBox_MR_pyradiomics_brain1",
    "3DBox_MR_pyradiomics_brain2",
    "3DBox_MR_pyradiomics_breast1",
]
TOTALSEG_SOURCE = "PSEUDO_GT_totalsegmentator_example"
SMALL_CASE = ("pyradiomics_3d", "3DBox_MR_pyradiomics_breast1")  # (21, 120, 45), one box on z 8..10


class BoxModel:
    """Stand-in for `npsam.model.Model` whose mask for a box is that box, on the volume given to it.

    `encode` returns embeddings filled with the slice index, found from the preprocessed input, and
    `decode` records (slice, box_256) and returns logits of +10 inside the box and -10 outside.
    `prepare_image` returns the embeddings unchanged and `decode_prepared` is `decode`.
    Slices in `empty_slices` decode to an empty mask.
    """

    def __init__(self, volume: np.ndarray, empty_slices=()):
        self.slice_of_input = {}
        for z in range(volume.shape[0]):
            input_image, _ = preprocessing.preprocess_image(volume[z])
            self.slice_of_input.setdefault(input_image.tobytes(), z)
        self.empty_slices = set(empty_slices)
        self.encoded: list[int] = []
        self.decoded: list[tuple[int, list[float]]] = []

    def encode(self, input_image: np.ndarray) -> np.ndarray:
        z = self.slice_of_input[input_image.tobytes()]
        self.encoded.append(z)
        return np.full((1, 256, 64, 64), z, dtype=np.float32)

    def decode(self, image_embeddings: np.ndarray, boxes_256: np.ndarray):
        assert boxes_256.shape == (1, 4)
        assert boxes_256.dtype == np.float32
        z = int(image_embeddings[0, 0, 0, 0])
        self.decoded.append((z, boxes_256[0].tolist()))
        logits = np.full((1, 1, 256, 256), -10.0, dtype=np.float32)
        if z not in self.empty_slices:
            x_min, y_min, x_max, y_max = (int(value) for value in boxes_256[0])
            logits[0, 0, y_min : y_max + 1, x_min : x_max + 1] = 10.0
        return logits, np.ones((1, 1), dtype=np.float32)

    def prepare_image(self, image_embeddings: np.ndarray) -> np.ndarray:
        return image_embeddings

    def decode_prepared(self, image_side: np.ndarray, boxes_256: np.ndarray, valid_size=None):
        logits, iou = self.decode(image_side, boxes_256)
        if valid_size is not None:
            # As npsam's decoder does: only whole 4x4 blocks covering the valid corner.
            logits = logits[..., : -(-valid_size[0] // 4) * 4, : -(-valid_size[1] // 4) * 4]
        return logits, iou


def _propagate_alone(model, volume: np.ndarray, box: np.ndarray, label: int) -> np.ndarray:
    """Segment one corrected box on its own, as the module docstring describes; return a (D, H, W) bool mask.

    An independent oracle for `segment_volume`: no cache, no sweeps, one `model.decode` per slice.
    """
    depth, height, width = volume.shape[:3]
    z_lo, z_mid, z_hi = slice_range(box)
    middle = preprocessing.scale_boxes_to_256(box[[0, 1, 3, 4]][None], (height, width))[0]
    masks = np.zeros((depth, height, width), dtype=bool)

    def run(z, prompt):
        input_image, input_size = preprocessing.preprocess_image(volume[z])
        logits, _ = model.decode(model.encode(input_image), np.asarray(prompt, dtype=np.float32)[None])
        masks[z] = postprocessing.mask_from_logits(logits[0, 0], input_size, (height, width))

    for z in range(z_mid, z_hi + 1):
        run(z, middle if z == z_mid else propagated_box(masks[z - 1], label, middle))
    for z in range(z_mid - 1, z_lo - 1, -1):
        run(z, propagated_box(masks[z + 1], label, middle))
    return masks


def _distinct_volume(depth=8, height=40, width=50, seed=0) -> np.ndarray:
    """Random uint8 volume whose slices all differ, so BoxModel can tell them apart."""
    return np.random.default_rng(seed).integers(0, 256, (depth, height, width), dtype=np.uint8)


def _scaled_box(box_xyxy, size) -> list[float]:
    return preprocessing.scale_boxes_to_256(np.asarray(box_xyxy, dtype=np.float64), size).astype(np.float32).tolist()


def _oracle_propagated_box(neighbour_mask: np.ndarray, label_value: int) -> list[float]:
    """The reference's rule with OpenCV: resize the 0/k mask, pad, take the box grown by 3."""
    resized = reference_resize_longest_side(neighbour_mask.astype(np.uint8) * np.uint8(label_value))
    padded = np.zeros((256, 256), np.uint8)
    padded[: resized.shape[0], : resized.shape[1]] = resized
    return [float(value) for value in reference_box_from_mask(padded)]


def _describe_differences(actual: np.ndarray, expected: np.ndarray, num_objects: int) -> str:
    different = np.argwhere(actual != expected)
    dice = per_object_dice(actual, expected, num_objects)
    lowest = int(np.nanargmin(dice)) + 1 if np.isfinite(dice).any() else 0
    return (
        f"{len(different)} differing voxels of {actual.size}, first (z, y, x) {different[:5].tolist()}; "
        f"lowest per-object Dice {np.nanmin(dice):.6f} (object {lowest})"
    )


@pytest.fixture(scope="module")
def npsam_model():
    from npsam.model import load_model

    return load_model("litemedsam")


def _case_path(data_dir, source, name):
    return data_dir / source / "npz" / "imgs" / f"{name}.npz"


# ---- normalize_boxes_3d ----


def test_normalize_boxes_3d_keeps_valid_boxes():
    boxes = np.array([[1, 2, 0, 10, 12, 3], [0, 0, 1, 49, 39, 7]])
    corrected = normalize_boxes_3d(boxes, (8, 40, 50))
    np.testing.assert_array_equal(corrected, boxes)
    assert corrected.dtype == np.float64
    assert boxes.dtype == np.int64  # input untouched


def test_normalize_boxes_3d_swaps_reversed_corners(caplog):
    with caplog.at_level(logging.WARNING, logger="npsam.propagation"):
        corrected = normalize_boxes_3d(np.array([[10, 12, 5, 1, 2, 2]]), (8, 40, 50))
    np.testing.assert_array_equal(corrected, [[1, 2, 2, 10, 12, 5]])
    assert "swapped reversed corners" in caplog.text


def test_normalize_boxes_3d_clips_to_volume(caplog):
    with caplog.at_level(logging.WARNING, logger="npsam.propagation"):
        corrected = normalize_boxes_3d(np.array([[-5, 2, -1, 70, 45, 12]]), (8, 40, 50))
    np.testing.assert_array_equal(corrected, [[0, 2, 0, 49, 39, 7]])
    assert "clipped 1 3D box(es)" in caplog.text


@pytest.mark.parametrize(
    "boxes, message",
    [
        (np.array([[1, 2, 3, 4]]), r"shape \(N, 6\)"),
        (np.zeros((0, 6)), r"shape \(N, 6\)"),
        (np.array([1, 2, 0, 10, 12, 3]), r"shape \(N, 6\)"),
        (np.array([[1, 2, 0, 10, np.nan, 3]]), "not finite"),
        (np.array([["1", "2", "0", "10", "12", "3"]]), "integers or floats"),
        (np.array([[1, 2, 9, 10, 12, 12]]), "entirely outside"),
        (np.array([[51, 2, 0, 60, 12, 3]]), "entirely outside"),
        (np.array([[1, -20, 0, 10, -1, 3]]), "entirely outside"),
    ],
)
def test_normalize_boxes_3d_rejects(boxes, message):
    with pytest.raises(ValueError, match=message):
        normalize_boxes_3d(boxes, (8, 40, 50))


def test_slice_range_and_steps():
    boxes = np.array([[0, 0, 2, 5, 5, 6], [0, 0, 3, 5, 5, 3], [0, 0, 0, 5, 5, 1]], dtype=np.float64)
    assert slice_range(boxes[0]) == (2, 4, 6)
    assert slice_range(boxes[1]) == (3, 3, 3)
    assert slice_range(boxes[2]) == (0, 0, 1)  # int(0.5 + 0) = 0, as in the reference
    assert count_slice_steps(boxes) == 5 + 1 + 2
    np.testing.assert_array_equal(slice_uses(boxes, 8), [1, 1, 1, 2, 1, 1, 1, 0])


# ---- propagation logic with BoxModel ----


def test_propagation_visits_slices_in_reference_order():
    volume = _distinct_volume()
    model = BoxModel(volume)
    segs = segment_volume(model, volume, np.array([[5, 6, 2, 30, 25, 6]]))

    assert [z for z, _ in model.decoded] == [4, 5, 6, 3, 2]
    assert sorted(model.encoded) == [2, 3, 4, 5, 6]
    assert segs.dtype == np.uint8
    assert segs.shape == volume.shape
    assert not segs[[0, 1, 7]].any()
    assert segs[2:7].any(axis=(1, 2)).all()


def test_propagation_prompts_follow_previous_mask():
    volume = _distinct_volume()
    model = BoxModel(volume)
    box = [5, 6, 2, 30, 25, 6]
    segs = segment_volume(model, volume, np.array([box]))

    prompts = dict(model.decoded)
    assert prompts[4] == _scaled_box([5, 6, 30, 25], (40, 50))
    for z, neighbour in ((5, 4), (6, 5), (3, 4), (2, 3)):
        assert prompts[z] == _oracle_propagated_box(segs[neighbour] == 1, 1), f"prompt of slice {z}"


def test_propagation_empty_mask_fallback():
    volume = _distinct_volume()
    model = BoxModel(volume, empty_slices={5})
    segs = segment_volume(model, volume, np.array([[5, 6, 2, 30, 25, 7]]))

    prompts = dict(model.decoded)
    middle = _scaled_box([5, 6, 30, 25], (40, 50))
    assert not segs[5].any()
    assert prompts[6] == middle
    assert prompts[7] != middle  # prompted from slice 6's mask again


def test_propagation_box_depends_on_label_value():
    # A one-row line resized 4x smaller: each 4x4 block averages to value / 4, which rounds 1 away
    # but keeps 200.
    mask = np.zeros((1024, 1024), dtype=bool)
    mask[101, 100:300] = True
    middle = np.array([0.0, 0.0, 10.0, 10.0])
    assert propagated_box(mask, 1, middle).tolist() == middle.tolist()
    assert propagated_box(mask, 200, middle).tolist() != middle.tolist()
    assert propagated_box(mask, 300, middle).tolist() == propagated_box(mask, 255, middle).tolist()


def test_propagation_single_slice_box():
    volume = _distinct_volume()
    model = BoxModel(volume)
    segs = segment_volume(model, volume, np.array([[5, 6, 3, 30, 25, 3]]))

    assert model.decoded == [(3, _scaled_box([5, 6, 30, 25], (40, 50)))]
    assert segs[3].any()
    assert not np.delete(segs, 3, axis=0).any()


def test_propagation_reversed_box_equals_swapped():
    volume = _distinct_volume()
    reversed_model, swapped_model = BoxModel(volume), BoxModel(volume)
    reversed_segs = segment_volume(reversed_model, volume, np.array([[30, 25, 6, 5, 6, 2]]))
    swapped_segs = segment_volume(swapped_model, volume, np.array([[5, 6, 2, 30, 25, 6]]))

    np.testing.assert_array_equal(reversed_segs, swapped_segs)
    assert reversed_model.decoded == swapped_model.decoded


def test_propagation_box_beyond_volume_equals_clipped(caplog):
    volume = _distinct_volume()
    beyond_model, clipped_model = BoxModel(volume), BoxModel(volume)
    with caplog.at_level(logging.WARNING, logger="npsam.propagation"):
        beyond = segment_volume(beyond_model, volume, np.array([[20, -4, 5, 80, 25, 15]]))
    clipped = segment_volume(clipped_model, volume, np.array([[20, 0, 5, 49, 25, 7]]))

    np.testing.assert_array_equal(beyond, clipped)
    assert beyond_model.decoded == clipped_model.decoded
    assert [z for z, _ in clipped_model.decoded] == [6, 7, 5]
    assert "clipped 1 3D box(es)" in caplog.text


def _object_mask(volume, box, label) -> np.ndarray:
    """Return the (D, H, W) bool mask of one object propagated alone with its own model."""
    corrected = normalize_boxes_3d(np.array([box]), volume.shape)
    return _propagate_alone(BoxModel(volume), volume, corrected[0], label)


def test_propagation_later_object_wins():
    volume = _distinct_volume()
    first = [5, 6, 2, 30, 25, 5]
    second = [20, 15, 4, 45, 35, 6]
    segs = segment_volume(BoxModel(volume), volume, np.array([first, second]))
    first_mask = _object_mask(volume, first, 1)
    second_mask = _object_mask(volume, second, 2)

    assert (first_mask & second_mask).any()
    assert (segs[second_mask] == 2).all()
    assert (segs[first_mask & ~second_mask] == 1).all()
    assert not segs[~first_mask & ~second_mask].any()


def test_propagation_shared_cache_changes_nothing():
    volume = _distinct_volume()
    boxes = np.array([[5, 6, 2, 30, 25, 5], [20, 15, 4, 45, 35, 6], [0, 0, 0, 49, 39, 7]])
    shared = segment_volume(BoxModel(volume), volume, boxes)

    # Each object alone, with its own model and cache, painted in box order.
    expected = np.zeros_like(shared)
    corrected = normalize_boxes_3d(boxes, volume.shape)
    for label, box in enumerate(corrected, start=1):
        expected[_propagate_alone(BoxModel(volume), volume, box, label)] = label
    np.testing.assert_array_equal(shared, expected)


def test_propagation_encodes_each_slice_once():
    volume = _distinct_volume()
    model = BoxModel(volume)
    boxes = np.array([[5, 6, 2, 30, 25, 5], [20, 15, 4, 45, 35, 6], [0, 0, 0, 49, 39, 7]])
    segment_volume(model, volume, boxes)

    assert sorted(model.encoded) == list(range(8))
    assert len(model.decoded) == 4 + 3 + 8


def test_pass_ranges_and_sweep_uses():
    boxes = normalize_boxes_3d(np.array([[5, 6, 0, 30, 25, 3], [20, 15, 2, 45, 35, 5], [0, 0, 6, 49, 39, 7]]), (8, 40, 50))
    upward, downward = pass_ranges(boxes)

    assert upward == [(1, 3), (3, 5), (6, 7)]
    assert downward == [(0, 0), (2, 2), (6, 5)]  # the third object's downward pass is empty
    # Slice 2 is read by both sweeps: by object 1 going up and by object 2 going down.
    np.testing.assert_array_equal(slice_uses(boxes, 8), [1, 1, 2, 1, 1, 1, 1, 1])


def test_cache_evicts_after_last_use():
    volume = _distinct_volume()
    model = BoxModel(volume)
    cache = SliceEmbeddingCache(model, volume, np.array([0, 0, 2, 1, 0, 0, 0, 0]))

    cache.get(2)
    cache.release(2)
    assert 2 in cache, "slice 2 has a second use left"
    cache.get(3)
    cache.release(3)
    assert 3 not in cache
    cache.get(2)
    cache.release(2)
    assert len(cache) == 0
    assert cache.encoder_runs == 2
    assert cache.max_cached == 2
    with pytest.raises(KeyError, match="no remaining use"):
        cache.get(2)


def test_propagation_max_cached_slices(caplog):
    volume = _distinct_volume()
    boxes = np.array([[5, 6, 0, 30, 25, 3], [20, 15, 2, 45, 35, 5], [0, 0, 6, 49, 39, 7]])
    with caplog.at_level(logging.DEBUG, logger="npsam.propagation"):
        segment_volume(BoxModel(volume), volume, boxes)
    # Only slice 2 waits between the sweeps, so at most it and the slice being segmented are held.
    assert "8 encoder runs; at most 2 slice embeddings cached" in caplog.text


def test_cache_embeddings_are_read_only():
    volume = _distinct_volume()
    cache = SliceEmbeddingCache(BoxModel(volume), volume, np.ones(8, dtype=np.int64))
    embeddings, input_size = cache.get(3)
    assert not embeddings.flags.writeable
    with pytest.raises(ValueError):
        embeddings[0, 0, 0, 0] = 1.0
    assert input_size == preprocessing.longest_side_size((40, 50))


def test_propagation_more_than_255_objects():
    volume = _distinct_volume(depth=3)
    rng = np.random.default_rng(5)
    x_min = rng.integers(0, 40, 300)
    y_min = rng.integers(0, 30, 300)
    boxes = np.stack([x_min, y_min, np.zeros(300, int), x_min + 8, y_min + 8, np.zeros(300, int)], axis=1)
    # Objects 255 and 300 share a box that spans two slices.
    boxes[254] = boxes[299] = [5, 6, 0, 30, 25, 1]
    model = BoxModel(volume)
    segs = segment_volume(model, volume, boxes)

    assert segs.dtype == np.uint16
    assert segs.max() == 300
    assert 300 in segs[1]
    assert 255 not in segs  # drawn over by object 300
    # Object 300 resizes its mask with value 255, so it gets object 255's propagated prompt.
    prompts_on_slice_1 = [box for z, box in model.decoded if z == 1]  # objects 255 and 300, in box order
    assert len(prompts_on_slice_1) == 2
    assert prompts_on_slice_1[0] == prompts_on_slice_1[1]
    assert sorted(set(model.encoded)) == [0, 1]


def test_propagation_progress_reports_every_slice():
    volume = _distinct_volume()
    calls = []
    boxes = np.array([[5, 6, 2, 30, 25, 5], [20, 15, 4, 45, 35, 6]])
    segment_volume(BoxModel(volume), volume, boxes, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(step, 7) for step in range(1, 8)]


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.zeros((4, 20, 30), np.float32), "uint8"),
        (np.zeros((20, 30), np.uint8), r"\(D, H, W\)"),
        (np.zeros((4, 20, 30, 2), np.uint8), r"\(D, H, W\)"),
        (np.zeros((0, 20, 30), np.uint8), "empty"),
        ([[[0]]], "uint8"),
    ],
)
def test_segment_volume_rejects_bad_volumes(volume, message):
    with pytest.raises(ValueError, match=message):
        segment_volume(None, volume, np.array([[1, 2, 0, 10, 12, 1]]))


# ---- real model ----


@pytest.mark.parametrize("name", PYRADIOMICS_CASES)
def test_segment_volume_matches_reference_pyradiomics(name, data_dir, npsam_model, litemedsam_reference):
    case = read_case(_case_path(data_dir, "pyradiomics_3d", name))
    segs = segment_volume(npsam_model, case.imgs, case.boxes)
    expected = reference_segment_3d(litemedsam_reference, np.array(case.imgs), np.array(case.boxes), encoder_cache={})

    report = f"{name}: {_describe_differences(segs, expected, case.num_objects)}"
    print(report)
    assert segs.dtype == np.uint8
    assert segs.shape == expected.shape
    assert expected.any(), f"{name}: the reference segmented nothing"
    assert np.nanmin(per_object_dice(segs, expected, case.num_objects)) >= MIN_OBJECT_DICE, report


@pytest.mark.slow
def test_segment_volume_matches_reference_totalsegmentator(cases, npsam_model, litemedsam_reference):
    (entry,) = cases(TOTALSEG_SOURCE)
    case = read_case(entry.image_path)
    assert case.num_objects == 40
    assert case.imgs.shape[0] == 30

    segs = segment_volume(npsam_model, case.imgs, case.boxes)
    expected = reference_segment_3d(litemedsam_reference, np.array(case.imgs), np.array(case.boxes), encoder_cache={})

    report = f"{case.name}: {_describe_differences(segs, expected, case.num_objects)}"
    print(report)
    dice = per_object_dice(segs, expected, case.num_objects)
    low = {int(i) + 1: round(float(dice[i]), 6) for i in np.flatnonzero(dice < MIN_OBJECT_DICE)}
    assert not low, f"{report}; objects below {MIN_OBJECT_DICE}: {low}"


def test_cache_embeddings_independent_of_order(data_dir, npsam_model):
    case = read_case(_case_path(data_dir, *SMALL_CASE))
    volume = case.imgs
    uses = np.zeros(volume.shape[0], dtype=np.int64)
    uses[[8, 9]] = 1

    forward = SliceEmbeddingCache(npsam_model, volume, uses)
    first_8, size_8 = forward.get(8)
    first_9, _ = forward.get(9)
    backward = SliceEmbeddingCache(npsam_model, volume, uses)
    second_9, _ = backward.get(9)
    second_8, _ = backward.get(8)

    direct = npsam_model.encode(preprocessing.preprocess_image(volume[8])[0])
    assert np.array_equal(first_8, second_8)
    assert np.array_equal(first_9, second_9)
    assert np.array_equal(first_8, direct)
    assert not np.array_equal(first_8, first_9)
    assert not first_8.flags.writeable
    assert not second_9.flags.writeable
    assert size_8 == preprocessing.longest_side_size(volume.shape[1:])


def test_single_slice_box_matches_reference_2d(data_dir, npsam_model, litemedsam_reference):
    case = read_case(_case_path(data_dir, *SMALL_CASE))
    x_min, y_min, _, x_max, y_max, _ = case.boxes[0]
    z = 9
    segs = segment_volume(npsam_model, case.imgs, np.array([[x_min, y_min, z, x_max, y_max, z]]))

    image = np.repeat(case.imgs[z][:, :, None], 3, axis=2)
    expected = reference_segment_2d(litemedsam_reference, image, np.array([[x_min, y_min, x_max, y_max]]))
    assert expected.any()
    np.testing.assert_array_equal(segs[z], expected)
    assert not np.delete(segs, z, axis=0).any()


def test_box_beyond_volume_matches_reference_on_clipped_box(data_dir, npsam_model, litemedsam_reference):
    case = read_case(_case_path(data_dir, *SMALL_CASE))
    depth, height, width = case.imgs.shape
    x_min, y_min, _, x_max, y_max, _ = case.boxes[0]
    beyond = np.array([[x_min, y_min, depth - 2, width + 30, y_max, depth + 5]])
    clipped = np.array([[x_min, y_min, depth - 2, width - 1, y_max, depth - 1]])

    segs = segment_volume(npsam_model, case.imgs, beyond)
    expected = reference_segment_3d(litemedsam_reference, np.array(case.imgs), clipped, encoder_cache={})
    assert segs[depth - 2 :].any()
    np.testing.assert_array_equal(segs, expected, err_msg=_describe_differences(segs, expected, 1))


@pytest.mark.slow
def test_more_than_255_objects_real_volume(data_dir, npsam_model, litemedsam_reference):
    # 255 one-slice boxes and a 256th box over slices 8-9 of a real volume: 257 decodes, 2 encodes.
    case = read_case(_case_path(data_dir, *SMALL_CASE))
    x_min, y_min, _, x_max, y_max, _ = (int(value) for value in case.boxes[0])
    offsets = np.random.default_rng(0).integers(-2, 3, (255, 2))
    boxes = np.array(
        [[x_min + dx, y_min + dy, 8, x_max + dx, y_max + dy, 8] for dx, dy in offsets]
        + [[x_min, y_min, 8, x_max, y_max, 9]]
    )
    segs = segment_volume(npsam_model, case.imgs, boxes)

    assert segs.dtype == np.uint16
    labels_on_8 = set(np.unique(segs[8]).tolist()) - {0}
    assert max(labels_on_8) == 256
    assert len(labels_on_8) > 1, "some one-slice objects should stay visible around object 256"

    # Slice 8 is object 256's middle slice, prompted by its own box: the reference's mask for that box.
    expected = reference_segment_3d(litemedsam_reference, np.array(case.imgs), boxes[-1:], encoder_cache={})
    np.testing.assert_array_equal(segs[8] == 256, expected[8] == 1)

    # Slice 9 is prompted from slice 8's mask resized with value 255, so it equals object 255's result.
    corrected = normalize_boxes_3d(boxes[-1:], case.imgs.shape)
    mask = _propagate_alone(npsam_model, case.imgs, corrected[0], 255)
    np.testing.assert_array_equal(segs[9] == 256, mask[9])
    assert mask[9].any()
