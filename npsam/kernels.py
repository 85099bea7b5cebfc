"""Every Numba-compiled function of npsam.

Each kernel is a plain loop nest over float32 arrays. The public wrappers in the model and pipeline
modules validate shapes and allocate outputs; the kernels here assume contiguous float32 inputs of
consistent sizes. Compiled code is cached on disk (see `npsam.compile_cache`), so a second process
loads it instead of compiling again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from npsam import compile_cache

compile_cache.configure()

_SQRT1_2 = np.float32(0.7071067811865476)


# ---- Model kernels ----


# GELU(x) = x / 2 * (1 + erf(x / sqrt(2))). erf(u) is u * P(u^2) / Q(u^2) for |u| <= 3.92 and +-1 beyond
# (erf(3.92) is 1 - 3e-8, which rounds to 1 in float32). P (degree 6) and Q (degree 4, Q(0) = 1) were
# fitted for npsam by weighted least squares on the linearised rational, reweighted towards the minimax
# error (Lawson), on 4,000 Chebyshev points of u^2 in [0, 3.92^2]. Exact arithmetic gives an erf error
# below 4.4e-8, float32 evaluation below 4e-7. GELU(x) stays within 2.0e-7 * max(1, |x|) of the float64
# value (tests/test_kernels.py), against 1.9e-7 for the Abramowitz and Stegun form 7.1.26 with exp that
# npsam used before and PyTorch's vectorised kernel uses. Near x = -5, where GELU is about -1e-7, the
# error reaches 9e-7, because 1 + erf cancels. The rational form needs no exp and no scratch arrays:
# loops applying it ran 1.9 times faster per element on the AVX-512 Xeon of benchmarks/README.md.
_ERF_CLAMP = np.float32(3.92)
_ERF_P0 = np.float32(1.128378778)
_ERF_P1 = np.float32(2.061019428e-01)
_ERF_P2 = np.float32(5.139562558e-02)
_ERF_P3 = np.float32(3.972376329e-03)
_ERF_P4 = np.float32(1.489748974e-04)
_ERF_P5 = np.float32(-1.994267094e-06)
_ERF_P6 = np.float32(1.992190395e-08)
_ERF_Q1 = np.float32(5.159818598e-01)
_ERF_Q2 = np.float32(1.175594574e-01)
_ERF_Q3 = np.float32(1.488816205e-02)
_ERF_Q4 = np.float32(1.024000783e-03)
# exp for the softmax: Cody-Waite reduction and a polynomial, see `_exp_nonpositive`.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HIGH = np.float32(0.693359375)  # Cody-Waite split of ln 2
_LN2_LOW = np.float32(-2.12194440e-4)
_EXP_MIN_ARGUMENT = np.float32(-87.0)  # exp(-87) is still a normal float32


@njit(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _gelu(x):
    """Return GELU(x) of a float32 value (erf form, see the comment above). Branch-free, so loops calling it vectorise."""
    u = min(max(x * _SQRT1_2, -_ERF_CLAMP), _ERF_CLAMP)
    t = u * u
    p = (((((_ERF_P6 * t + _ERF_P5) * t + _ERF_P4) * t + _ERF_P3) * t + _ERF_P2) * t + _ERF_P1) * t + _ERF_P0
    q = (((_ERF_Q4 * t + _ERF_Q3) * t + _ERF_Q2) * t + _ERF_Q1) * t + np.float32(1.0)
    half = np.float32(0.5) * x
    return half + half * (u * p / q)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Return the float32 whose bit pattern is the int32 `bits` (a bitcast, which LLVM vectorises)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.int32), codegen


@intrinsic
def _bits_of_float32(typingctx, value):
    """Return the int32 bit pattern of the float32 `value` (a bitcast, which LLVM vectorises)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int32))

    return types.int32(types.float32), codegen


