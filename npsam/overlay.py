"""Overlay PNGs of segmentations and label maps written as visible PNG images.

An overlay draws each object k (label k, box row k - 1) over the image in its palette colour. It gets a
light translucent fill of its label region, its contour (the boundary band of that region) and its box
rectangle. Drawing is plain NumPy and scipy. Only writing a PNG needs Pillow, the optional `images`
extra (`pip install "npsam[images]"`), and Pillow is imported only inside the functions that write.

Palette. Row 0 is black (background). Labels 1..20 get the hand-picked colours of `BASE_COLOURS`.
Label k > 20 gets a generated colour: hue k * 0.618... (the golden-ratio conjugate) modulo 1,
saturation cycling through 0.95, 0.65, 0.8 and value alternating between 1.0 and 0.8 every three
labels. Every colour of labels 1..255 is distinct and none is dark. Above 255 labels, colours can
repeat for labels far apart, so an overlay or RGB label image shows objects but does not identify
them exactly.

Files written by `write_case_overlays(output_dir, case_name, ...)`:
- 2D: `<case_name>_overlay.png`, the whole image overlaid;
- 3D: `<case_name>_object<k>_z<z>.png` for each object k = 1..N (no zero padding), the axial slice z at
  the middle of its box with every object's contour and only box k, and `<case_name>_montage.png`, a
  grid of overlaid axial slices (see `axial_montage`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from npsam.output_files import check_output_path, write_atomically

__all__ = [
    "BASE_COLOURS",
    "DEFAULT_ALPHA",
    "MONTAGE_MAX_SIZE",
    "MONTAGE_MAX_TILES",
    "LabelImage",
    "label_palette",
    "default_line_width",
    "overlay_image",
    "middle_slice",
    "object_slice_overlays",
    "montage_slice_indices",
    "axial_montage",
    "label_map_image",
    "write_png",
    "write_label_png",
    "write_case_overlays",
]

logger = logging.getLogger(__name__)

PILLOW_INSTALL_HINT = 'pip install "npsam[images]"'

# Colours of labels 1..20, chosen to stay apart from each other and from grey-level images.
BASE_COLOURS = np.array(
    [
        (255, 64, 64),  # 1 red
        (64, 220, 64),  # 2 green
        (64, 128, 255),  # 3 blue
        (255, 220, 0),  # 4 yellow
        (255, 0, 255),  # 5 magenta
        (0, 230, 230),  # 6 cyan
        (255, 140, 0),  # 7 orange
        (150, 80, 255),  # 8 violet
        (170, 255, 130),  # 9 light green
        (255, 120, 180),  # 10 pink
        (0, 150, 110),  # 11 teal
        (200, 160, 80),  # 12 tan
        (120, 200, 255),  # 13 sky blue
        (190, 0, 80),  # 14 crimson
        (0, 255, 160),  # 15 spring green
        (180, 100, 30),  # 16 brown
        (255, 190, 140),  # 17 peach
        (0, 90, 200),  # 18 royal blue
        (140, 140, 0),  # 19 olive
        (200, 200, 255),  # 20 lavender
    ],
    dtype=np.uint8,
)
GOLDEN_RATIO_CONJUGATE = 0.6180339887498949
GENERATED_SATURATIONS = np.array([0.95, 0.65, 0.8])
GENERATED_VALUES = np.array([1.0, 0.8])

# Opacity of the translucent fill over each object's label region; contours and boxes are opaque.
DEFAULT_ALPHA = 0.3
# Image size in pixels (the longer side) per pixel of contour and box line width.
PIXELS_PER_LINE_WIDTH = 300

MONTAGE_MAX_TILES = 16
# Upper bound on the montage's width and height in pixels.
MONTAGE_MAX_SIZE = 2048
MONTAGE_GAP = 2  # black pixels between tiles

MAX_PALETTE_LABEL = 255  # the largest label a palettised ("P" mode) PNG can store


# ---- Palette ----


def label_palette(max_label: int) -> np.ndarray:
    """Return the (max_label + 1, 3) uint8 colours of labels 0..max_label; row 0 (background) is black.

    A label's colour does not depend on `max_label`, so palettes of different sizes agree on shared labels.
    """
    max_label = int(max_label)
    if max_label < 0:
        raise ValueError(f"max_label must be >= 0, got {max_label}")
    palette = np.zeros((max_label + 1, 3), dtype=np.uint8)
    num_base = min(max_label, len(BASE_COLOURS))
    palette[1 : num_base + 1] = BASE_COLOURS[:num_base]
    if max_label > len(BASE_COLOURS):
        palette[len(BASE_COLOURS) + 1 :] = _generated_colours(np.arange(len(BASE_COLOURS) + 1, max_label + 1))
    return palette


def _generated_colours(labels: np.ndarray) -> np.ndarray:
    """Return (N, 3) uint8 colours for labels above the base colours, from golden-ratio hue steps."""
    hue = (labels * GOLDEN_RATIO_CONJUGATE) % 1.0
    saturation = GENERATED_SATURATIONS[labels % len(GENERATED_SATURATIONS)]
    value = GENERATED_VALUES[(labels // 3) % len(GENERATED_VALUES)]
    return _hsv_to_rgb(hue, saturation, value)


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    sector = np.floor(hue * 6.0).astype(np.int64) % 6
    fraction = hue * 6.0 - np.floor(hue * 6.0)
    low = value * (1.0 - saturation)
    falling = value * (1.0 - saturation * fraction)
    rising = value * (1.0 - saturation * (1.0 - fraction))
    red = np.choose(sector, [value, falling, low, low, rising, value])
    green = np.choose(sector, [rising, value, value, falling, low, low])
    blue = np.choose(sector, [low, low, rising, value, value, falling])
    return np.rint(np.stack([red, green, blue], axis=1) * 255.0).astype(np.uint8)  # (N, 3)


# ---- Input checks ----


def _as_rgb(image, name: str = "image") -> np.ndarray:
    """Return a new (H, W, 3) uint8 copy of a grey (H, W) or RGB (H, W, 3) uint8 image."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (the challenge format), got {image.dtype}; scale it to 0..255 first")
    if image.ndim == 2:
        rgb = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 3:
        rgb = image.copy()
    else:
        raise ValueError(f"{name} must have shape (H, W) or (H, W, 3), got {image.shape}")
    if rgb.size == 0:
        raise ValueError(f"{name} of shape {image.shape} is empty")
    return rgb


