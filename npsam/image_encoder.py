"""TinyViT image encoder of LiteMedSAM: a (1, 3, 256, 256) image to a (1, 256, 64, 64) image embedding.

Activations are kept channel-last, as (H, W, C) grids or (H*W, C) token matrices, so that every 1x1
convolution and linear layer is one float32 GEMM. Batch norm is folded into the preceding convolution
and the attention-bias tables are gathered when the weights are loaded (`npsam.model`), so the functions
here only read prepared arrays, named after the checkpoint keys they come from.
"""

from __future__ import annotations

import numpy as np

from npsam import blas, kernels
from npsam.config import ModelConfig

__all__ = ["encode_image", "encoder_stages"]

TOKEN_LN_EPS = 1e-5  # nn.LayerNorm default, used inside TinyViT attention and MLP
NECK_LN_EPS = 1e-6  # SAM's LayerNorm2d in the neck


_NO_RESIDUAL = np.empty((0, 0), dtype=np.float32)
# Logits per chunk of window attention: 1 MiB keeps a chunk with its q, k and v in a 2-4 MiB L2 cache.
ATTENTION_CHUNK_BYTES = 1 << 20
# Expanded rows per chunk of `expand_depthwise_project`. Chunks of 0.5 to 2 MiB ran stage 0's blocks in
# about the same time on the development Xeon, which has 2 MiB of L2 cache per core.
EXPANDED_CHUNK_BYTES = 1 << 20


def conv1x1(x, conv, apply_gelu=False, residual=None):
    """1x1 convolution (with folded batch norm) on channel-last data: (..., Cin) -> (..., Cout).

    Returns conv + residual, or GELU(conv + residual) with `apply_gelu`. The bias, the optional
    residual (shaped like the output) and GELU are applied in one pass over the GEMM's output.
    """
    shape = x.shape
    out = gemm_only(x.reshape(-1, shape[-1]), conv)
    residual = _NO_RESIDUAL if residual is None else np.ascontiguousarray(residual).reshape(out.shape)
    if apply_gelu:
        kernels.bias_gelu_inplace(out, conv["bias"], residual)
    elif "bias" in conv:
        kernels.bias_residual_inplace(out, conv["bias"], residual)
    elif residual.size:
        out += residual
    return out.reshape(*shape[:-1], out.shape[-1])


def depthwise3x3(x, conv):
    """Depthwise 3x3 convolution, padding 1, stride 1, on an (H, W, C) grid."""
    return kernels.depthwise_conv3x3(x, conv["weight"], conv["bias"], 1, False)


def gelu_depthwise3x3(x, conv_before, conv, stride=1):
    """Return GELU(depthwise 3x3(GELU(x + conv_before's bias))) of an (H, W, C) grid, fused in one kernel.

    x is the output of conv_before's GEMM without its bias, so the activated grid is never stored.
    """
    return kernels.gelu_depthwise_conv3x3(x, conv_before["bias"], conv["weight"], conv["bias"], stride, True)


def gemm_only(x, conv):
    """Return the GEMM of a 1x1 convolution without its bias, on channel-last data: (..., Cin) -> (..., Cout)."""
    shape = x.shape
    return (x.reshape(-1, shape[-1]) @ conv["weight"]).reshape(*shape[:-1], -1)


def patch_embed(image, seq):
    """Stem: two 1x1 Conv2d_BN with a GELU between; (256, 256, 3) -> (256, 256, 64)."""
    x = conv1x1(image, seq["0"], apply_gelu=True)
    return conv1x1(x, seq["2"])


def mbconv(x, conv1, conv2, conv3):
    """Inverted residual block of stage 0; the last GELU comes after the residual addition."""
    if blas.split_threads() >= 2:
        return expand_depthwise_project(x, conv1, conv2, conv3, 1, residual_gelu=True)
    hidden = gelu_depthwise3x3(gemm_only(x, conv1), conv1, conv2)  # (H, W, 4C): conv1, GELU, conv2, GELU
    return conv1x1(hidden, conv3, apply_gelu=True, residual=x)  # (H, W, C): GELU(conv3 + x)


def patch_merging(x, conv1, conv2, conv3, stride):
    """Downsample between stages: 1x1 conv, GELU, depthwise 3x3 with `stride`, GELU, 1x1 conv (no activation)."""
    if blas.split_threads() >= 2:
        return expand_depthwise_project(x, conv1, conv2, conv3, stride, residual_gelu=False)
    x = gelu_depthwise3x3(gemm_only(x, conv1), conv1, conv2, stride)  # (H/stride, W/stride, Cout)
    return conv1x1(x, conv3)