@njit(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _exp_nonpositive(y):
    """Return exp(y) for y <= 0 (about 1 ulp), and exp(-87) for y below -87.

    Cody-Waite reduction of y by n * ln 2, a degree-7 polynomial for exp on the remainder, and 2**n
    built from its exponent bits. Written without calls or branches so that the loops calling it vectorise.
    """
    y = max(y, _EXP_MIN_ARGUMENT)
    exponent = np.int32(y * _LOG2E - np.float32(0.5))  # y <= 0, so truncation rounds y * log2(e) to nearest
    n = np.float32(exponent)
    f = y - n * _LN2_HIGH - n * _LN2_LOW
    e = np.float32(1.9875691500e-4)
    e = e * f + np.float32(1.3981999507e-3)
    e = e * f + np.float32(8.3334519073e-3)
    e = e * f + np.float32(4.1665795894e-2)
    e = e * f + np.float32(1.6666665459e-1)
    e = e * f + np.float32(5.0000001201e-1)
    e = e * f * f + f + np.float32(1.0)
    return e * _float32_from_bits((exponent + np.int32(127)) << np.int32(23))


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _gelu_span(values):
    """Apply GELU in place to a contiguous float32 vector."""
    for i in range(values.shape[0]):
        values[i] = _gelu(values[i])


@njit(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _bias_gelu_row(row, bias, residual, r):
    """Replace `row` with GELU(row + bias [+ residual[r]]). `residual` is (rows, C), or (0, C) for none."""
    channels = row.shape[0]
    if residual.shape[0] > 0:
        added = residual[r]
        for c in range(channels):
            row[c] = _gelu((row[c] + bias[c]) + added[c])
    else:
        for c in range(channels):
            row[c] = _gelu(row[c] + bias[c])


@njit(cache=True, parallel=True, fastmath={"contract"}, error_model="numpy")
def bias_gelu_inplace(x, bias, residual):
    """Replace each row of a contiguous (rows, C) float32 array with GELU(row + bias [+ residual row]).

    `residual` is a (rows, C) array added after the bias, or a (0, C) array for none. The additions
    are the same float32 additions as separate passes would make, in the same order.
    """
    rows = x.shape[0]
    for r in prange(rows):
        _bias_gelu_row(x[r], bias, residual, r)


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def bias_gelu_serial(x, bias, residual):
    """Run `bias_gelu_inplace` on the calling thread, without holding the GIL, for a thread's share of rows."""
    for r in range(x.shape[0]):
        _bias_gelu_row(x[r], bias, residual, r)


@njit(cache=True, error_model="numpy", inline="always")
def _bias_residual_row(row, bias, residual, r):
    """Replace `row` with (row + bias) [+ residual[r]]. `residual` is (rows, C), or (0, C) for none."""
    channels = row.shape[0]
    if residual.shape[0] > 0:
        added = residual[r]
        for c in range(channels):
            row[c] = (row[c] + bias[c]) + added[c]
    else:
        for c in range(channels):
            row[c] = row[c] + bias[c]


@njit(cache=True, parallel=True, error_model="numpy")
def bias_residual_inplace(x, bias, residual):
    """Replace each row of a contiguous (rows, C) float32 array with (row + bias) + residual row, in one pass.

    `residual` is a (rows, C) array, or a (0, C) array for none: then each row becomes row + bias.
    """
    for r in prange(x.shape[0]):
        _bias_residual_row(x[r], bias, residual, r)


@njit(cache=True, nogil=True, error_model="numpy")
def bias_residual_serial(x, bias, residual):
    """Run `bias_residual_inplace` on the calling thread, without holding the GIL, for a thread's share of rows."""
    for r in range(x.shape[0]):
        _bias_residual_row(x[r], bias, residual, r)


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _layer_norm_row(src, dst, weight, bias, eps):
    """Write the layer norm of the float32 row `src` to `dst`.

    Mean and variance are accumulated in float64 and the result divides by sqrt(var + eps), which is
    what both `nn.LayerNorm` and SAM's `LayerNorm2d` compute up to float32 rounding. The sum and the
    sum of squares are accumulated in one pass: in float64, the variance E[x^2] - mean^2 of float32
    values loses about log2(mean^2 / var) of its 53 bits, far fewer than float32 rounding removes.
    """
    channels = src.shape[0]
    total = 0.0
    squares = 0.0
    for c in range(channels):
        value = np.float64(src[c])
        total += value
        squares += value * value
    mean = total / channels
    var = max(squares / channels - mean * mean, 0.0)
    inv = 1.0 / math.sqrt(var + eps)
    for c in range(channels):
        dst[c] = np.float32((src[c] - mean) * inv) * weight[c] + bias[c]


@njit(cache=True, parallel=True, error_model="numpy")
def layer_norm(x, weight, bias, eps):
    """Normalise each row of a (rows, C) float32 array over its C channels (see `_layer_norm_row`)."""
    rows = x.shape[0]
    out = np.empty_like(x)
    for r in prange(rows):
        _layer_norm_row(x[r], out[r], weight, bias, eps)
    return out


@njit(cache=True, error_model="numpy")
def layer_norm_serial(x, weight, bias, eps):
    """`layer_norm` on the calling thread, for a few rows: waking the thread pool costs more than they do."""
    rows = x.shape[0]
    out = np.empty_like(x)
    for r in range(rows):
        _layer_norm_row(x[r], out[r], weight, bias, eps)
    return out


_ROW_BLOCK = 64


@njit(cache=True, parallel=True, fastmath={"contract"}, error_model="numpy")
def residual_layer_norm(x, update, bias, weight, norm_bias, eps, pe, out, out_with_pe):
    """out = layer_norm(x + (update + bias)) and out_with_pe = out + pe, in one pass over the rows.

    update, out and out_with_pe are (rows, C) float32. x and pe have a divisor of `rows` as their
    row count and repeat along the rows, so that (L, C) image tokens serve a batch of boxes. The sums
    are the float32 additions that separate NumPy passes would make, in the same order.
    """
    rows, channels = update.shape
    x_rows = x.shape[0]
    pe_rows = pe.shape[0]
    blocks = (rows + _ROW_BLOCK - 1) // _ROW_BLOCK
    for block in prange(blocks):
        # The sum goes to a scratch row: normalising a row in place would make LLVM's overlap check
        # fail and run the scalar loop.
        summed = np.empty(channels, dtype=np.float32)
        for r in range(block * _ROW_BLOCK, min((block + 1) * _ROW_BLOCK, rows)):
            source = x[r % x_rows]
            change = update[r]
            for c in range(channels):
                summed[c] = source[c] + (change[c] + bias[c])
            row = out[r]
            _layer_norm_row(summed, row, weight, norm_bias, eps)
            position = pe[r % pe_rows]
            with_pe = out_with_pe[r]
            for c in range(channels):
                with_pe[c] = row[c] + position[c]


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _depthwise_row(top, middle, bottom, has_top, has_bottom, out_row, weight, bias, stride):
    """Compute one output row of a depthwise 3x3 convolution from its three (W, C) input rows.

    `top` and `bottom` are ignored when `has_top` / `has_bottom` is False (zero padding). Output
    pixel j reads columns stride*j - 1 .. stride*j + 1. Pixels whose nine taps all lie inside the image
    add the taps in one pass over the channels, so the sums stay in registers. Border pixels skip the
    taps outside. Both paths add the taps in the same order.
    """
    width, channels = middle.shape
    out_w = out_row.shape[0]
    w00, w01, w02 = weight[0, 0], weight[0, 1], weight[0, 2]
    w10, w11, w12 = weight[1, 0], weight[1, 1], weight[1, 2]
    w20, w21, w22 = weight[2, 0], weight[2, 1], weight[2, 2]
    for j in range(out_w):
        acc = out_row[j]
        left = stride * j - 1
        if has_top and has_bottom and left >= 0 and left + 2 < width:
            x00, x01, x02 = top[left], top[left + 1], top[left + 2]
            x10, x11, x12 = middle[left], middle[left + 1], middle[left + 2]
            x20, x21, x22 = bottom[left], bottom[left + 1], bottom[left + 2]
            for c in range(channels):
                value = bias[c]
                value += x00[c] * w00[c]
                value += x01[c] * w01[c]
                value += x02[c] * w02[c]
                value += x10[c] * w10[c]
                value += x11[c] * w11[c]
                value += x12[c] * w12[c]
                value += x20[c] * w20[c]
                value += x21[c] * w21[c]
                value += x22[c] * w22[c]
                acc[c] = value
            continue
        acc[:] = bias
        for di in range(3):
            if (di == 0 and not has_top) or (di == 2 and not has_bottom):
                continue
            row = middle
            if di == 0:
                row = top
            elif di == 2:
                row = bottom
            for dj in range(3):
                col = left + dj
                if col < 0 or col >= width:
                    continue
                pixel = row[col]
                tap = weight[di, dj]
                for c in range(channels):
                    acc[c] += pixel[c] * tap[c]


@njit(cache=True, parallel=True, fastmath={"contract"}, error_model="numpy")
def depthwise_conv3x3(x, weight, bias, stride, apply_gelu):
    """Return the depthwise 3x3 convolution with zero padding 1 of an (H, W, C) float32 image.

    `weight` is (3, 3, C) and `bias` (C,). Output row i reads input rows stride*i - 1 .. stride*i + 1.
    With `apply_gelu` GELU is applied to the output.
    """
    height, width, channels = x.shape
    out_h = (height - 1) // stride + 1
    out_w = (width - 1) // stride + 1
    out = np.empty((out_h, out_w, channels), dtype=np.float32)
    for i in prange(out_h):
        top = stride * i - 1
        _depthwise_row(
            x[max(top, 0)], x[top + 1], x[min(top + 2, height - 1)], top >= 0, top + 2 < height,
            out[i], weight, bias, stride,
        )
        if apply_gelu:
            _gelu_span(out[i].reshape(-1))
    return out


@njit(cache=True, parallel=True, error_model="numpy")
def transpose2d(x):
    """Return the transpose of a 2D float32 array as a new contiguous array.

    Each task copies 16 source columns, so it reads whole 64-byte cache lines and writes 16 rows in
    order. NumPy's copy of a transposed (4096, 256) view took about 7 ms.
    """
    rows, columns = x.shape
    out = np.empty((columns, rows), dtype=np.float32)
    block = 16
    for first in prange((columns + block - 1) // block):
        start = first * block
        stop = min(start + block, columns)
        for r in range(rows):
            source = x[r]
            for c in range(start, stop):
                out[c, r] = source[c]
    return out


@njit(cache=True, parallel=True, error_model="numpy")
def patches3x3(x):
    """Return the (H*W, 9*C) patch matrix of a 3x3 convolution with zero padding 1 of an (H, W, C) image.

    Row i*W + j contains the nine neighbours of pixel (i, j), ordered (di, dj) row by row, each as C
    channels. Neighbours outside the image are zeros.
    """
    height, width, channels = x.shape
    out = np.empty((height * width, 9 * channels), dtype=np.float32)
    for i in prange(height):
        for j in range(width):
            row = out[i * width + j]
            for di in range(3):
                for dj in range(3):
                    target = row[(3 * di + dj) * channels : (3 * di + dj + 1) * channels]
                    y = i + di - 1
                    x_col = j + dj - 1
                    if 0 <= y < height and 0 <= x_col < width:
                        target[:] = x[y, x_col]
                    else:
                        target[:] = 0.0
    return out


@njit(cache=True, parallel=True, fastmath={"contract"}, error_model="numpy")
def gelu_depthwise_conv3x3(x, input_bias, weight, bias, stride, apply_gelu):
    """Return the depthwise 3x3 convolution, as `depthwise_conv3x3` computes it, of GELU(x + input_bias) for an (H, W, C) x.

    x is the raw output of the preceding 1x1 convolution's GEMM, and `input_bias` (C,) its bias. Each
    thread works on a band of output rows and activates the input rows it needs into a ring of three
    rows, so the activated image is never written out and read back. Rows at band edges are activated
    by both neighbouring bands, with the same result.
    """
    height, width, channels = x.shape
    out_h = (height - 1) // stride + 1
    out_w = (width - 1) // stride + 1
    out = np.empty((out_h, out_w, channels), dtype=np.float32)
    bands = min(out_h, 8)
    for band in prange(bands):
        first = band * out_h // bands
        last = (band + 1) * out_h // bands
        ring = np.empty((3, width, channels), dtype=np.float32)
        next_row = max(stride * first - 1, 0)  # the next input row to activate
        for i in range(first, last):
            top = stride * i - 1
            while next_row <= min(top + 2, height - 1):
                slot = ring[next_row % 3]
                source = x[next_row]
                for p in range(width):
                    for c in range(channels):
                        slot[p, c] = _gelu(source[p, c] + input_bias[c])
                next_row += 1
            _depthwise_row(
                ring[max(top, 0) % 3], ring[(top + 1) % 3], ring[min(top + 2, height - 1) % 3],
                top >= 0, top + 2 < height, out[i], weight, bias, stride,
            )
            if apply_gelu:
                _gelu_span(out[i].reshape(-1))
    return out


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def depthwise_gelu_rows_serial(rows, first_row, height, out, weight, bias, stride, first_out):
    """Write GELU(depthwise 3x3 convolution) output rows first_out .. first_out + len(out) - 1 of an image to `out`.

    `rows` (R, W, C) is a ring of input rows of the (height, W, C) image: image row y is
    rows[(y - first_row) % R]. It must contain every row that the output rows read (rows stride*i - 1
    to stride*i + 1 inside the image). Runs on the calling thread without holding the GIL, and computes
    what `depthwise_conv3x3` with `apply_gelu` computes for these rows.
    """
    ring = rows.shape[0]
    for k in range(out.shape[0]):
        top = stride * (first_out + k) - 1
        _depthwise_row(
            rows[(max(top, 0) - first_row) % ring],
            rows[(top + 1 - first_row) % ring],
            rows[(min(top + 2, height - 1) - first_row) % ring],
            top >= 0, top + 2 < height, out[k], weight, bias, stride,
        )
        _gelu_span(out[k].reshape(-1))


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def upscale_norm_gelu(blocks, bias, weight, norm_bias, eps):
    """Finish SAM's first upscaling step: scatter, bias, LayerNorm2d and GELU in one pass.

    blocks: (H, W, 4 * C) output of the 2x2 stride-2 transposed convolution's GEMM, ordered (a, b, c)
    for output pixel (2i + a, 2j + b). Returns the (2H, 2W, C) float32 activations, each pixel
    normalised over its C channels (mean and variance accumulated in float64) and passed through GELU.
    """
    height, width, _ = blocks.shape
    channels = bias.size
    out = np.empty((2 * height, 2 * width, channels), dtype=np.float32)
    for i in prange(height):
        # The four output pixels of one token are normalised one by one, then pass GELU together:
        # one span of 4 * C values has less loop overhead than four short ones.
        pixels = np.empty(4 * channels, dtype=np.float32)
        summed = np.empty(channels, dtype=np.float32)  # a scratch row, so the norm does not run in place
        for j in range(width):
            for k in range(4):
                source = blocks[i, j, k * channels : (k + 1) * channels]  # a slice: Numba checks computed indices for wraparound
                for c in range(channels):
                    summed[c] = source[c] + bias[c]
                _layer_norm_row(summed, pixels[k * channels : (k + 1) * channels], weight, norm_bias, eps)
            _gelu_span(pixels)
            for k in range(4):
                out[2 * i + k // 2, 2 * j + k % 2, :] = pixels[k * channels : (k + 1) * channels]
    return out


@njit(cache=True, parallel=True, fastmath={"contract"}, error_model="numpy")
def upscale_gelu_project(blocks, bias, hyper):
    """Finish SAM's second upscaling step and apply the hypernetwork weights in one pass.

    blocks: (H, W, 4 * C) GEMM output of the second transposed convolution, ordered (a, b, c) for output
    pixel (2i + a, 2j + b). hyper: (C,) weights of the mask token. Returns the (2H, 2W) float32 mask
    logits sum_c GELU(blocks + bias)[c] * hyper[c]. The (2H, 2W, C) features are never stored.
    """
    height, width, _ = blocks.shape
    channels = bias.size
    out = np.empty((2 * height, 2 * width), dtype=np.float32)
    tiled_bias = np.empty(4 * channels, dtype=np.float32)  # the bias of each of the four output pixels
    for k in range(4):
        tiled_bias[k * channels : (k + 1) * channels] = bias
    for i in prange(height):
        # The four output pixels of one token are activated as one span of 4 * C values.
        pixels = np.empty(4 * channels, dtype=np.float32)
        for j in range(width):
            source = blocks[i, j]
            for c in range(4 * channels):
                pixels[c] = _gelu(source[c] + tiled_bias[c])
            for k in range(4):
                row = pixels[k * channels : (k + 1) * channels]
                total = np.float32(0.0)
                for c in range(channels):
                    total += row[c] * hyper[c]
                out[2 * i + k // 2, 2 * j + k % 2] = total
    return out


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _exp_nonpositive_span(values):
    """Replace each item of a contiguous float32 vector, each <= 0, with its exponential (see `_exp_nonpositive`)."""
    for i in range(values.shape[0]):
        values[i] = _exp_nonpositive(values[i])


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _exp_shifted(values, peak):
    """Replace each item of a float32 vector, none above `peak`, with exp(item - peak)."""
    for j in range(values.shape[0]):
        values[j] = _exp_nonpositive(values[j] - peak)


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _sum_of(values):
    """Return the float32 sum of a vector, added in vector registers (not in index order)."""
    total = np.float32(0.0)
    for j in range(values.shape[0]):
        total += values[j]
    return total


_SOFTMAX_BLOCK_ROWS = 256


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _softmax_rows(x, first, last):
    """Softmax of rows first..last-1 of a contiguous (rows, n) float32 array, in place.

    Subtract each row's maximum, exponentiate the rows in one vectorised pass, then scale each row by
    the inverse of its sum.
    """
    n = x.shape[1]
    for r in range(first, last):
        row = x[r]
        peak = row[0]
        for j in range(1, n):
            peak = max(peak, row[j])
        for j in range(n):
            row[j] -= peak
    _exp_nonpositive_span(x.reshape(-1)[first * n : last * n])
    for r in range(first, last):
        row = x[r]
        total = np.float32(0.0)
        for j in range(n):
            total += row[j]
        inverse = np.float32(1.0) / total
        for j in range(n):
            row[j] *= inverse


@njit(cache=True, parallel=True, error_model="numpy")
def softmax_inplace(x):
    """Softmax over the last axis of a contiguous (rows, n) float32 array, in place, in blocks of rows."""
    rows = x.shape[0]
    blocks = (rows + _SOFTMAX_BLOCK_ROWS - 1) // _SOFTMAX_BLOCK_ROWS
    for block in prange(blocks):
        first = block * _SOFTMAX_BLOCK_ROWS
        _softmax_rows(x, first, min(first + _SOFTMAX_BLOCK_ROWS, rows))


@njit(cache=True, error_model="numpy")
def softmax_inplace_serial(x):
    """`softmax_inplace` on the calling thread, for a few rows."""
    _softmax_rows(x, 0, x.shape[0])


_GATHER_BLOCK = 16  # tokens per block of keys in gather_windows: one 64-byte line of a k^T row


@njit(cache=True, parallel=True, error_model="numpy")
def gather_windows(qkv, qkv_bias, padding_qkv, window, num_heads, head_dim):
    """Split a token grid's qkv projections into per-window, per-head q, k^T and v for batched GEMMs.

    qkv: (H, W, 3C) projections without their bias `qkv_bias` (3C,), which is added here, with the
    channels of each head laid out as [q | k | v], head after head. The grid is padded at the bottom
    and right to multiples of `window` with tokens whose projection, bias included, is `padding_qkv`
    (3C,), so the padded grid is never stored. Returns q (B, N, d), k^T (B, d, N) and v (B, N, d), with
    N = window**2 tokens and B = windows x heads ordered window-major, heads inner.
    """
    height, width, _ = qkv.shape
    tokens = window * window
    windows_x = -(-width // window)
    batch = -(-height // window) * windows_x * num_heads
    q = np.empty((batch, tokens, head_dim), dtype=np.float32)
    k_t = np.empty((batch, head_dim, tokens), dtype=np.float32)
    v = np.empty((batch, tokens, head_dim), dtype=np.float32)
    for task in prange(batch):
        head = task % num_heads
        win = task // num_heads
        top = (win // windows_x) * window
        left = (win % windows_x) * window
        base = head * 3 * head_dim
        task_q = q[task]
        task_k_t = k_t[task]
        task_v = v[task]
        head_bias = qkv_bias[base : base + 3 * head_dim]
        # Keys go through a small block of rows first, so that k^T is written 16 tokens at a time
        # along its rows instead of one value per row.
        keys = np.empty((_GATHER_BLOCK, head_dim), dtype=np.float32)
        for first in range(0, tokens, _GATHER_BLOCK):
            last = min(first + _GATHER_BLOCK, tokens)
            for t in range(first, last):
                row = top + t // window
                col = left + t % window
                key = keys[t - first]
                if row < height and col < width:
                    source = qkv[row, col, base : base + 3 * head_dim]  # a slice: Numba checks computed indices for wraparound
                    for c in range(head_dim):
                        task_q[t, c] = source[c] + head_bias[c]
                        key[c] = source[head_dim + c] + head_bias[head_dim + c]
                        task_v[t, c] = source[2 * head_dim + c] + head_bias[2 * head_dim + c]
                else:
                    source = padding_qkv[base : base + 3 * head_dim]
                    for c in range(head_dim):
                        task_q[t, c] = source[c]
                        key[c] = source[head_dim + c]
                        task_v[t, c] = source[2 * head_dim + c]
            for c in range(head_dim):
                destination = task_k_t[c, first:last]
                for t in range(last - first):
                    destination[t] = keys[t, c]
    return q, k_t, v


@njit(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _window_softmax_item(logits, bias, scale):
    """Turn one (N, N) window's logits into softmax(logits * scale + bias) over each row, in place.

    Each row takes four passes: scale, bias and maximum in the first, then exp, the vectorised sum
    and the multiplication by its inverse. They gave the same values as the seven passes npsam made
    before, in half the time for 49-token rows and in three quarters for 196-token rows (one core of
    the AVX-512 Xeon of benchmarks/README.md).
    """
    tokens = logits.shape[0]
    for i in range(tokens):
        values = logits[i]
        row_bias = bias[i]
        # LLVM does not vectorise a float maximum here, so the loop compares integer keys instead.
        # Flipping the magnitude bits of negative floats makes the keys' signed order the floats'
        # order (-0.0 below 0.0), and LLVM vectorises a maximum of integers.
        peak_key = np.int32(-(2**31))
        for j in range(tokens):
            value = values[j] * scale + row_bias[j]
            values[j] = value
            key = _bits_of_float32(value)
            key = key ^ ((key >> 31) & 0x7FFFFFFF)
            peak_key = key if key > peak_key else peak_key
        _exp_shifted(values, _float32_from_bits(peak_key ^ ((peak_key >> 31) & 0x7FFFFFFF)))
        inverse = np.float32(1.0) / _sum_of(values)
        for j in range(tokens):
            values[j] *= inverse


@njit(cache=True, parallel=True, fastmath={"contract"}, error_model="numpy")
def window_softmax_inplace(logits, attention_bias, num_heads, scale):
    """Turn (B, N, N) window attention logits q k^T into softmax(q k^T * scale + bias) over the last axis.

    attention_bias is (heads, N, N), and batch item b belongs to head b % num_heads, as `gather_windows`
    orders them.
    """
    batch = logits.shape[0]
    for task in prange(batch):
        _window_softmax_item(logits[task], attention_bias[task % num_heads], scale)


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def window_softmax_serial(logits, attention_bias, num_heads, scale, first_item):
    """Run `window_softmax_inplace` on the calling thread, without holding the GIL, on part of a batch.

    logits[b] is batch item first_item + b, so it belongs to head (first_item + b) % num_heads.
    """
    for b in range(logits.shape[0]):
        _window_softmax_item(logits[b], attention_bias[(first_item + b) % num_heads], scale)


@njit(cache=True, parallel=True, error_model="numpy")
def scatter_windows(windows, height, width, window, num_heads):
    """Write per-window, per-head attention outputs (B, N, d), ordered as `gather_windows` makes them,
    back to an (H, W, heads * d) grid, dropping the padding tokens."""
    _, tokens, head_dim = windows.shape
    windows_x = -(-width // window)
    out = np.empty((height, width, num_heads * head_dim), dtype=np.float32)
    for row in prange(height):
        window_row = (row // window) * windows_x
        t_row = (row % window) * window
        for col in range(width):
            first_task = (window_row + col // window) * num_heads
            t = t_row + col % window
            target = out[row, col]
            for head in range(num_heads):
                source = windows[first_task + head, t]
                offset = head * head_dim
                for c in range(head_dim):
                    target[offset + c] = source[c]
    return out

# ---- Image resizing kernels ----
#
# OpenCV 4.10 `cv2.resize(..., interpolation=cv2.INTER_AREA)` of uint8 images, bit for bit, and torch's
# `F.interpolate(mode="bilinear", align_corners=False)` of float32 logits, fused with the sigmoid > 0.5
# threshold. The wrappers in `npsam.preprocessing` and `npsam.postprocessing` validate inputs, choose
# the path and allocate outputs. Images here are (H, W, C) uint8 with any C >= 1.

# Fixed-point scale of OpenCV's linear resize weights (INTER_RESIZE_COEF_BITS = 11).
_RESIZE_COEF_SCALE = 2048

# Logits at or above this value always pass float32 sigmoid > 0.5. Below it the float32 sigmoid itself
# decides, because it rounds to exactly 0.5 for 0 < x < 8.94e-8 (checked against torch 2.13).
_SIGMOID_EXACT_BELOW = np.float32(1e-6)


@njit(cache=True)
def area_weight_table(src_size, dst_size, scale):
    """Build the INTER_AREA weight table of one axis for a downscale by a non-integer factor.

    `scale` is 1 / (dst_size / src_size) in float64, as OpenCV computes it. Entry k adds
    `src[src_index[k]] * weight[k]` to `dst[dst_index[k]]`. Entries are sorted by output index and then
    by source index. Weights are computed in float64 and stored as float32, as OpenCV does.
    """
    capacity = 2 * src_size + 2 * dst_size
    dst_index = np.empty(capacity, np.int64)
    src_index = np.empty(capacity, np.int64)
    weight = np.empty(capacity, np.float32)
    k = 0
    for d in range(dst_size):
        start = d * scale
        end = start + scale
        cell = min(scale, src_size - start)
        first = int(math.ceil(start))
        last = min(int(math.floor(end)), src_size - 1)
        first = min(first, last)

        # Partly covered source pixel before the first whole one.
        if first - start > 1e-3:
            dst_index[k] = d
            src_index[k] = first - 1
            weight[k] = np.float32((first - start) / cell)
            k += 1

        for s in range(first, last):
            dst_index[k] = d
            src_index[k] = s
            weight[k] = np.float32(1.0 / cell)
            k += 1

        # Partly covered source pixel after the last whole one.
        if end - last > 1e-3:
            dst_index[k] = d
            src_index[k] = last
            weight[k] = np.float32(min(min(end - last, 1.0), cell) / cell)
            k += 1
    return dst_index[:k], src_index[:k], weight[:k]


@njit(cache=True, parallel=True)
def resize_area_general(src, dst, x_dst, x_src, x_weight, y_offsets, y_src, y_weight):
    """Downscale `src` (H, W, C) uint8 into `dst` (h, w, C) uint8 with INTER_AREA weight tables.

    `y_offsets` (h + 1,) delimits the y-table entries of each output row. Each source row is summed
    horizontally in float32 in table order, the output row accumulates `weight * row_sum` in float32,
    and the result is rounded half to even and saturated: the operation order of OpenCV's code.
    """
    out_height, out_width, channels = dst.shape
    for dy in prange(out_height):
        row_sum = np.zeros((out_width, channels), np.float32)
        acc = np.zeros((out_width, channels), np.float32)
        for j in range(y_offsets[dy], y_offsets[dy + 1]):
            sy = y_src[j]
            beta = y_weight[j]

            row_sum[:, :] = 0
            for k in range(x_dst.size):
                dx = x_dst[k]
                sx = x_src[k]
                alpha = x_weight[k]
                for c in range(channels):
                    row_sum[dx, c] += np.float32(src[sy, sx, c]) * alpha

            for dx in range(out_width):
                for c in range(channels):
                    acc[dx, c] += beta * row_sum[dx, c]

        for dx in range(out_width):
            for c in range(channels):
                value = np.rint(acc[dx, c])
                dst[dy, dx, c] = np.uint8(min(max(value, np.float32(0)), np.float32(255)))


@njit(cache=True, parallel=True)
def resize_area_integer(src, dst, factor_y, factor_x):
    """Downscale `src` (H, W, C) uint8 by whole factors into `dst` (H/fy, W/fx, C) uint8 (INTER_AREA).

    This is OpenCV's fast path. A 2x2 block of a 1-, 3- or 4-channel image becomes (sum + 2) >> 2,
    which rounds half up. Every other block becomes float32(sum) * float32(1 / area), rounded half to
    even and saturated.
    """
    out_height, out_width, channels = dst.shape
    area = factor_y * factor_x
    round_half_up = factor_y == 2 and factor_x == 2 and (channels == 1 or channels == 3 or channels == 4)
    inv_area = np.float32(1.0) / np.float32(area)
    for dy in prange(out_height):
        y0 = dy * factor_y
        for dx in range(out_width):
            x0 = dx * factor_x
            for c in range(channels):
                total = 0
                for y in range(y0, y0 + factor_y):
                    for x in range(x0, x0 + factor_x):
                        total += np.int64(src[y, x, c])
                if round_half_up:
                    dst[dy, dx, c] = np.uint8((total + 2) >> 2)
                else:
                    value = np.rint(np.float32(total) * inv_area)
                    dst[dy, dx, c] = np.uint8(min(max(value, np.float32(0)), np.float32(255)))


@njit(cache=True)
def area_linear_table(src_size, dst_size, scale, inv_scale):
    """Build one axis of OpenCV's INTER_AREA upscale: source index, 11-bit weights and first border index.

    Output d reads source pixels s = floor(d * scale) and s + 1. The fraction
    f = float32((d + 1) - (s + 1) * inv_scale) is set to 0 when not positive and otherwise reduced to
    its fractional part. The weights are round(float32(1 - f) * 2048) and round(f * 2048). Outputs from
    `border_start` on have s + 1 past the last pixel. For columns, OpenCV reads only pixel s there, with
    weight 2048. For rows, the caller clamps s + 1 instead, which gives the same result.
    """
    index = np.empty(dst_size, np.int64)
    weight0 = np.empty(dst_size, np.int64)
    weight1 = np.empty(dst_size, np.int64)
    border_start = dst_size
    for d in range(dst_size):
        s = int(math.floor(d * scale))
        frac = np.float32((d + 1) - (s + 1) * inv_scale)
        if frac <= 0:
            frac = np.float32(0.0)
        else:
            frac = frac - np.float32(math.floor(frac))

        if s + 1 >= src_size:
            border_start = min(border_start, d)
            if s >= src_size - 1:
                frac = np.float32(0.0)
                s = src_size - 1

        index[d] = s
        weight0[d] = int(np.rint((np.float32(1.0) - frac) * np.float32(_RESIZE_COEF_SCALE)))
        weight1[d] = int(np.rint(frac * np.float32(_RESIZE_COEF_SCALE)))
    return index, weight0, weight1, border_start


@njit(cache=True)
def _area_linear_row(src, sy, x_index, x_weight0, x_weight1, x_border_start, out):
    """Interpolate source row `sy` horizontally into `out` (w, C) int64, in 11-bit fixed point."""
    out_width, channels = out.shape
    for dx in range(out_width):
        sx = x_index[dx]
        for c in range(channels):
            if dx < x_border_start:
                out[dx, c] = (np.int64(src[sy, sx, c]) * x_weight0[dx]
                              + np.int64(src[sy, sx + 1, c]) * x_weight1[dx])
            else:
                out[dx, c] = np.int64(src[sy, sx, c]) * _RESIZE_COEF_SCALE


@njit(cache=True, parallel=True)
def resize_area_upscale(src, dst, x_index, x_weight0, x_weight1, x_border_start,
                        y_index, y_weight0, y_weight1):
    """Resize `src` (H, W, C) uint8 into `dst` (h, w, C) uint8 with OpenCV's INTER_AREA upscale rule.

    Rows combine as in OpenCV's SIMD kernel, whose rounding its scalar tail repeats. Each fixed-point
    row value is shifted right by 4, multiplied by its 11-bit weight and shifted right by 16. The two
    terms are added, and the sum is rounded as (v + 2) >> 2 and saturated. The textbook rounding
    (b0 * H0 + b1 * H1 + 2**21) >> 22 differs by 1 on a few percent of the pixels.
    """
    in_height = src.shape[0]
    out_height, out_width, channels = dst.shape
    for dy in prange(out_height):
        sy0 = y_index[dy]
        sy1 = min(sy0 + 1, in_height - 1)
        row0 = np.empty((out_width, channels), np.int64)
        row1 = np.empty((out_width, channels), np.int64)
        _area_linear_row(src, sy0, x_index, x_weight0, x_weight1, x_border_start, row0)
        _area_linear_row(src, sy1, x_index, x_weight0, x_weight1, x_border_start, row1)

        b0 = y_weight0[dy]
        b1 = y_weight1[dy]
        for dx in range(out_width):
            for c in range(channels):
                v = (((row0[dx, c] >> 4) * b0) >> 16) + (((row1[dx, c] >> 4) * b1) >> 16)
                dst[dy, dx, c] = np.uint8(min(max((v + 2) >> 2, 0), 255))


@njit(cache=True)
def fma_float32(a, b, c):
    """Return a * b + c for float32 values with a single rounding to float32, as a fused multiply-add.

    The product is exact in float64. The float64 sum can round onto the exact midpoint of two float32
    values. In that case the sum's rounding error, recovered exactly with Knuth's TwoSum, decides the
    float32 neighbour instead of the tie-to-even rule.
    """
    product = np.float64(a) * np.float64(b)
    addend = np.float64(c)
    total = product + addend
    rounded = np.float32(total)

    # TwoSum: total + error == product + addend exactly.
    addend_part = total - product
    error = (product - (total - addend_part)) + (addend - addend_part)
    if error == 0.0 or total == np.float64(rounded):
        return rounded

    toward = np.float32(np.inf) if total > np.float64(rounded) else np.float32(-np.inf)
    neighbour = np.nextafter(rounded, toward)
    if total != (np.float64(rounded) + np.float64(neighbour)) * 0.5:
        return rounded
    if error > 0.0:
        return max(rounded, neighbour)
    return min(rounded, neighbour)


@njit(cache=True)
def bilinear_table(in_size, out_size):
    """Build one axis of torch's bilinear resize (align_corners=False): two source indices and weights.

    As in torch 2.13's CPU kernel: scale = float32(in_size) / float32(out_size), the source coordinate
    scale * (d + 0.5) - 0.5 is rounded once to float32 (torch's build fuses it into one multiply-add),
    clamped at 0, and split into i0 = floor, i1 = min(i0 + 1, in_size - 1), lambda1 = src - i0 and
    lambda0 = 1 - lambda1. Equal sizes copy: i0 = i1 = d with weights 1 and 0.
    """
    index0 = np.empty(out_size, np.int64)
    index1 = np.empty(out_size, np.int64)
    lambda0 = np.empty(out_size, np.float32)
    lambda1 = np.empty(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    for d in range(out_size):
        if in_size == out_size:
            index0[d] = d
            index1[d] = d
            lambda0[d] = np.float32(1.0)
            lambda1[d] = np.float32(0.0)
            continue

        # Exact in float64 (a 24-bit scale times a short half-integer), so one rounding to float32.
        source = np.float32(np.float64(scale) * (d + 0.5) - 0.5)
        source = max(source, np.float32(0.0))
        i0 = min(int(math.floor(source)), in_size - 1)
        weight = min(max(source - np.float32(i0), np.float32(0.0)), np.float32(1.0))
        index0[d] = i0
        index1[d] = i0 + 1 if i0 < in_size - 1 else i0
        lambda1[d] = weight
        lambda0[d] = np.float32(1.0) - weight
    return index0, index1, lambda0, lambda1


@njit(cache=True)
def _bilinear_at(plane, y0, y1, h0, h1, x0, x1, w0, w1):
    """Interpolate one float32 value in torch's operation order: columns first, then rows, each a fused multiply-add."""
    top = fma_float32(plane[y0, x0], w0, plane[y0, x1] * w1)
    bottom = fma_float32(plane[y1, x0], w0, plane[y1, x1] * w1)
    return fma_float32(top, h0, bottom * h1)


@njit(cache=True, parallel=True)
def resize_bilinear_planes(planes, out, y_index0, y_index1, y_lambda0, y_lambda1,
                           x_index0, x_index1, x_lambda0, x_lambda1):
    """Resize each (h, w) float32 plane of `planes` (N, h, w) into `out` (N, H, W) with axis tables."""
    count, out_height, out_width = out.shape
    for row in prange(count * out_height):
        n = row // out_height
        dy = row % out_height
        plane = planes[n]
        y0 = y_index0[dy]
        y1 = y_index1[dy]
        h0 = y_lambda0[dy]
        h1 = y_lambda1[dy]
        for dx in range(out_width):
            out[n, dy, dx] = _bilinear_at(plane, y0, y1, h0, h1, x_index0[dx], x_index1[dx],
                                          x_lambda0[dx], x_lambda1[dx])


@njit(cache=True)
def _sigmoid_above_half(logit):
    """Return float32 sigmoid(logit) > 0.5, computing the sigmoid only for tiny positive logits."""
    if not logit > 0:  # also rejects NaN
        return False
    if logit >= _SIGMOID_EXACT_BELOW:
        return True
    one = np.float32(1.0)
    return one / (one + np.exp(-logit)) > np.float32(0.5)


@njit(cache=True)
def _classify_cells(logits, height, width):
    """Classify each cell of 2x2 neighbouring logits in the top-left (height, width) part of `logits`.

    Cell (y, x) covers rows y, min(y + 1, height - 1) and columns x, min(x + 1, width - 1). It is 1 when
    all four logits are at least `_SIGMOID_EXACT_BELOW`, -1 when all four are at most 0, and 0 otherwise.
    A bilinear value is a weighted mean of its cell's corners with non-negative weights that sum to 1
    within float32 rounding, so it cannot change the sign of a cell of class 1 or -1 (NaN gives 0).
    """
    cells = np.zeros((height, width), np.int8)
    for y in range(height):
        y1 = min(y + 1, height - 1)
        for x in range(width):
            x1 = min(x + 1, width - 1)
            a = logits[y, x]
            b = logits[y, x1]
            c = logits[y1, x]
            d = logits[y1, x1]
            if min(min(a, b), min(c, d)) >= _SIGMOID_EXACT_BELOW:
                cells[y, x] = 1
            elif max(max(a, b), max(c, d)) <= 0:
                cells[y, x] = -1
    return cells


@njit(cache=True)
def _output_span(index0, first, last):
    """Return (start, stop) of the output indices d whose source index index0[d] lies in [first, last]."""
    start = 0
    while start < index0.size and index0[start] < first:
        start += 1
    stop = index0.size
    while stop > start and index0[stop - 1] > last:
        stop -= 1
    return start, stop


@njit(cache=True, parallel=True)
def paint_bilinear_foreground(logits, in_height, in_width, out, label, y_index0, y_index1, y_lambda0, y_lambda1,
                              x_index0, x_index1, x_lambda0, x_lambda1):
    """Write `label` into `out` (H, W) where the bilinearly resized logits have sigmoid > 0.5.

    Only the top-left (in_height, in_width) part of `logits` is read, so the crop needs no copy. Pixels
    whose source cell has a certain sign skip the interpolation. Pixels below the threshold keep
    their value in `out`. No float buffer of the output size is allocated.
    """
    cells = _classify_cells(logits, in_height, in_width)
    out_height, out_width = out.shape
    # Only pixels whose cell is not certainly negative can be painted: restrict both loops to the
    # output rows and columns that read such cells (the index tables grow with the output index).
    rows = np.flatnonzero((cells >= 0).sum(axis=1))
    if rows.size == 0:
        return
    columns = np.flatnonzero((cells >= 0).sum(axis=0))
    dy_start, dy_stop = _output_span(y_index0, rows[0], rows[-1])
    dx_start, dx_stop = _output_span(x_index0, columns[0], columns[-1])
    for dy in prange(dy_start, dy_stop):
        y0 = y_index0[dy]
        y1 = y_index1[dy]
        h0 = y_lambda0[dy]
        h1 = y_lambda1[dy]
        for dx in range(dx_start, dx_stop):
            x0 = x_index0[dx]
            cell = cells[y0, x0]
            if cell > 0:
                out[dy, dx] = label
            elif cell == 0:
                value = _bilinear_at(logits, y0, y1, h0, h1, x0, x_index1[dx], x_lambda0[dx], x_lambda1[dx])
                if _sigmoid_above_half(value):
                    out[dy, dx] = label