def _check_labels(labels, shape: tuple[int, ...]) -> np.ndarray | None:
    """Return `labels` as a non-negative integer array of `shape` (not copied), or None."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer label map (0 background, k for object k), got {labels.dtype}")
    if labels.shape != shape:
        raise ValueError(f"labels have shape {labels.shape}, but the image needs {shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, found {labels.min()}")
    return labels


def _check_boxes(boxes, width: int) -> np.ndarray:
    """Return boxes as a new float64 (N, width) array; None or an empty array gives N = 0."""
    if boxes is None:
        return np.zeros((0, width))
    array = np.asarray(boxes)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"boxes must be integers or floats, got dtype {array.dtype}")
    if array.size == 0:
        return np.zeros((0, width))
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != width:
        layout = "[x_min, y_min, x_max, y_max]" if width == 4 else "[x_min, y_min, z_min, x_max, y_max, z_max]"
        raise ValueError(f"boxes must have shape (N, {width}) as {layout}, got {np.shape(boxes)}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        index = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"box {index + 1} {array[index].tolist()} contains NaN or infinity")
    return array


def _xy_boxes(boxes: np.ndarray) -> np.ndarray:
    """Return the (N, 4) [x_min, y_min, x_max, y_max] part of 2D (N, 4) or 3D (N, 6) boxes."""
    return boxes[:, [0, 1, 3, 4]] if boxes.shape[1] == 6 else boxes


def _z_ranges(boxes: np.ndarray) -> np.ndarray:
    """Return the (N, 2) integer [z_min, z_max] of 3D boxes, rounded, with reversed ends swapped."""
    z = np.rint(boxes[:, [2, 5]]).astype(np.int64)
    return np.sort(z, axis=1)


# ---- 2D overlay ----


def default_line_width(height: int, width: int) -> int:
    """Return the contour and box line width in pixels: 1 up to 449 px, then 1 more per 300 px."""
    return max(1, (max(height, width) + PIXELS_PER_LINE_WIDTH // 2) // PIXELS_PER_LINE_WIDTH)


def overlay_image(image, labels=None, boxes=None, *, alpha: float = DEFAULT_ALPHA, line_width: int | None = None) -> np.ndarray:
    """Draw each object's fill, contour and box in its palette colour over a 2D image.

    `image` is (H, W) grey (replicated to RGB) or (H, W, 3) RGB, uint8. `labels` is an (H, W) label
    map or None. `boxes` is None, (N, 4) [x_min, y_min, x_max, y_max] or (N, 6) 3D boxes, of which
    the x/y extent is drawn. Coordinates are inclusive pixel indices. Box row i gets the colour of
    label i + 1.

    Each pixel of label k > 0 becomes round((1 - alpha) * pixel + alpha * colour k). Then contour pixels
    (label k pixels with a pixel of another label, or the image edge, within `line_width` pixels in
    x or y) become colour k. Last, each box is drawn as a rectangle `line_width` pixels wide inside its
    extent, later boxes over earlier ones. Boxes are rounded, reversed corners swapped and clipped to
    the image, so a box partly outside shows its edge on the image border. A box entirely outside the
    image is skipped. `line_width` None chooses `default_line_width(H, W)`. Inputs are not modified.
    Returns a new (H, W, 3) uint8 image.
    """
    rgb = _as_rgb(image)
    labels = _check_labels(labels, rgb.shape[:2])
    box_columns = 6 if np.ndim(boxes) >= 1 and np.shape(boxes)[-1] == 6 else 4
    boxes = _xy_boxes(_check_boxes(boxes, box_columns))
    box_labels = np.arange(1, len(boxes) + 1)
    return _draw_overlay(rgb, labels, boxes, box_labels, alpha=alpha, line_width=line_width)


def _draw_overlay(rgb, labels, boxes, box_labels, *, alpha: float, line_width: int | None) -> np.ndarray:
    """Draw on `rgb` (H, W, 3) uint8 in place and return it; `boxes` are (N, 4), `box_labels` (N,)."""
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be between 0 and 1 (fill opacity), got {alpha}")
    height, width = rgb.shape[:2]
    if line_width is None:
        line_width = default_line_width(height, width)
    if int(line_width) < 1:
        raise ValueError(f"line_width must be at least 1 pixel, got {line_width}")
    line_width = int(line_width)

    max_label = int(labels.max()) if labels is not None and labels.size else 0
    max_label = max(max_label, int(box_labels.max()) if len(box_labels) else 0)
    palette = label_palette(max_label)

    if labels is not None and max_label > 0:
        _fill_objects(rgb, labels, palette, float(alpha))
        _draw_contours(rgb, labels, palette, line_width)
    for box, label in zip(boxes, box_labels):
        _draw_box(rgb, box, palette[label], line_width)
    return rgb


def _fill_objects(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float) -> None:
    if alpha == 0.0:
        return
    inside = labels > 0
    pixels = rgb[inside].astype(np.float32)  # (M, 3)
    colours = palette[labels[inside]].astype(np.float32)
    blended = np.float32(1.0 - alpha) * pixels + np.float32(alpha) * colours
    rgb[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _draw_contours(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, line_width: int) -> None:
    # A pixel is on its object's contour when the window of radius line_width around it contains another
    # label. cval=0 outside the image gives objects that touch the image edge a contour there too.
    window = 2 * line_width + 1
    highest = ndimage.maximum_filter(labels, size=window, mode="constant", cval=0)
    lowest = ndimage.minimum_filter(labels, size=window, mode="constant", cval=0)
    contour = (labels > 0) & ((highest != labels) | (lowest != labels))
    rgb[contour] = palette[labels[contour]]


def _draw_box(rgb: np.ndarray, box: np.ndarray, colour: np.ndarray, line_width: int) -> None:
    height, width = rgb.shape[:2]
    x_min, y_min, x_max, y_max = np.rint(box).astype(np.int64)
    x_min, x_max = sorted((x_min, x_max))
    y_min, y_max = sorted((y_min, y_max))
    if x_max < 0 or y_max < 0 or x_min > width - 1 or y_min > height - 1:
        logger.debug("box %s lies outside the %dx%d image; not drawn", box.tolist(), width, height)
        return
    x_min, x_max = max(x_min, 0), min(x_max, width - 1)
    y_min, y_max = max(y_min, 0), min(y_max, height - 1)

    # Each edge is line_width pixels wide inside the box, so thick lines never leave the box.
    rgb[y_min : min(y_min + line_width, y_max + 1), x_min : x_max + 1] = colour
    rgb[max(y_max - line_width + 1, y_min) : y_max + 1, x_min : x_max + 1] = colour
    rgb[y_min : y_max + 1, x_min : min(x_min + line_width, x_max + 1)] = colour
    rgb[y_min : y_max + 1, max(x_max - line_width + 1, x_min) : x_max + 1] = colour


# ---- 3D overlays ----


def _check_volume(volume) -> np.ndarray:
    """Return `volume` unchanged after checking it is (D, H, W) or (D, H, W, 3) uint8."""
    if not isinstance(volume, np.ndarray):
        raise TypeError(f"volume must be a NumPy array, got {type(volume).__name__}")
    if not (volume.ndim == 3 or (volume.ndim == 4 and volume.shape[3] == 3)):
        raise ValueError(f"volume must have shape (D, H, W) or (D, H, W, 3), got {volume.shape}")
    if volume.dtype != np.uint8:
        raise ValueError(f"volume must be uint8 (the challenge format), got {volume.dtype}; scale it to 0..255 first")
    if volume.size == 0:
        raise ValueError(f"volume of shape {volume.shape} is empty")
    return volume


def middle_slice(z_min: int, z_max: int, depth: int) -> int:
    """Return z_min + (z_max - z_min) // 2, the slice where the challenge's 3D propagation starts,
    clipped to 0..depth - 1."""
    z_min, z_max = sorted((int(z_min), int(z_max)))
    return min(max(z_min + (z_max - z_min) // 2, 0), depth - 1)


def object_slice_overlays(volume, labels, boxes, *, alpha: float = DEFAULT_ALPHA) -> list[tuple[int, np.ndarray]]:
    """Overlay, for each object, the axial slice in the middle of its box.

    `volume` is (D, H, W) or (D, H, W, 3) uint8, `labels` (D, H, W) or None, `boxes` (N, 6)
    [x_min, y_min, z_min, x_max, y_max, z_max] with inclusive indices. Object k = i + 1 of box row i
    gets slice z = `middle_slice(z_min, z_max, D)`, drawn by `overlay_image` with the contours of every
    label on that slice and only box i. Returns [(z, (H, W, 3) uint8)] in box order, one per box.
    """
    volume = _check_volume(volume)
    labels = _check_labels(labels, volume.shape[:3])
    boxes = _check_boxes(boxes, 6)
    z_ranges = _z_ranges(boxes)

    overlays = []
    for index, (z_min, z_max) in enumerate(z_ranges):
        z = middle_slice(z_min, z_max, volume.shape[0])
        slice_labels = None if labels is None else labels[z]
        rgb = _draw_overlay(
            _as_rgb(volume[z], "volume slice"), slice_labels, _xy_boxes(boxes[index : index + 1]),
            np.array([index + 1]), alpha=alpha, line_width=None,
        )
        overlays.append((z, rgb))
    return overlays


def montage_slice_indices(depth: int, labels=None, boxes=None, *, max_tiles: int = MONTAGE_MAX_TILES) -> np.ndarray:
    """Return the axial slice indices of a montage: up to `max_tiles` evenly spaced, increasing.

    The slices span the z range that contains a labelled voxel or a box (boxes clipped to 0..D-1),
    ends included, or the whole volume when there is neither.
    """
    if int(max_tiles) < 1:
        raise ValueError(f"max_tiles must be at least 1, got {max_tiles}")
    ends = []
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 3 or labels.shape[0] != depth:
            raise ValueError(f"labels must be (D, H, W) with D = {depth} slices, got shape {labels.shape}")
        labelled = np.flatnonzero(labels.reshape(depth, -1).any(axis=1))
        if labelled.size:
            ends += [int(labelled[0]), int(labelled[-1])]
    if boxes is not None and len(boxes):
        z_ranges = np.clip(_z_ranges(_check_boxes(boxes, 6)), 0, depth - 1)
        ends += [int(z_ranges.min()), int(z_ranges.max())]
    first, last = (min(ends), max(ends)) if ends else (0, depth - 1)

    count = min(int(max_tiles), last - first + 1)
    # Steps of at least one slice round to distinct indices.
    return np.rint(np.linspace(first, last, count)).astype(np.int64)


def axial_montage(
    volume, labels=None, boxes=None, *, max_tiles: int = MONTAGE_MAX_TILES, max_size: int = MONTAGE_MAX_SIZE,
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """Return a grid of overlaid axial slices as an (H', W', 3) uint8 image.

    The slices are `montage_slice_indices(D, labels, boxes, max_tiles=max_tiles)`, placed row by row in
    increasing z on a grid of ceil(sqrt(n)) columns, with `MONTAGE_GAP` black pixels between tiles.
    Each tile is the slice overlaid with every label's contour and the boxes whose z range contains it.
    It is then shrunk by the smallest integer factor f that keeps H' and W' at most `max_size`, taking
    the mean of each f x f block, so tiles are ceil(H / f) x ceil(W / f). Contours and boxes are drawn f times thicker
    before shrinking, so they stay visible. Each tile's slice index is written in white on black in its
    top-left corner.
    """
    volume = _check_volume(volume)
    labels = _check_labels(labels, volume.shape[:3])
    boxes = _check_boxes(boxes, 6)
    depth, height, width = volume.shape[:3]
    indices = montage_slice_indices(depth, labels, boxes, max_tiles=max_tiles)

    columns = math.ceil(math.sqrt(len(indices)))
    rows = math.ceil(len(indices) / columns)
    factor = _montage_factor(height, width, rows, columns, int(max_size))
    tile_height, tile_width = -(-height // factor), -(-width // factor)
    line_width = default_line_width(tile_height, tile_width) * factor
    montage = np.zeros(
        (rows * tile_height + (rows - 1) * MONTAGE_GAP, columns * tile_width + (columns - 1) * MONTAGE_GAP, 3),
        dtype=np.uint8,
    )

    z_ranges = _z_ranges(boxes)
    for position, z in enumerate(indices):
        on_slice = (z_ranges[:, 0] <= z) & (z <= z_ranges[:, 1])
        tile = _draw_overlay(
            _as_rgb(volume[z], "volume slice"), None if labels is None else labels[z],
            _xy_boxes(boxes[on_slice]), np.flatnonzero(on_slice) + 1, alpha=alpha, line_width=line_width,
        )
        tile = _shrink(tile, factor)
        _write_number(tile, int(z))
        top = (position // columns) * (tile_height + MONTAGE_GAP)
        left = (position % columns) * (tile_width + MONTAGE_GAP)
        montage[top : top + tile_height, left : left + tile_width] = tile
    return montage


def _montage_factor(height: int, width: int, rows: int, columns: int, max_size: int) -> int:
    """Return the smallest integer shrink factor that keeps the montage within max_size x max_size."""
    for factor in range(1, max(height, width) + 1):
        montage_height = rows * -(-height // factor) + (rows - 1) * MONTAGE_GAP
        montage_width = columns * -(-width // factor) + (columns - 1) * MONTAGE_GAP
        if montage_height <= max_size and montage_width <= max_size:
            return factor
    raise ValueError(
        f"max_size {max_size} is too small for a {rows}x{columns} montage even with 1-pixel tiles; "
        f"raise max_size or lower max_tiles"
    )


def _shrink(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Shrink (H, W, 3) uint8 by an integer factor with a block mean; the edges are padded by repetition."""
    if factor == 1:
        return rgb
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -height % factor), (0, -width % factor), (0, 0)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor, 3)
    return np.rint(blocks.mean(axis=(1, 3), dtype=np.float32)).astype(np.uint8)  # (ceil(H/f), ceil(W/f), 3)


