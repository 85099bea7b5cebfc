"""Tests of npsam.preprocessing: INTER_AREA against OpenCV bit for bit, the encoder input against a
straightforward OpenCV + NumPy reference, box scaling, propagation boxes and input validation.

OpenCV is the oracle, so these tests fail (never skip) when opencv-python-headless 4.10.0.84 is missing.
"""

from __future__ import annotations

import importlib.metadata
import re

import numpy as np
import pytest

from npsam import preprocessing
from npsam.preprocessing import (
    box_from_mask_256,
    longest_side_size,
    normalize_intensity,
    pad_to_square,
    preprocess_image,
    resize_area_uint8,
    resize_longest_side,
    scale_boxes_to_256,
)

OPENCV_DISTRIBUTION = "opencv-python-headless"
OPENCV_PINNED_VERSION = "4.10.0.84"
OPENCV_INSTALL_HINT = f"pip install {OPENCV_DISTRIBUTION}=={OPENCV_PINNED_VERSION}"

# 2D sources of the real-data folder, all (H, W, 3) uint8.
IMAGE_SOURCES_2D = [
    "kvasir_seg",
    "ph2_dermoscopy",
    "hc18_fetal_us",
    "cxr_lungs_imlab",
    "drive_fundus",
    "stardist_dsb2018_nuclei",
]
# 3D sources, whose label maps the 3D propagation resizes slice by slice.
LABEL_SOURCES_3D = ["pyradiomics_3d", "brats2021_sammed3d", "colin27_aal_mricron", "PSEUDO_GT_totalsegmentator_example"]


@pytest.fixture(scope="module")
def cv2():
    """Return OpenCV at the pinned version, or fail the test with the install command."""
    try:
        import cv2 as opencv
    except ImportError as error:
        pytest.fail(f"OpenCV is required as the INTER_AREA reference ({error}). Run: {OPENCV_INSTALL_HINT}", pytrace=False)
    try:
        installed = importlib.metadata.version(OPENCV_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != OPENCV_PINNED_VERSION:
        pytest.fail(
            f"the INTER_AREA parity tests need {OPENCV_DISTRIBUTION} {OPENCV_PINNED_VERSION}, found "
            f"{installed} (cv2 {opencv.__version__}). Run: {OPENCV_INSTALL_HINT}",
            pytrace=False,
        )
    return opencv


def opencv_resize_area(cv2, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.resize(INTER_AREA) to (height, width), keeping an (H, W, 1) input's channel axis."""
    height, width = size
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if image.ndim == 3 and resized.ndim == 2:
        resized = resized[:, :, None]
    return resized


def assert_same_pixels(actual: np.ndarray, expected: np.ndarray, context: str) -> None:
    """Assert equal shape, then dtype, then every value. The message counts the differing values."""
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != expected {expected.dtype}"
    differing = actual != expected
    if differing.any():
        gap = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        raise AssertionError(
            f"{context}: {int(differing.sum())} of {actual.size} values differ, max |difference| {gap.max():g}, "
            f"first at index {tuple(int(i) for i in np.argwhere(differing)[0])}"
        )


def random_image(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    """Return a random uint8 image. One channel gives (H, W) half of the time and (H, W, 1) otherwise."""
    image = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    if channels == 1 and rng.random() < 0.5:
        return image[:, :, 0]
    return image


def is_integer_factor(source: int, target: int) -> bool:
    return source % target == 0


def assert_matches_opencv(cv2, image: np.ndarray, size: tuple[int, int], context: str) -> None:
    before = image.copy()
    actual = resize_area_uint8(image, size)
    assert_same_pixels(actual, opencv_resize_area(cv2, image, size), f"{context}: {image.shape} -> {size}")
    assert_same_pixels(image, before, f"{context}: input modified")


# ---- resize_area_uint8 against OpenCV ----


def test_resize_area_random_downscales(cv2):
    rng = np.random.default_rng(101)
    tested = 0
    while tested < 48:
        height, width = (int(v) for v in rng.integers(2, 400, size=2))
        size = (int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1)))
        if is_integer_factor(height, size[0]) and is_integer_factor(width, size[1]):
            continue  # the general area path only
        channels = 1 if tested % 2 else 3
        assert_matches_opencv(cv2, random_image(rng, height, width, channels), size, f"downscale {tested}")
        tested += 1


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 10, 16])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_area_integer_factors(cv2, factor, channels):
    rng = np.random.default_rng(factor * 10 + channels)
    for factor_y, factor_x in [(factor, factor), (factor, 1), (1, factor), (factor, 2)]:
        height = factor_y * int(rng.integers(3, 40))
        width = factor_x * int(rng.integers(3, 40))
        image = random_image(rng, height, width, channels)
        size = (height // factor_y, width // factor_x)
        assert_matches_opencv(cv2, image, size, f"factors {factor_y}x{factor_x}")


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5])
def test_resize_area_2x2_rounding_by_channels(cv2, channels):
    # Every 2x2 block sums to 2 (mean 0.5). OpenCV rounds half up for 1, 3 and 4 channels and half to
    # even for the others.
    block = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    image = np.repeat(np.tile(block, (8, 8))[:, :, None], channels, axis=2)  # (16, 16, C)
    expected_value = 1 if channels in (1, 3, 4) else 0

    resized = resize_area_uint8(image, (8, 8))

    assert_same_pixels(resized, opencv_resize_area(cv2, image, (8, 8)), f"2x2 blocks, {channels} channels")
    assert np.all(resized == expected_value), f"{channels} channels: expected all {expected_value}"


