"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Shapes: `queries` (B, T, E) are the output and prompt tokens of B boxes. `keys` are the image tokens.
They are (L, E) and shared by every box until the first layer's image-to-token attention, then (B, L, E).

With T = 7 tokens against L = 4096 image tokens, projecting every image token costs far more than the
attention itself. The cross-attentions therefore regroup the products so that the image side is
multiplied by matrices of width heads x T instead of being projected:
- token to image: q k^T = (q W_k^T) (K + PE)^T and softmax(.) (K W_v) = (softmax(.) K) W_v;
- image to token: (K W_q) k^T = K (W_q k^T), and softmax(.) v W_out = softmax(.) (v W_out).
This is the same arithmetic in another order, so results differ from SAM's order only by float32
rounding. Image tokens shared by all boxes are still projected once, which is cheaper there.
"""

from __future__ import annotations

import numpy as np

from npsam import kernels

__all__ = ["prepare_image_side", "two_way_transformer"]

LN_EPS = 1e-5


def linear(x, weights):
    """Linear layer with weights stored as (in, out): (..., in) -> (..., out)."""
    return x @ weights["weight"] + weights["bias"]


# Arrays up to this many items are normalised or softmaxed on the calling thread. Waking Numba's thread
# pool took about 70 microseconds per call, more than such small arrays need.
SERIAL_KERNEL_ITEMS = 1 << 14


def layer_norm(x, norm):
    shape = x.shape
    rows = np.ascontiguousarray(x).reshape(-1, shape[-1])
    normalise = kernels.layer_norm_serial if rows.size <= SERIAL_KERNEL_ITEMS else kernels.layer_norm
    return normalise(rows, norm["weight"], norm["bias"], LN_EPS).reshape(shape)


# Rows at least this long go through NumPy, whose reductions vectorise along a row. Shorter rows, such
# as the 7 tokens of image-to-token attention, go through the Numba kernel, which vectorises across rows.
SHORT_SOFTMAX_ROWS = 64


def residual_layer_norm(x, update, bias, norm, pe):
    """Return layer_norm(x + (update + bias)) and the same plus `pe`, from one fused pass.

    update (..., L, E) may have a leading batch axis that x and pe (L, E) lack. The two results are
    what `layer_norm(x + (update + bias), norm)` and adding `pe` to it give, bit for bit.
    """
    shape = update.shape
    rows = np.ascontiguousarray(update).reshape(-1, shape[-1])
    out = np.empty_like(rows)
    out_with_pe = np.empty_like(rows)
    kernels.residual_layer_norm(
        np.ascontiguousarray(x).reshape(-1, shape[-1]), rows, bias, norm["weight"], norm["bias"], LN_EPS,
        np.ascontiguousarray(pe).reshape(-1, shape[-1]), out, out_with_pe,
    )
    return out.reshape(shape), out_with_pe.reshape(shape)


def softmax(logits):
    """Softmax over the last axis, computed in place on `logits` (a fresh array of the caller's)."""
    if logits.shape[-1] >= SHORT_SOFTMAX_ROWS:
        logits -= logits.max(axis=-1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=-1, keepdims=True)
        return logits
    logits = np.ascontiguousarray(logits)
    rows = logits.reshape(-1, logits.shape[-1])
    if rows.size <= SERIAL_KERNEL_ITEMS:
        kernels.softmax_inplace_serial(rows)
    else:
        kernels.softmax_inplace(rows)
    return logits


def split_heads(x, num_heads):
    """(..., N, D) -> (..., heads, N, D / heads), heads taken as contiguous channel chunks."""
    *lead, tokens, dim = x.shape
    return np.swapaxes(x.reshape(*lead, tokens, num_heads, dim // num_heads), -2, -3)


def merge_heads(x):
    """(..., heads, N, d) -> (..., N, heads * d)."""
    *lead, heads, tokens, head_dim = x.shape
    return np.swapaxes(x, -2, -3).reshape(*lead, tokens, heads * head_dim)


def batched_matmul(a, b):
    """(B, M, K) @ ([B,] K, N) as one 2D GEMM per batch item.

    NumPy's stacked matmul does not hand transposed operands to BLAS efficiently, while a 2D product
    of (transposed) views does.
    """
    out = np.empty((a.shape[0], a.shape[1], b.shape[-1]), dtype=np.float32)
    for index in range(a.shape[0]):
        np.matmul(a[index], b[index] if b.ndim == 3 else b, out=out[index])
    return out


def head_weights(weights, num_heads):
    """Split an (E, D) projection into (heads, E, d) and its bias into (heads, d)."""
    dim, internal = weights["weight"].shape
    head_dim = internal // num_heads
    weight = weights["weight"].reshape(dim, num_heads, head_dim).transpose(1, 0, 2)
    return weight, weights["bias"].reshape(num_heads, head_dim)


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


def shared_token_to_image_attention(q, k_heads, v_heads, q_proj, out_proj, num_heads):
    """Attention of tokens (B, T, E) over image tokens shared by all boxes, given their (h, L, d) k and v heads."""
    q = split_heads(linear(q, q_proj), num_heads)  # (B, h, T, d)
    logits = q @ np.swapaxes(k_heads, -1, -2)  # (B, h, T, L)
    logits /= np.float32(np.sqrt(q.shape[-1]))
    out = softmax(logits) @ v_heads  # (B, h, T, d)
    return linear(merge_heads(out), out_proj)


def token_to_image_attention(q, k, v, q_proj, k_proj, v_proj, out_proj, num_heads):
    """Attention of T tokens (B, T, E) over per-box image tokens k, v (B, L, E), without projecting k and v."""
    batch, tokens, _ = q.shape
    w_k, b_k = head_weights(k_proj, num_heads)  # (h, E, d), (h, d)
    w_v, b_v = head_weights(v_proj, num_heads)
    head_dim = w_k.shape[-1]

    q = split_heads(linear(q, q_proj), num_heads)  # (B, h, T, d)
    q_keys = q @ np.swapaxes(w_k, -1, -2)  # (B, h, T, E): q W_k^T
    logits = batched_matmul(q_keys.reshape(batch, -1, q_keys.shape[-1]), np.swapaxes(k, -1, -2))  # (B, h*T, L)
    logits = logits.reshape(batch, num_heads, tokens, -1)
    logits += (q @ b_k[:, :, None])  # (B, h, T, 1): q . b_k
    logits /= np.float32(np.sqrt(head_dim))
    weights = softmax(logits)  # (B, h, T, L)

    pooled = batched_matmul(weights.reshape(batch, -1, weights.shape[-1]), v)  # (B, h*T, E): rows sum to 1
    out = pooled.reshape(batch, num_heads, tokens, -1) @ w_v + b_v[:, None, :]  # (B, h, T, d)
    return linear(merge_heads(out), out_proj)


def image_to_token_attention(q, k, v, q_proj, k_proj, v_proj, out_proj, num_heads, q_heads=None):
    """Attention of image tokens q ([B,] L, E) over T tokens k, v (B, T, E), without projecting q.

    For image tokens shared by all boxes, `q_heads` (h, L, d) are their projections, computed once.
    The callers add the output projection's bias in `residual_layer_norm`.
    """
    batch, tokens, _ = k.shape
    k = split_heads(linear(k, k_proj), num_heads)  # (B, h, T, d)
    v = split_heads(linear(v, v_proj), num_heads)  # (B, h, T, d)
    head_dim = k.shape[-1]
    scale = np.float32(1 / np.sqrt(head_dim))

    if q_heads is not None:
        logits = q_heads @ np.swapaxes(k, -1, -2)  # (B, h, L, T)
        logits = np.ascontiguousarray(logits.transpose(0, 2, 1, 3))  # (B, L, h, T)
    else:
        w_q, b_q = head_weights(q_proj, num_heads)  # (h, E, d), (h, d)
        key_maps = w_q @ np.swapaxes(k, -1, -2)  # (B, h, E, T): W_q k^T
        key_maps = key_maps.transpose(0, 2, 1, 3).reshape(batch, -1, num_heads * tokens)  # (B, E, h*T)
        logits = batched_matmul(q, key_maps).reshape(batch, -1, num_heads, tokens)  # (B, L, h, T)
        logits += (b_q[None, :, None, :] @ np.swapaxes(k, -1, -2)).reshape(batch, 1, num_heads, tokens)
    logits *= scale
    weights = softmax(logits)  # (B, L, h, T)

    head_out = out_proj["weight"].reshape(num_heads, head_dim, -1)  # (h, d, E)
    value_maps = (v @ head_out).reshape(batch, num_heads * tokens, -1)  # (B, h*T, E): v W_out per head
    return batched_matmul(weights.reshape(batch, -1, num_heads * tokens), value_maps)  # (B, L, E), no bias


def prepare_image_side(image_tokens, image_pe, params, num_heads):
    """Compute the box-independent projections of the first layer's cross-attentions once per image.

    image_tokens, image_pe: (L, E). Returns the inputs with the (h, L, d) heads of the token-to-image
    keys and values and of the image-to-token queries.
    """
    layer = params["layers"][0]
    keys_with_pe = image_tokens + image_pe
    token_to_image = layer["cross_attn_token_to_image"]
    image_to_token = layer["cross_attn_image_to_token"]
    return {
        "image_tokens": image_tokens,
        "image_pe": image_pe,
        "keys_with_pe": keys_with_pe,
        "k_heads": np.ascontiguousarray(split_heads(linear(keys_with_pe, token_to_image["k_proj"]), num_heads)),
        "v_heads": np.ascontiguousarray(split_heads(linear(image_tokens, token_to_image["v_proj"]), num_heads)),
        "q_heads": np.ascontiguousarray(split_heads(linear(keys_with_pe, image_to_token["q_proj"]), num_heads)),
    }


def first_layer(queries, image_side, query_pe, layer, num_heads):
    """Run the first two-way block, reading the shared image-side projections of `prepare_image_side`.

    Returns the new queries (B, T, E), image tokens (B, L, E) and image tokens plus their PE.
    """
    queries = attention(queries, queries, queries, **layer["self_attn"], num_heads=num_heads)  # no PE, no residual
    queries = layer_norm(queries, layer["norm1"])

    token_to_image = layer["cross_attn_token_to_image"]
    queries = queries + shared_token_to_image_attention(
        queries + query_pe, image_side["k_heads"], image_side["v_heads"],
        token_to_image["q_proj"], token_to_image["out_proj"], num_heads,
    )
    queries = layer_norm(queries, layer["norm2"])

    hidden = np.maximum(linear(queries, layer["mlp"]["lin1"]), 0)
    queries = queries + linear(hidden, layer["mlp"]["lin2"])
    queries = layer_norm(queries, layer["norm3"])

    image_to_token = layer["cross_attn_image_to_token"]
    update = image_to_token_attention(
        image_side["keys_with_pe"], queries + query_pe, queries,
        **image_to_token, num_heads=num_heads, q_heads=image_side["q_heads"],
    )  # (B, L, E)
    keys, keys_with_pe = residual_layer_norm(
        image_side["image_tokens"], update, image_to_token["out_proj"]["bias"], layer["norm4"], image_side["image_pe"]
    )
    return queries, keys, keys_with_pe


def two_way_layer(queries, keys, keys_with_pe, query_pe, key_pe, layer, num_heads):
    """Run a later two-way block: self-attention, token-to-image, MLP, image-to-token, each followed by a norm.

    keys_with_pe is keys + key_pe. Returns the new queries, keys and keys + key_pe.
    """
    q = queries + query_pe
    queries = queries + attention(q, q, queries, **layer["self_attn"], num_heads=num_heads)
    queries = layer_norm(queries, layer["norm1"])

    # Tokens attend to the image.
    q = queries + query_pe
    k = keys_with_pe
    queries = queries + token_to_image_attention(q, k, keys, **layer["cross_attn_token_to_image"], num_heads=num_heads)
    queries = layer_norm(queries, layer["norm2"])

    # MLP with ReLU on the tokens.
    hidden = np.maximum(linear(queries, layer["mlp"]["lin1"]), 0)
    queries = queries + linear(hidden, layer["mlp"]["lin2"])
    queries = layer_norm(queries, layer["norm3"])

    # The image attends to the tokens (k is keys + key_pe); the image tokens change only here.
    k_tokens = queries + query_pe
    image_to_token = layer["cross_attn_image_to_token"]
    update = image_to_token_attention(k, k_tokens, queries, **image_to_token, num_heads=num_heads)
    return (queries, *residual_layer_norm(keys, update, image_to_token["out_proj"]["bias"], layer["norm4"], key_pe))


def two_way_transformer(image_side, point_tokens, params, num_heads, output_tokens=None):
    """Run the decoder transformer.

    image_side: the output of `prepare_image_side` for one image, shared by all boxes.
    point_tokens: (B, T, E) output tokens then prompt tokens.
    output_tokens: how many leading tokens the caller reads; the final attention skips the others.
    Returns the updated tokens (B, output_tokens, E) and image tokens (B, L, E).
    """
    image_pe = image_side["image_pe"]
    queries, keys, keys_with_pe = first_layer(point_tokens, image_side, point_tokens, params["layers"][0], num_heads)
    for layer in params["layers"][1:]:
        queries, keys, keys_with_pe = two_way_layer(queries, keys, keys_with_pe, point_tokens, image_pe, layer, num_heads)

    read_tokens = slice(0, output_tokens)
    queries = queries[:, read_tokens]
    q = queries + point_tokens[:, read_tokens]
    queries = queries + token_to_image_attention(
        q, keys_with_pe, keys, **params["final_attn_token_to_image"], num_heads=num_heads
    )
    queries = layer_norm(queries, params["norm_final_attn"])
    return queries, keys