# 3x5 bitmaps of the digits 0-9, one string of 15 cells per digit, row by row.
_DIGIT_BITMAPS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111",
}


def _write_number(rgb: np.ndarray, number: int) -> None:
    """Write `number` in white 3x5-cell digits on a black box in the top-left corner of `rgb`, in place."""
    height, width = rgb.shape[:2]
    scale = max(1, min(height, width) // 100)
    text = str(number)
    cells = np.zeros((5, 4 * len(text) - 1), dtype=bool)
    for position, digit in enumerate(text):
        cells[:, 4 * position : 4 * position + 3] = np.array(list(_DIGIT_BITMAPS[digit]), dtype=int).reshape(5, 3) == 1
    glyphs = np.kron(cells, np.ones((scale, scale), dtype=bool))

    # One cell of black margin around the digits; clipped on tiles too small to contain them.
    box_height = min(glyphs.shape[0] + 2 * scale, height)
    box_width = min(glyphs.shape[1] + 2 * scale, width)
    rgb[:box_height, :box_width] = 0
    visible = glyphs[: max(box_height - scale, 0), : max(box_width - scale, 0)]
    region = rgb[scale : scale + visible.shape[0], scale : scale + visible.shape[1]]
    region[visible] = 255


# ---- Label map images ----


class LabelImage(NamedTuple):
    """A label map ready to save as a PNG.

    `mode` "P": `pixels` is (H, W) uint8 with pixel value = label and `palette` the (max_label + 1, 3)
    colours. `mode` "RGB" (more than 255 labels): `pixels` is (H, W, 3) uint8, each pixel its label's
    palette colour, and `palette` lists the colours used.
    """

    pixels: np.ndarray
    palette: np.ndarray
    mode: str


def label_map_image(labels) -> LabelImage:
    """Turn an (H, W) label map into a visible image: palettised up to label 255, RGB colours above.

    Up to label 255 the pixel values are the labels themselves, so a reader recovers the labels exactly,
    and the palette makes them visible (background black, label k `label_palette` colour k). Above 255
    a PNG palette cannot hold every label, so each pixel gets its label's colour. Those colours can
    repeat for labels far apart; the exact labels are in the `segs` file. `labels` is not modified.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"labels must be a 2D (H, W) label map, got shape {labels.shape}; for a 3D label map write one "
            f"axial slice, labels[z]"
        )
    labels = _check_labels(labels, labels.shape)
    if labels.size == 0:
        raise ValueError(f"labels of shape {labels.shape} are empty")
    max_label = int(labels.max())
    palette = label_palette(max(max_label, 1))
    if max_label <= MAX_PALETTE_LABEL:
        return LabelImage(labels.astype(np.uint8), palette, "P")
    return LabelImage(palette[labels], palette, "RGB")


# ---- PNG writing ----


def _import_pillow():
    """Return the PIL.Image module, or raise ImportError naming the extra to install."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            f"writing PNG images needs Pillow, which is not installed; install it with {PILLOW_INSTALL_HINT}"
        ) from error
    return Image