def expand_depthwise_project(x, conv1, conv2, conv3, stride, residual_gelu):
    """Run conv1 (1x1), GELU, conv2 (depthwise 3x3, `stride`), GELU, conv3 (1x1) on an (H, W, C) grid, a few rows at a time.

    With `residual_gelu` the result is GELU(conv3 + x), as MBConv ends; otherwise conv3 alone, as
    PatchMerging ends. `mbconv` and `patch_merging` compute the same values in whole-grid passes,
    which write the expanded grid (4C channels in stage 0: 64 MiB) to memory and read it back twice.
    Here each thread of `blas.run_split` takes a band of output rows. It works through the band in
    chunks of about EXPANDED_CHUNK_BYTES of expanded rows, so that they stay in its cache. For each
    chunk, OpenBLAS (on one thread) multiplies the input rows by conv1 and a kernel activates them into
    a ring of rows. Another kernel runs the depthwise convolution on the ring, and OpenBLAS multiplies
    its output by conv3 straight into the result. The rows above a chunk come from the previous chunk
    through the ring. At band edges both bands compute them.
    """
    height, width, channels = x.shape
    weight1, weight3 = conv1["weight"], conv3["weight"]
    expanded, out_channels = weight1.shape[1], weight3.shape[1]
    out_height, out_width = (height - 1) // stride + 1, (width - 1) // stride + 1
    if residual_gelu and (stride, out_channels) != (1, channels):
        raise ValueError(
            f"invalid residual_gelu=True with stride {stride} and {out_channels} output channels: the residual "
            f"needs stride 1 and {channels} output channels; pass residual_gelu=False for a downsampling step"
        )
    out = np.empty((out_height, out_width, out_channels), dtype=np.float32)
    chunk = max(1, EXPANDED_CHUNK_BYTES // (stride * width * expanded * 4))  # output rows per chunk
    ring_rows = min(stride * chunk + 2, height)  # every input row that one chunk of output rows reads
    residual = x.reshape(-1, channels) if residual_gelu else _NO_RESIDUAL

    def run_band(first, last):
        ring = np.empty((ring_rows, width, expanded), dtype=np.float32)  # image row y in ring[(y - origin) % ring_rows]
        hidden = np.empty((chunk, out_width, expanded), dtype=np.float32)
        origin = next_row = max(stride * first - 1, 0)
        for start in range(first, last, chunk):
            stop = min(start + chunk, last)
            needed = min(stride * (stop - 1) + 1, height - 1)  # the last input row this chunk reads
            while next_row <= needed:  # expand and activate the rows not in the ring yet
                slot = (next_row - origin) % ring_rows
                count = min(needed + 1 - next_row, ring_rows - slot)
                rows = ring[slot : slot + count].reshape(-1, expanded)
                np.matmul(x[next_row : next_row + count].reshape(-1, channels), weight1, out=rows)
                kernels.bias_gelu_serial(rows, conv1["bias"], _NO_RESIDUAL)
                next_row += count
            part = hidden[: stop - start]
            kernels.depthwise_gelu_rows_serial(ring, origin, height, part, conv2["weight"], conv2["bias"], stride, start)
            projected = out[start:stop].reshape(-1, out_channels)
            np.matmul(part.reshape(-1, expanded), weight3, out=projected)
            if residual_gelu:
                kernels.bias_gelu_serial(projected, conv3["bias"], residual[start * out_width : stop * out_width])
            else:
                kernels.bias_residual_serial(projected, conv3["bias"], _NO_RESIDUAL)

    blas.run_split(run_band, out_height)
    return out


def window_attention(x, attn, num_heads, window, residual=None):
    """Apply TinyViT window attention to an (H, W, C) grid and return its output, plus `residual` if given.

    TinyViT pads the grid with zeros at the bottom and right to multiples of `window` before the layer
    norm, so the padded tokens become the norm's bias vector and take part as keys and values without a
    mask. Their qkv projection is the same for every padded token and is precomputed as `padding_qkv`.
    """
    height, width, channels = x.shape
    normed = kernels.layer_norm(x.reshape(-1, channels), attn["norm"]["weight"], attn["norm"]["bias"], TOKEN_LN_EPS)
    qkv = gemm_only(normed, attn["qkv"]).reshape(height, width, 3 * channels)  # the bias is added in attend_in_windows
    out = attend_in_windows(qkv, attn["qkv"]["bias"], attn["padding_qkv"], attn["attention_bias"], window, num_heads)
    return conv1x1(out, attn["proj"], residual=residual)


def attend_in_windows(qkv, qkv_bias, padding_qkv, attention_bias, window, num_heads):
    """Run multi-head attention inside the windows of an (H, W, 3C) qkv grid and return (H, W, C), heads concatenated.

    qkv lacks the projection's bias `qkv_bias` (3C,), which the gather adds. The grid is padded at the
    bottom and right to multiples of `window` with tokens whose projection, bias included, is
    `padding_qkv` (3C,). They take part as keys and values, and only the real tokens are returned.
    attention_bias (heads, N, N), with N = window**2, is added after scaling by 1 / sqrt(head dim).
    """
    height, width, _ = qkv.shape
    head_dim = qkv.shape[2] // (3 * num_heads)
    padding_qkv = np.array(padding_qkv, dtype=np.float32)  # writeable, so that the kernel's argument types match
    q, k_t, v = kernels.gather_windows(qkv, qkv_bias, padding_qkv, window, num_heads, head_dim)  # (B, N, d), (B, d, N), (B, N, d)
    scale = np.float32(head_dim**-0.5)
    batch, tokens, _ = q.shape
    windows = np.empty_like(q)  # (B, N, d)
    if blas.split_threads() < 2:
        # Without a usable OpenBLAS: stacked products for all windows and heads, softmax on all cores.
        weights = np.matmul(q, k_t)  # (B, N, N)
        kernels.window_softmax_inplace(weights, attention_bias, num_heads, scale)
        np.matmul(weights, v, out=windows)
        return kernels.scatter_windows(windows, height, width, window, num_heads)

    # Each thread takes a share of the windows and heads and runs them in chunks of about
    # ATTENTION_CHUNK_BYTES of logits, so that products and softmax stay in the core's cache.
    chunk = max(1, ATTENTION_CHUNK_BYTES // (tokens * tokens * 4))

    def attend(start, stop):
        weights = np.empty((min(chunk, stop - start), tokens, tokens), dtype=np.float32)
        for first in range(start, stop, chunk):
            last = min(first + chunk, stop)
            part = weights[: last - first]
            np.matmul(q[first:last], k_t[first:last], out=part)
            kernels.window_softmax_serial(part, attention_bias, num_heads, scale, first)
            np.matmul(part, v[first:last], out=windows[first:last])

    blas.run_split(attend, batch)
    return kernels.scatter_windows(windows, height, width, window, num_heads)


def mlp(x, norm, fc1, fc2, residual=None):
    """Pre-norm MLP: LayerNorm, Linear C->4C, GELU, Linear 4C->C [+ residual]; (L, C) -> (L, C)."""
    hidden = kernels.layer_norm(x, norm["weight"], norm["bias"], TOKEN_LN_EPS)
    hidden = conv1x1(hidden, fc1, apply_gelu=True)
    return conv1x1(hidden, fc2, residual=residual)


def tinyvit_block(x, attn, local_conv, mlp_weights, num_heads, window):
    """Attention block: x + window attention, then a depthwise conv that replaces x, then x + MLP."""
    height, width, channels = x.shape
    x = window_attention(x, attn, num_heads, window, residual=x)  # x + attention(x)
    x = depthwise3x3(x, local_conv)  # no residual around the local convolution
    tokens = x.reshape(-1, channels)
    tokens = mlp(tokens, **mlp_weights, residual=tokens)  # tokens + MLP(tokens)
    return tokens.reshape(height, width, channels)


def neck(x, weights):
    """1x1 conv 320->256, LayerNorm2d, 3x3 conv 256->256 (padding 1), LayerNorm2d; (64, 64, 320) -> (64, 64, 256)."""
    height, width, _ = x.shape
    x = conv1x1(x, weights["0"])
    channels = x.shape[-1]
    x = kernels.layer_norm(x.reshape(-1, channels), weights["1"]["weight"], weights["1"]["bias"], NECK_LN_EPS)

    # 3x3 convolution as one GEMM over the (H*W, 9*C) patch matrix.
    x = gemm_only(kernels.patches3x3(x.reshape(height, width, channels)), weights["2"])

    x = kernels.layer_norm(x, weights["3"]["weight"], weights["3"]["bias"], NECK_LN_EPS)
    return x.reshape(height, width, channels)


def encoder_stages(image, params, config: ModelConfig):
    """Run the encoder and yield (stage name, channel-last activation) after each stage, ending with the neck."""
    x = patch_embed(image, params["patch_embed"]["seq"])
    yield "patch_embed", x

    for stage, layer in enumerate(params["layers"]):
        for block in layer["blocks"]:
            if stage == 0:
                x = mbconv(x, **block)
            else:
                x = tinyvit_block(
                    x,
                    block["attn"],
                    block["local_conv"],
                    block["mlp"],
                    config.num_heads[stage],
                    config.window_sizes[stage],
                )
        if "downsample" in layer:
            x = patch_merging(x, **layer["downsample"], stride=config.downsample_stride(stage))
        yield f"layers.{stage}", x

    yield "neck", neck(x, params["neck"])


def encode_image(input_image: np.ndarray, params, config: ModelConfig) -> np.ndarray:
    """Encode a preprocessed (1, 3, S, S) float32 image into the (1, 256, S/4, S/4) image embedding."""
    size = config.image_size
    if input_image.shape != (1, config.in_chans, size, size) or input_image.dtype != np.float32:
        raise ValueError(
            f"image encoder input must be float32 of shape (1, {config.in_chans}, {size}, {size}), "
            f"got {input_image.dtype} {input_image.shape}; use npsam.preprocessing.preprocess_image first"
        )
    image = np.ascontiguousarray(input_image[0].transpose(1, 2, 0))  # (S, S, 3)

    for _, x in encoder_stages(image, params, config):
        pass
    height, width, channels = x.shape
    return kernels.transpose2d(x.reshape(-1, channels)).reshape(1, channels, height, width)  # (1, 256, S/4, S/4)