def test_resize_area_random_upscales(cv2):
    rng = np.random.default_rng(202)
    for case in range(48):
        height, width = (int(v) for v in rng.integers(1, 120, size=2))
        size = (int(rng.integers(height + 1, 3 * height + 3)), int(rng.integers(width + 1, 3 * width + 3)))
        channels = 1 if case % 2 else 3
        assert_matches_opencv(cv2, random_image(rng, height, width, channels), size, f"upscale {case}")


def test_resize_area_special_sizes(cv2):
    rng = np.random.default_rng(303)
    image = random_image(rng, 97, 131, 3)
    sizes = {
        "identity": (97, 131),
        "width only, down": (97, 60),
        "height only, down": (41, 131),
        "width only, up": (97, 300),
        "height only, up": (200, 131),
        "height up, width down": (150, 70),
        "height down, width up": (30, 400),
        "single pixel": (1, 1),
        "single row": (1, 50),
    }
    for context, size in sizes.items():
        assert_matches_opencv(cv2, image, size, context)
    assert_matches_opencv(cv2, random_image(rng, 1, 1, 3), (5, 7), "from a single pixel")

    copy = resize_area_uint8(image, image.shape[:2])
    assert copy is not image, "an equal-size resize must return a new array"


def test_resize_area_more_channels(cv2):
    rng = np.random.default_rng(404)
    for channels in (2, 4, 5):
        image = random_image(rng, 82, 60, channels)
        assert_matches_opencv(cv2, image, (41, 30), f"{channels} channels, 2x downscale")
        assert_matches_opencv(cv2, image, (41, 15), f"{channels} channels, 2x4 downscale")
    for channels in (2, 4):
        image = random_image(rng, 83, 61, channels)
        assert_matches_opencv(cv2, image, (40, 29), f"{channels} channels, downscale")
        assert_matches_opencv(cv2, image, (170, 100), f"{channels} channels, upscale")

    # OpenCV takes more than 4 channels only on the integer-factor path. Channels are independent on
    # the other paths, so compare them one by one.
    image = random_image(rng, 83, 61, 5)
    for size in [(40, 29), (170, 100), (20, 130)]:
        resized = resize_area_uint8(image, size)
        expected = np.stack(
            [opencv_resize_area(cv2, np.ascontiguousarray(image[:, :, c]), size) for c in range(5)], axis=2
        )
        assert_same_pixels(resized, expected, f"5 channels, {image.shape} -> {size}")


def test_resize_area_non_contiguous_input(cv2):
    rng = np.random.default_rng(505)
    base = random_image(rng, 120, 160, 3)
    view = base[::2, 1::3, ::-1]  # strided, reversed channels
    before = base.copy()
    assert_same_pixels(resize_area_uint8(view, (37, 29)), opencv_resize_area(cv2, np.ascontiguousarray(view), (37, 29)), "strided view")
    assert_same_pixels(base, before, "input modified")


