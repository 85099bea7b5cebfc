"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Shapes: `queries` (B, T, E) are the output and prompt tokens of B boxes; `keys` are the image tokens,
either (L, E) shared by every box (the image embedding before the first layer changes it) or (B, L, E).
Work on shared keys is done once, not once per box.
"""

from __future__ import annotations

import numpy as np

from npsam import kernels

__all__ = ["two_way_transformer"]

LN_EPS = 1e-5


def linear(x, weights):
    """Linear layer with weights stored as (in, out): (..., in) -> (..., out)."""
    return x @ weights["weight"] + weights["bias"]


def layer_norm(x, norm):
    shape = x.shape
    out = kernels.layer_norm(np.ascontiguousarray(x).reshape(-1, shape[-1]), norm["weight"], norm["bias"], LN_EPS)
    return out.reshape(shape)


def softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-1, keepdims=True)
    return logits


def split_heads(x, num_heads):
    """(..., N, D) -> (..., heads, N, D / heads), heads taken as contiguous channel chunks."""
    *lead, tokens, dim = x.shape
    return np.swapaxes(x.reshape(*lead, tokens, num_heads, dim // num_heads), -2, -3)


def merge_heads(x):
    """(..., heads, N, d) -> (..., N, heads * d)."""
    *lead, heads, tokens, head_dim = x.shape
    return np.swapaxes(x, -2, -3).reshape(*lead, tokens, heads * head_dim)


def attention(q, k, v, q_proj, k_proj, v_proj, out_proj, num_heads):
    """SAM attention: project, split heads, softmax(q k^T / sqrt(head dim)) v, merge heads, project out.

    `k` and `v` may lack the batch axis of `q` (shared image tokens); broadcasting then projects them once.
    """
    q = split_heads(linear(q, q_proj), num_heads)  # (B, h, Nq, d)
    k = split_heads(linear(k, k_proj), num_heads)  # ([B,] h, Nk, d)
    v = split_heads(linear(v, v_proj), num_heads)  # ([B,] h, Nk, d)
    head_dim = q.shape[-1]

    logits = q @ np.swapaxes(k, -1, -2)  # (B, h, Nq, Nk)
    logits /= np.float32(np.sqrt(head_dim))
    out = softmax(logits) @ v  # (B, h, Nq, d)
    return linear(merge_heads(out), out_proj)


def two_way_layer(queries, keys, query_pe, key_pe, layer, num_heads, skip_first_layer_pe):
    """One two-way block: self-attention, token-to-image, MLP, image-to-token, each followed by a norm."""
    # Self-attention of the tokens. The first layer has neither positional encoding nor residual.
    if skip_first_layer_pe:
        queries = attention(queries, queries, queries, **layer["self_attn"], num_heads=num_heads)
    else:
        q = queries + query_pe
        queries = queries + attention(q, q, queries, **layer["self_attn"], num_heads=num_heads)
    queries = layer_norm(queries, layer["norm1"])

    # Tokens attend to the image.
    q = queries + query_pe
    k = keys + key_pe
    queries = queries + attention(q, k, keys, **layer["cross_attn_token_to_image"], num_heads=num_heads)
    queries = layer_norm(queries, layer["norm2"])

    # MLP with ReLU on the tokens.
    hidden = np.maximum(linear(queries, layer["mlp"]["lin1"]), 0)
    queries = queries + linear(hidden, layer["mlp"]["lin2"])
    queries = layer_norm(queries, layer["norm3"])

    # The image attends to the tokens; from here on the image tokens differ per box.
    k_tokens = queries + query_pe
    keys = keys + attention(keys + key_pe, k_tokens, queries, **layer["cross_attn_image_to_token"], num_heads=num_heads)
    keys = layer_norm(keys, layer["norm4"])
    return queries, keys


def two_way_transformer(image_tokens, image_pe, point_tokens, params, num_heads):
    """Run the decoder transformer.

    image_tokens: (L, E) image embedding plus dense prompt embedding, shared by all boxes.
    image_pe: (L, E) dense positional encoding. point_tokens: (B, T, E) output tokens then prompt tokens.
    Returns the updated tokens (B, T, E) and image tokens (B, L, E).
    """
    queries = point_tokens
    keys = image_tokens
    for index, layer in enumerate(params["layers"]):
        queries, keys = two_way_layer(
            queries, keys, point_tokens, image_pe, layer, num_heads, skip_first_layer_pe=index == 0
        )

    q = queries + point_tokens
    k = keys + image_pe
    queries = queries + attention(q, k, keys, **params["final_attn_token_to_image"], num_heads=num_heads)
    queries = layer_norm(queries, params["norm_final_attn"])
    return queries, keys
