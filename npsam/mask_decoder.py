"""SAM mask decoder: two-way transformer, upscaling, hypernetwork and IoU head.

npsam always decodes with `multimask_output=False`, the setting of the challenge pipeline: only the
first mask token's mask and IoU prediction are returned. The other three mask tokens still pass through
the transformer because every token attends to every other one.
"""

from __future__ import annotations

import numpy as np

from npsam import kernels
from npsam.config import ModelConfig
from npsam.transformer import linear, two_way_transformer

__all__ = ["decode_masks"]

UPSCALING_LN_EPS = 1e-6  # SAM's LayerNorm2d


def mlp(x, layers):
    """Hypernetwork / IoU head MLP: Linear layers with ReLU between them, none after the last."""
    for index, layer in enumerate(layers):
        x = linear(x, layer)
        if index < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def upscaled_logits(image_tokens, upscaling, hyper_in, grid_size, token_rows=None, token_cols=None):
    """Mask logits of one box: its (L, 256) image tokens upscaled 4x and weighted by its (32,) hyper_in.

    The tokens pass two transposed convolutions with kernel 2 and stride 2. LayerNorm2d and GELU follow
    the first and GELU the second, and the product with the hypernetwork output gives the (4*grid,
    4*grid) float32 logits. Kernel and stride are equal, so output blocks do not overlap and each
    convolution is one GEMM with its weight laid out as (Cin, 2 * 2 * Cout).
    Each step's scatter, bias and activations are fused with the next read, so the (4g, 4g, 32)
    features are never stored.
    Each token feeds only its own 4x4 block of logits, so with `token_rows` and `token_cols` only the
    top-left (token_rows, token_cols) tokens are upscaled and the logits are (4 * token_rows,
    4 * token_cols), equal to that corner of the full logits.
    """
    first, norm, second = upscaling["0"], upscaling["1"], upscaling["3"]
    rows = grid_size if token_rows is None else token_rows
    cols = grid_size if token_cols is None else token_cols
    tokens = image_tokens.reshape(grid_size, grid_size, -1)[:rows, :cols].reshape(rows * cols, -1)  # (P, E)
    blocks = (tokens @ first["weight"]).reshape(rows, cols, -1)  # (rows, cols, 2*2*64)
    x = kernels.upscale_norm_gelu(blocks, first["bias"], norm["weight"], norm["bias"], UPSCALING_LN_EPS)
    blocks = (x.reshape(4 * rows * cols, -1) @ second["weight"]).reshape(2 * rows, 2 * cols, -1)  # (2 rows, 2 cols, 2*2*32)
    return kernels.upscale_gelu_project(blocks, second["bias"], np.ascontiguousarray(hyper_in, dtype=np.float32))


def decode_masks(
    image_side, sparse_prompt_embeddings: np.ndarray, params, config: ModelConfig, valid_size=None
) -> tuple[np.ndarray, np.ndarray]:
    """Predict one low-resolution mask per box.

    image_side: `transformer.prepare_image_side` of one image's tokens (image embedding plus the dense
    no-mask embedding) and positional encoding. sparse_prompt_embeddings: (B, 2, E) box corner tokens.
    valid_size: None, or the (h, w) corner of the logits that the caller reads (the resized image
    before padding); then only that corner, rounded up to whole tokens, is upscaled.
    Returns low_res_logits (B, 1, 256, 256), or (B, 1, 4 * ceil(h / 4), 4 * ceil(w / 4)) with
    `valid_size`, and iou_predictions (B, 1).
    """
    batch = sparse_prompt_embeddings.shape[0]
    output_tokens = params["output_tokens"]  # (1 + mask tokens, E): IoU token first
    tokens = np.concatenate(
        [np.broadcast_to(output_tokens, (batch, *output_tokens.shape)), sparse_prompt_embeddings], axis=1
    )  # (B, T, E)

    # Only the IoU token and mask token 0 are read after the transformer.
    hidden_states, image_tokens = two_way_transformer(
        image_side, tokens, params["transformer"], config.decoder_num_heads, output_tokens=2
    )
    iou_token_out = hidden_states[:, 0]  # (B, E)
    mask_token_out = hidden_states[:, 1]  # (B, E): mask token 0 only (multimask_output=False)

    hyper_in = mlp(mask_token_out, params["output_hypernetworks_mlps"]["0"]["layers"])  # (B, 32)
    grid = config.image_embedding_size
    token_rows, token_cols = _valid_tokens(valid_size, grid)
    low_res_logits = np.stack(
        [
            upscaled_logits(image_tokens[b], params["output_upscaling"], hyper_in[b], grid, token_rows, token_cols)
            for b in range(batch)
        ]
    )[:, None]  # (B, 1, 4 * token_rows, 4 * token_cols)

    iou_predictions = mlp(iou_token_out, params["iou_prediction_head"]["layers"])[:, :1]  # (B, 1)
    return low_res_logits, iou_predictions


def _valid_tokens(valid_size, grid: int) -> tuple[int, int]:
    """Token rows and columns whose 4x4 logit blocks cover `valid_size` = (h, w) logits; the whole grid for None."""
    if valid_size is None:
        return grid, grid
    height, width = (int(value) for value in valid_size)
    if not (0 < height <= 4 * grid and 0 < width <= 4 * grid):
        raise ValueError(f"valid_size must lie within the ({4 * grid}, {4 * grid}) logits, got {(height, width)}")
    return -(-height // 4), -(-width // 4)