def test_resize_area_real_images(cv2, cases):
    tested = 0
    for source in IMAGE_SOURCES_2D:
        for case in cases(source):
            image, _ = case.load_image_and_boxes()
            height, width = image.shape[:2]
            sizes = [
                longest_side_size((height, width)),  # what the pipeline does
                (height // 3 + 1, width // 2 + 1),
                (int(height * 1.37), int(width * 1.21)),
            ]
            for size in sizes:
                assert_matches_opencv(cv2, image, size, f"{source}/{case.name}")
                tested += 1
            grey = np.ascontiguousarray(image[:, :, 0])
            assert_matches_opencv(cv2, grey, sizes[0], f"{source}/{case.name} channel 0")
    assert tested >= 3 * 80, f"only {tested} real-image resizes ran. Is the data folder complete?"


@pytest.mark.parametrize("label", [1, 2, 5, 12, 255])
def test_resize_area_label_maps(cv2, cases, label):
    tested = 0
    for source in LABEL_SOURCES_3D:
        for case in cases(source):
            ground_truth = case.load_gt()
            objects = np.unique(ground_truth)
            objects = objects[objects > 0]
            depth = ground_truth.shape[0]
            # Slices through the middle of each of the first three objects.
            for obj in objects[:3]:
                z = int(np.flatnonzero((ground_truth == obj).any(axis=(1, 2))).mean())
                label_map = ((ground_truth[min(z, depth - 1)] == obj) * label).astype(np.uint8)
                assert_matches_opencv(cv2, label_map, longest_side_size(label_map.shape), f"{case.name} object {obj}")
                tested += 1
    for source in ("kvasir_seg", "hc18_fetal_us"):
        for case in cases(source)[:5]:
            label_map = ((case.load_gt() > 0) * label).astype(np.uint8)
            assert_matches_opencv(cv2, label_map, longest_side_size(label_map.shape), f"{case.name} mask")
            tested += 1
    assert tested >= 20, f"only {tested} label maps were resized"


def test_resize_area_differs_from_inter_linear(cv2):
    # Negative control: the comparison above must notice another interpolation.
    rng = np.random.default_rng(606)
    image = random_image(rng, 211, 173, 3)
    for size in [(100, 90), (400, 300)]:
        linear = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
        with pytest.raises(AssertionError, match="values differ"):
            assert_same_pixels(resize_area_uint8(image, size), linear, "INTER_LINEAR")


@pytest.mark.parametrize(
    "image, size, error, words",
    [
        (np.zeros((8, 8), np.float32), (4, 4), TypeError, "uint8"),
        (np.zeros((8, 8), np.bool_), (4, 4), TypeError, "uint8"),
        (np.zeros((8, 8), np.int16), (4, 4), TypeError, "astype(np.uint8)"),
        (np.zeros((2, 8, 8, 3), np.uint8), (4, 4), ValueError, "(H, W) or (H, W, C)"),
        (np.zeros((0, 8), np.uint8), (4, 4), ValueError, "empty"),
        (np.zeros((8, 8, 0), np.uint8), (4, 4), ValueError, "empty"),
        ([[1, 2], [3, 4]], (4, 4), TypeError, "NumPy array"),
        (np.zeros((8, 8), np.uint8), (0, 4), ValueError, "positive integer"),
        (np.zeros((8, 8), np.uint8), (4, -1), ValueError, "positive integer"),
        (np.zeros((8, 8), np.uint8), (4.0, 4), ValueError, "positive integer"),
        (np.zeros((8, 8), np.uint8), (4, 4, 3), ValueError, "(height, width)"),
    ],
)
def test_resize_area_rejects_bad_input(image, size, error, words):
    with pytest.raises(error) as raised:
        resize_area_uint8(image, size)
    assert words in str(raised.value)


# ---- sizes, normalisation and padding ----


@pytest.mark.parametrize(
    "original_size, expected",
    [
        ((512, 512), (256, 256)),
        ((1920, 2560), (192, 256)),
        ((333, 517), (165, 256)),
        ((531, 570), (238, 256)),
        ((5, 512), (3, 256)),  # 2.5 + 0.5: round half up, where round() would give 2
        ((100, 50), (256, 128)),
        ((20, 30), (171, 256)),
        ((1, 512), (1, 256)),  # the most elongated shape that still keeps one row
    ],
)
def test_longest_side_size_values(original_size, expected):
    assert longest_side_size(original_size) == expected


def test_longest_side_size_rejects_bad_input():
    with pytest.raises(ValueError, match="aspect ratio"):
        longest_side_size((1, 1000))
    with pytest.raises(ValueError, match="positive integer"):
        longest_side_size((0, 5))
    with pytest.raises(ValueError, match="positive integer"):
        longest_side_size((5.5, 3))
    with pytest.raises(ValueError, match="positive integer"):
        longest_side_size((5, 3), target_length=0)
    with pytest.raises(ValueError, match=re.escape("(height, width)")):
        longest_side_size(512)


def test_resize_longest_side_matches_opencv(cv2):
    rng = np.random.default_rng(707)
    for shape in [(531, 570, 3), (512, 512, 3), (101, 122), (30, 700, 3)]:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        expected = opencv_resize_area(cv2, image, longest_side_size(shape[:2]))
        assert_same_pixels(resize_longest_side(image), expected, f"longest side of {shape}")


def reference_normalize(image: np.ndarray) -> np.ndarray:
    """The challenge script's formula, written out with NumPy: uint8 subtraction, float64 division."""
    return ((image - image.min()) / np.clip(image.max() - image.min(), a_min=1e-8, a_max=None)).astype(np.float32)


def test_normalize_matches_formula():
    rng = np.random.default_rng(808)
    image = np.stack(
        [
            rng.integers(10, 51, size=(40, 30)),
            rng.integers(100, 201, size=(40, 30)),
            rng.integers(30, 61, size=(40, 30)),
        ],
        axis=2,
    ).astype(np.uint8)
    image[0, 0] = [10, 200, 30]  # pin the global min (channel 0) and max (channel 1)
    before = image.copy()

    normalized = normalize_intensity(image)

    assert_same_pixels(normalized, reference_normalize(image), "normalised image")
    assert normalized.dtype == np.float32
    assert normalized[:, :, 0].min() == 0.0, "the minimum is global over all channels"
    assert normalized[:, :, 0].max() < 0.3, "channel 0 must not be stretched on its own"
    assert normalized[:, :, 1].max() == 1.0
    assert_same_pixels(image, before, "input modified")


def test_normalize_constant_image_zeros():
    normalized = normalize_intensity(np.full((5, 7, 3), 77, dtype=np.uint8))
    assert_same_pixels(normalized, np.zeros((5, 7, 3), np.float32), "constant image")


def test_pad_to_square_pads_bottom_right():
    image = np.arange(1, 3 * 5 * 2 + 1, dtype=np.float32).reshape(3, 5, 2)
    padded = pad_to_square(image, 8)
    assert padded.shape == (8, 8, 2)
    assert padded.dtype == np.float32
    assert_same_pixels(padded[:3, :5], image, "copied region")
    assert np.count_nonzero(padded) == image.size, "everything outside the image must be 0"
    assert pad_to_square(np.ones((4, 8), np.uint8), 8).shape == (8, 8)

    with pytest.raises(ValueError, match="larger than"):
        pad_to_square(np.zeros((9, 4), np.float32), 8)
    with pytest.raises(ValueError, match=re.escape("(h, w)")):
        pad_to_square(np.zeros((2, 2, 2, 2), np.float32), 8)


# ---- preprocess_image ----


def reference_preprocess(cv2, image_hw3: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The challenge preprocessing written out with OpenCV and NumPy (float64 until the final cast)."""
    height, width = image_hw3.shape[:2]
    scale = 256 * 1.0 / max(height, width)
    new_height, new_width = int(height * scale + 0.5), int(width * scale + 0.5)
    resized = cv2.resize(image_hw3, (new_width, new_height), interpolation=cv2.INTER_AREA)
    normalized = (resized - resized.min()) / np.clip(resized.max() - resized.min(), a_min=1e-8, a_max=None)
    padded = np.pad(normalized, ((0, 256 - new_height), (0, 256 - new_width), (0, 0)))
    tensor = padded.astype(np.float32).transpose(2, 0, 1)[None]
    return tensor, (new_height, new_width)


def test_preprocess_real_images_match_reference(cv2, cases):
    tested = 0
    for source in IMAGE_SOURCES_2D:
        for case in cases(source)[:6]:
            image, _ = case.load_image_and_boxes()
            before = image.copy()
            input_image, input_size = preprocess_image(image)
            expected_image, expected_size = reference_preprocess(cv2, image)

            assert input_size == expected_size, f"{case.name}: input_size {input_size} != {expected_size}"
            assert input_image.flags.c_contiguous
            assert_same_pixels(input_image, expected_image, f"{source}/{case.name} encoder input")
            assert_same_pixels(image, before, f"{case.name}: input modified")
            tested += 1
    assert tested >= 20


@pytest.mark.parametrize("shape", [(540, 800), (512, 512), (100, 80), (37, 256)])
def test_preprocess_grey_layouts_agree(cv2, shape):
    # Grey input is (H, W) or (H, W, 1). Both must equal the reference on the image repeated to 3 channels.
    rng = np.random.default_rng(shape[0])
    grey = rng.integers(0, 256, size=shape, dtype=np.uint8)
    expected_image, expected_size = reference_preprocess(cv2, np.repeat(grey[:, :, None], 3, axis=2))
    for layout in (grey, grey[:, :, None]):
        input_image, input_size = preprocess_image(layout)
        assert input_size == expected_size
        assert_same_pixels(input_image, expected_image, f"grey {layout.shape}")


def test_preprocess_real_grey_image(cv2, cases):
    image, _ = cases("hc18_fetal_us")[0].load_image_and_boxes()  # grey stored as 3 equal channels
    grey = np.ascontiguousarray(image[:, :, 0])
    expected_image, expected_size = reference_preprocess(cv2, np.repeat(grey[:, :, None], 3, axis=2))
    input_image, input_size = preprocess_image(grey)
    assert input_size == expected_size
    assert_same_pixels(input_image, expected_image, "hc18 grey")


def _nan_image() -> np.ndarray:
    image = np.full((10, 10, 3), 0.5, dtype=np.float64)
    image[0, 0, 0] = np.nan
    image[1, 1, 1] = np.inf
    image[2, 2, 2] = -np.inf
    return image


@pytest.mark.parametrize(
    "image, error, words",
    [
        (np.zeros((10, 10, 4), np.uint8), ValueError, "alpha"),
        (np.zeros((10, 10, 2), np.uint8), ValueError, "1 or 3 channels"),
        (np.zeros((2, 10, 10, 3), np.uint8), ValueError, "shape"),
        (np.zeros((10,), np.uint8), ValueError, "shape"),
        (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
        (np.zeros((10, 10, 3), np.float32), TypeError, "uint8"),
        (np.zeros((10, 10), np.float64), TypeError, "astype(np.uint8)"),
        (np.zeros((10, 10, 3), np.bool_), TypeError, "uint8"),
        (np.zeros((10, 10), np.uint16), TypeError, "uint8"),
        (np.zeros((10, 10), np.int64), TypeError, "uint8"),
        (_nan_image(), ValueError, "3 non-finite"),
        ([[0, 1], [2, 3]], TypeError, "NumPy array"),
    ],
)
def test_preprocess_rejects_bad_input(image, error, words):
    before = np.array(image, copy=True)
    with pytest.raises(error) as raised:
        preprocess_image(image)
    assert words in str(raised.value)
    np.testing.assert_array_equal(np.asarray(image), before)


# ---- boxes ----


def reference_scale_box(box: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """The challenge script's loop: int() of each coordinate times 256 / max(H, W), in the box dtype."""
    scaled = np.zeros_like(box)
    ratio = 256 / max(original_size)
    for i in range(len(box)):
        scaled[i] = int(box[i] * ratio)
    return scaled


def test_scale_boxes_real_boxes(cases):
    tested = 0
    for source in IMAGE_SOURCES_2D:
        for case in cases(source):
            image, boxes = case.load_image_and_boxes()
            before = boxes.copy()
            scaled = scale_boxes_to_256(boxes, image.shape[:2])
            expected = np.stack([reference_scale_box(box, image.shape[:2]) for box in boxes])
            assert_same_pixels(scaled, expected, f"{case.name} boxes")
            assert_same_pixels(boxes, before, "boxes modified")
            tested += len(boxes)
    assert tested >= 200


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.float64])
def test_scale_boxes_random_boxes(dtype):
    rng = np.random.default_rng(909)
    for original_size in [(531, 570), (1920, 2560), (100, 77), (512, 512), (3, 700)]:
        boxes = (rng.uniform(-20, 1.1 * max(original_size), size=(25, 4))).astype(dtype)
        scaled = scale_boxes_to_256(boxes, original_size)
        expected = np.stack([reference_scale_box(box, original_size) for box in boxes])
        assert_same_pixels(scaled, expected, f"{np.dtype(dtype)} boxes in {original_size}")
        if np.issubdtype(dtype, np.floating):
            assert not np.signbit(scaled[scaled == 0]).any(), "a truncated small negative must be +0, as int() gives"


