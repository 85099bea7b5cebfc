"""SAM prompt encoder for box prompts: boxes to sparse and dense prompt embeddings.

Only boxes are supported, so the mask branch and the point embeddings 0, 1 and "not a point" of the
checkpoint are never read.
"""

from __future__ import annotations

import numpy as np

__all__ = ["positional_encoding", "dense_positional_encoding", "encode_boxes"]

TWO_PI = np.float32(2 * np.pi)


def positional_encoding(coords: np.ndarray, gaussian_matrix: np.ndarray) -> np.ndarray:
    """Random Fourier features of coordinates in [0, 1]: (..., 2) -> (..., 2F) as [sin | cos]."""
    coords = 2 * coords - 1  # map [0, 1] to [-1, 1]
    projected = coords @ gaussian_matrix  # (..., F)
    projected = TWO_PI * projected
    return np.concatenate([np.sin(projected), np.cos(projected)], axis=-1)


def dense_positional_encoding(gaussian_matrix: np.ndarray, grid_size: int) -> np.ndarray:
    """Positional encoding of every image-embedding cell centre, as (grid_size * grid_size, 2F) tokens.

    Cell (row i, column j) sits at ((j + 0.5) / grid, (i + 0.5) / grid), x first. The token index is
    i * grid_size + j, the same row-major order as the flattened image embedding.
    """
    centres = (np.arange(grid_size, dtype=np.float32) + np.float32(0.5)) / np.float32(grid_size)
    xs = np.broadcast_to(centres[None, :], (grid_size, grid_size))
    ys = np.broadcast_to(centres[:, None], (grid_size, grid_size))
    coords = np.stack([xs, ys], axis=-1).reshape(-1, 2)  # (grid*grid, 2)
    return positional_encoding(coords, gaussian_matrix)


def encode_boxes(boxes_256: np.ndarray, gaussian_matrix, corner_embeddings, image_size: int) -> np.ndarray:
    """Embed boxes given in the model's input frame as two corner tokens each: (B, 4) -> (B, 2, E).

    The +0.5 moves each coordinate to its pixel centre. Both axes are divided by the padded input size
    (`image_size`), not by the resized image's size, as the reference does.
    """
    corners = (boxes_256.astype(np.float32) + np.float32(0.5)).reshape(-1, 2, 2)  # (B, 2 corners, xy)
    corners = corners / np.float32(image_size)
    embeddings = positional_encoding(corners, gaussian_matrix)  # (B, 2, E)
    embeddings += corner_embeddings  # (2, E): point_embeddings.2 for the top-left, .3 for the bottom-right
    return embeddings