def write_png(path, rgb, *, overwrite: bool = True, input_path=None) -> Path:
    """Write an (H, W, 3) RGB or (H, W) grey uint8 image to `path` as a PNG, atomically.

    The PNG goes to a temporary file in the same folder first. With `overwrite` it then replaces `path`
    (os.replace). Without it, it is hard-linked to `path`, which raises FileExistsError if `path`
    exists (NOTE: so overwrite=False needs a file system with hard links). Either way a crash leaves no partial PNG at `path`, and the temporary file is removed.
    Raises ValueError when `path` is `input_path`, FileNotFoundError when the folder is missing and
    ImportError when Pillow is missing. Returns `path`.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or not (
        rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)
    ):
        raise ValueError(
            f"rgb must be a uint8 array of shape (H, W, 3) or (H, W), got {type(rgb).__name__} "
            f"{getattr(rgb, 'dtype', None)} {getattr(rgb, 'shape', None)}"
        )
    image_module = _import_pillow()
    image = image_module.fromarray(np.ascontiguousarray(rgb))
    return _save_png(image, Path(path), overwrite=overwrite, input_path=input_path)


def write_label_png(path, labels, *, overwrite: bool = True, input_path=None) -> Path:
    """Write an (H, W) label map as a visible PNG (see `label_map_image`), atomically as `write_png`.

    Up to label 255 the PNG is palettised (mode "P"), and reading it back gives the labels exactly.
    Above 255 it is an RGB PNG of label colours. Returns `path`.
    """
    label_image = label_map_image(labels)
    image_module = _import_pillow()
    image = image_module.fromarray(np.ascontiguousarray(label_image.pixels))
    if label_image.mode == "P":
        image.putpalette(label_image.palette.ravel().tolist(), rawmode="RGB")
    return _save_png(image, Path(path), overwrite=overwrite, input_path=input_path)


def _save_png(image, path: Path, *, overwrite: bool, input_path) -> Path:
    check_output_path(path, input_path, content="the image")
    return write_atomically(path, lambda temporary: image.save(temporary, format="PNG"), overwrite=overwrite)


def write_case_overlays(
    output_dir, case_name: str, image, labels, boxes, is_3d: bool, *, alpha: float = DEFAULT_ALPHA, input_path=None,
) -> list[Path]:
    """Write the overlay PNGs of one case into `output_dir` and return their paths in writing order.

    2D: `image` (H, W) or (H, W, 3), `labels` (H, W), `boxes` (N, 4); writes `<case_name>_overlay.png`.
    3D: `image` (D, H, W) or (D, H, W, 3), `labels` (D, H, W), `boxes` (N, 6); writes
    `<case_name>_object<k>_z<z>.png` for k = 1..N (see `object_slice_overlays`), then
    `<case_name>_montage.png` (see `axial_montage`). `labels` may be None to draw boxes only, and
    `boxes` may be None or empty. `output_dir` must exist. Files of the same name are replaced, except
    `input_path` (the case file), which raises ValueError. The arrays are not modified. Raises ValueError for a `case_name` that contains a folder and ImportError
    when Pillow is missing (before anything is drawn).
    """
    output_dir = Path(output_dir)
    if not case_name or Path(case_name).name != case_name or case_name in (".", ".."):
        raise ValueError(f"case_name must be a plain file-name stem without folders, got {case_name!r}")
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output folder {output_dir} not found; create it before writing overlays")
    _import_pillow()

    if not is_3d:
        overlay = overlay_image(image, labels, boxes, alpha=alpha)
        written = [write_png(output_dir / f"{case_name}_overlay.png", overlay, input_path=input_path)]
    else:
        written = []
        for index, (z, overlay) in enumerate(object_slice_overlays(image, labels, boxes, alpha=alpha)):
            path = output_dir / f"{case_name}_object{index + 1}_z{z}.png"
            written.append(write_png(path, overlay, input_path=input_path))
        montage = axial_montage(image, labels, boxes, alpha=alpha)
        written.append(write_png(output_dir / f"{case_name}_montage.png", montage, input_path=input_path))

    for path in written:
        logger.info("wrote overlay %s", path)
    return written