def test_scale_boxes_keeps_single_box_shape():
    scaled = scale_boxes_to_256(np.array([10, 20, 500, 400]), (512, 1024))
    assert scaled.shape == (4,)
    assert scaled.tolist() == [2, 5, 125, 100]


@pytest.mark.parametrize(
    "boxes, error, words",
    [
        (np.zeros((3, 3)), ValueError, "(N, 4)"),
        (np.zeros((2, 2, 4)), ValueError, "(N, 4)"),
        (np.array([[0.0, 1.0, np.nan, 3.0]]), ValueError, "NaN"),
        (np.zeros((1, 4), np.bool_), TypeError, "integers or floats"),
        (np.array([["a", "b", "c", "d"]]), TypeError, "integers or floats"),
        ([[0, 1, 2, 3]], TypeError, "NumPy array"),
    ],
)
def test_scale_boxes_rejects_bad_input(boxes, error, words):
    with pytest.raises(error) as raised:
        scale_boxes_to_256(boxes, (100, 100))
    assert words in str(raised.value)


def reference_box_from_mask(mask_256: np.ndarray) -> np.ndarray:
    """The challenge script's get_bbox256: extent of mask > 0 grown by 3, clipped to [0, 256]."""
    y_indices, x_indices = np.where(mask_256 > 0)
    height, width = mask_256.shape
    x_min = max(0, np.min(x_indices) - 3)
    x_max = min(width, np.max(x_indices) + 3)
    y_min = max(0, np.min(y_indices) - 3)
    y_max = min(height, np.max(y_indices) + 3)
    return np.array([x_min, y_min, x_max, y_max])


