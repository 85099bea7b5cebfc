"""Every Numba-compiled function of npsam.

Each kernel is a plain loop nest over float32 arrays. The public wrappers in the model and pipeline
modules validate shapes and allocate outputs; the kernels here assume contiguous float32 inputs of
consistent sizes. Compiled code is cached on disk (see `npsam.compile_cache`), so a second process
loads it instead of compiling again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from npsam import compile_cache

compile_cache.configure()

_SQRT1_2 = np.float32(0.7071067811865476)


# ---- Model kernels ----


@njit(cache=True, parallel=True, fastmath=False)
def gelu_inplace(x):
    """Apply the exact (erf) GELU to a float32 array in place."""
    flat = x.reshape(-1)
    half = np.float32(0.5)
    one = np.float32(1.0)
    for i in prange(flat.size):
        value = flat[i]
        flat[i] = value * half * (one + np.float32(math.erf(value * _SQRT1_2)))


@njit(cache=True, parallel=True)
def layer_norm(x, weight, bias, eps):
    """Normalise each row of a (rows, C) float32 array over its C channels.

    Mean and variance are accumulated in float64 and the result divides by sqrt(var + eps), which is
    what both `nn.LayerNorm` and SAM's `LayerNorm2d` compute up to float32 rounding.
    """
    rows, channels = x.shape
    out = np.empty_like(x)
    for r in prange(rows):
        mean = 0.0
        for c in range(channels):
            mean += x[r, c]
        mean /= channels
        var = 0.0
        for c in range(channels):
            d = x[r, c] - mean
            var += d * d
        var /= channels
        inv = 1.0 / math.sqrt(var + eps)
        for c in range(channels):
            out[r, c] = np.float32((x[r, c] - mean) * inv) * weight[c] + bias[c]
    return out


@njit(cache=True, parallel=True)
def depthwise_conv3x3(x, weight, bias, stride, apply_gelu):
    """Depthwise 3x3 convolution with zero padding 1 on an (H, W, C) float32 image.

    `weight` is (3, 3, C) and `bias` (C,). Output row i reads input rows stride*i - 1 .. stride*i + 1.
    With `apply_gelu` the exact GELU is applied to the output.
    """
    height, width, channels = x.shape
    out_h = (height - 1) // stride + 1
    out_w = (width - 1) // stride + 1
    out = np.empty((out_h, out_w, channels), dtype=np.float32)
    half = np.float32(0.5)
    one = np.float32(1.0)
    for i in prange(out_h):
        acc = np.empty(channels, dtype=np.float32)
        for j in range(out_w):
            for c in range(channels):
                acc[c] = bias[c]
            for di in range(3):
                row = stride * i + di - 1
                if row < 0 or row >= height:
                    continue
                for dj in range(3):
                    col = stride * j + dj - 1
                    if col < 0 or col >= width:
                        continue
                    for c in range(channels):
                        acc[c] += x[row, col, c] * weight[di, dj, c]
            if apply_gelu:
                for c in range(channels):
                    value = acc[c]
                    out[i, j, c] = value * half * (one + np.float32(math.erf(value * _SQRT1_2)))
            else:
                for c in range(channels):
                    out[i, j, c] = acc[c]
    return out


@njit(cache=True, parallel=True)
def window_attention(qkv, attention_bias, height, width, window, num_heads, head_dim, scale):
    """Multi-head attention inside non-overlapping windows of a zero-padded token grid.

    qkv: (Hp, Wp, 3C) projections of the padded grid (Hp, Wp multiples of `window`), with the channels of
    each head laid out as [q | k | v], head after head. attention_bias: (heads, N, N) with N = window**2,
    added after scaling. Padded tokens take part as keys and values, as in TinyViT, but only the
    (height, width) real tokens are written to the (height, width, C) output, heads concatenated.
    """
    padded_h, padded_w, _ = qkv.shape
    channels = num_heads * head_dim
    tokens = window * window
    windows_y = padded_h // window
    windows_x = padded_w // window
    out = np.zeros((height, width, channels), dtype=np.float32)
    for task in prange(windows_y * windows_x * num_heads):
        head = task % num_heads
        win = task // num_heads
        wy = win // windows_x
        wx = win % windows_x
        q = np.empty((tokens, head_dim), dtype=np.float32)
        k = np.empty((tokens, head_dim), dtype=np.float32)
        v = np.empty((tokens, head_dim), dtype=np.float32)
        base = head * 3 * head_dim
        for t in range(tokens):
            row = wy * window + t // window
            col = wx * window + t % window
            for c in range(head_dim):
                q[t, c] = qkv[row, col, base + c]
                k[t, c] = qkv[row, col, base + head_dim + c]
                v[t, c] = qkv[row, col, base + 2 * head_dim + c]
        logits = np.empty(tokens, dtype=np.float32)
        acc = np.empty(head_dim, dtype=np.float32)
        for i in range(tokens):
            row = wy * window + i // window
            col = wx * window + i % window
            if row >= height or col >= width:
                continue
            max_logit = np.float32(-np.inf)
            for j in range(tokens):
                dot = np.float32(0.0)
                for c in range(head_dim):
                    dot += q[i, c] * k[j, c]
                value = dot * scale + attention_bias[head, i, j]
                logits[j] = value
                if value > max_logit:
                    max_logit = value
            total = np.float32(0.0)
            for j in range(tokens):
                e = np.float32(math.exp(logits[j] - max_logit))
                logits[j] = e
                total += e
            for c in range(head_dim):
                acc[c] = 0.0
            for j in range(tokens):
                p = logits[j] / total
                for c in range(head_dim):
                    acc[c] += p * v[j, c]
            for c in range(head_dim):
                out[row, col, head * head_dim + c] = acc[c]
    return out
