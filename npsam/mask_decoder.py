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


def conv_transpose_2x2(x, conv):
    """Transposed convolution with kernel 2 and stride 2 on (B, H, W, Cin) -> (B, 2H, 2W, Cout).

    Kernel and stride are equal, so output blocks do not overlap and the whole layer is one GEMM with the
    weight laid out as (Cin, 2 * 2 * Cout).
    """
    batch, height, width, _ = x.shape
    out_channels = conv["bias"].shape[0]
    out = x.reshape(-1, x.shape[-1]) @ conv["weight"]  # (B*H*W, 2*2*Cout) ordered (a, b, o)
    out = out.reshape(batch, height, width, 2, 2, out_channels)
    out = out.transpose(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, out_channels)
    out += conv["bias"]
    return out


def upscale(image_tokens, upscaling, grid_size):
    """(B, L, 256) image tokens to (B, 4*grid, 4*grid, 32) per-pixel mask features."""
    batch, _, channels = image_tokens.shape
    x = image_tokens.reshape(batch, grid_size, grid_size, channels)
    x = conv_transpose_2x2(x, upscaling["0"])  # (B, 2g, 2g, 64)
    shape = x.shape
    x = kernels.layer_norm(x.reshape(-1, shape[-1]), upscaling["1"]["weight"], upscaling["1"]["bias"], UPSCALING_LN_EPS)
    kernels.gelu_inplace(x)
    x = conv_transpose_2x2(x.reshape(shape), upscaling["3"])  # (B, 4g, 4g, 32)
    kernels.gelu_inplace(x)
    return x


def decode_masks(image_side, sparse_prompt_embeddings: np.ndarray, params, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Predict one low-resolution mask per box.

    image_side: `transformer.prepare_image_side` of one image's tokens (image embedding plus the dense
    no-mask embedding) and positional encoding. sparse_prompt_embeddings: (B, 2, E) box corner tokens.
    Returns low_res_logits (B, 1, 256, 256) and iou_predictions (B, 1).
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

    features = upscale(image_tokens, params["output_upscaling"], config.image_embedding_size)  # (B, S, S, 32)
    hyper_in = mlp(mask_token_out, params["output_hypernetworks_mlps"]["0"]["layers"])  # (B, 32)
    size = features.shape[1]
    low_res_logits = np.matmul(features.reshape(batch, size * size, -1), hyper_in[:, :, None])  # (B, S*S, 1)
    low_res_logits = low_res_logits.reshape(batch, 1, size, size)

    iou_predictions = mlp(iou_token_out, params["iou_prediction_head"]["layers"])[:, :1]  # (B, 1)
    return low_res_logits, iou_predictions