def test_box_from_mask_matches_reference():
    rng = np.random.default_rng(1010)
    for case in range(30):
        mask = np.zeros((256, 256), np.uint8)
        y0, x0 = (int(v) for v in rng.integers(0, 256, size=2))
        y1, x1 = (int(v) for v in rng.integers([y0, x0], 256, size=2))
        mask[y0 : y1 + 1, x0 : x1 + 1] = rng.integers(0, 2, size=(y1 - y0 + 1, x1 - x0 + 1)) * (case + 1)
        if not mask.any():
            continue
        before = mask.copy()
        assert_same_pixels(box_from_mask_256(mask), reference_box_from_mask(mask), f"mask {case}")
        assert_same_pixels(mask, before, "mask modified")


def test_box_from_mask_clips_at_256_and_0():
    mask = np.zeros((256, 256), np.uint8)
    mask[254:, 255] = 7
    assert box_from_mask_256(mask).tolist() == [252, 251, 256, 256]
    mask[:] = 0
    mask[1, 0] = 1
    assert box_from_mask_256(mask).tolist() == [0, 0, 3, 4]
    assert box_from_mask_256(mask.astype(bool)).tolist() == [0, 0, 3, 4]


def test_box_from_mask_empty_gives_none():
    assert box_from_mask_256(np.zeros((256, 256), np.uint8)) is None


def test_box_from_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="2D"):
        box_from_mask_256(np.zeros((1, 256, 256), np.uint8))
    with pytest.raises(ValueError, match="shift"):
        box_from_mask_256(np.ones((256, 256), np.uint8), shift=-1)
    with pytest.raises(ValueError, match="limit"):
        box_from_mask_256(np.ones((256, 256), np.uint8), limit=0)


def test_target_length_is_the_encoder_input_side():
    assert preprocessing.TARGET_LENGTH == 256
