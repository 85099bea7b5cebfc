"""Kernels and kernel-based steps checked against NumPy written from their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from npsam import blas, image_encoder, kernels
from npsam.image_encoder import attend_in_windows

# (height, width, window, heads): grids that fill their windows exactly and grids that need padding,
# with the window sizes of the registered models (7 and 14).
GRIDS = [(14, 7, 7, 2), (12, 10, 7, 3), (16, 16, 14, 1), (5, 9, 7, 2), (28, 20, 14, 2)]


def random_inputs(height, width, window, heads, head_dim, seed):
    """Return qkv (H, W, 3C) without its bias, the qkv bias (3C,), the padding tokens' qkv (3C,) and an attention bias (heads, N, N)."""
    rng = np.random.default_rng(seed)
    qkv = rng.normal(0.0, 1.0, (height, width, 3 * heads * head_dim)).astype(np.float32)
    qkv_bias = rng.normal(0.0, 1.0, 3 * heads * head_dim).astype(np.float32)
    padding_qkv = rng.normal(0.0, 1.0, 3 * heads * head_dim).astype(np.float32)
    bias = rng.normal(0.0, 2.0, (heads, window * window, window * window)).astype(np.float32)
    return qkv, qkv_bias, padding_qkv, bias


def numpy_window_attention(qkv, padding_qkv, bias, window, heads, head_dim, scale):
    """Float64 window attention written from the definition: softmax(q k^T * scale + bias) v per window."""
    height, width, _ = qkv.shape
    padded_h = -(-height // window) * window
    padded_w = -(-width // window) * window
    grid = np.empty((padded_h, padded_w, qkv.shape[2]), dtype=np.float64)
    grid[:] = padding_qkv
    grid[:height, :width] = qkv
    tokens = window * window
    x = grid.reshape(padded_h // window, window, padded_w // window, window, heads, 3, head_dim)
    x = x.transpose(0, 2, 4, 5, 1, 3, 6).reshape(padded_h // window, padded_w // window, heads, 3, tokens, head_dim)
    q, k, v = x[:, :, :, 0], x[:, :, :, 1], x[:, :, :, 2]
    logits = q @ np.swapaxes(k, -1, -2) * scale + bias.astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    out = weights @ v  # (wy, wx, heads, tokens, d)
    out = out.reshape(padded_h // window, padded_w // window, heads, window, window, head_dim)
    out = out.transpose(0, 3, 1, 4, 2, 5).reshape(padded_h, padded_w, heads * head_dim)
    return out[:height, :width]


@pytest.mark.parametrize("height, width, window, heads", GRIDS)
@pytest.mark.parametrize("head_dim", [32, 8])
def test_window_attention_matches_numpy(height, width, window, heads, head_dim):
    qkv, qkv_bias, padding_qkv, bias = random_inputs(height, width, window, heads, head_dim, seed=height * 100 + width)
    out = attend_in_windows(qkv, qkv_bias, padding_qkv, bias, window, heads)
    expected = numpy_window_attention(qkv + qkv_bias, padding_qkv, bias, window, heads, head_dim, head_dim**-0.5)
    assert out.shape == (height, width, heads * head_dim)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


# Chunks of 1 and 3 windows-and-heads, so that chunks and threads start at every head offset.
@pytest.mark.parametrize("chunk_items", [1, 3])
def test_window_attention_chunks_equal_one_chunk(monkeypatch, chunk_items):
    height, width, window, heads = 12, 10, 7, 3
    qkv, qkv_bias, padding_qkv, bias = random_inputs(height, width, window, heads, 32, seed=21)
    whole = attend_in_windows(qkv, qkv_bias, padding_qkv, bias, window, heads)
    monkeypatch.setattr(image_encoder, "ATTENTION_CHUNK_BYTES", chunk_items * (window**4) * 4)
    chunked = attend_in_windows(qkv, qkv_bias, padding_qkv, bias, window, heads)
    np.testing.assert_array_equal(chunked, whole)


def test_window_attention_without_openblas_threads(monkeypatch):
    """The path for other BLAS libraries (stacked products, parallel softmax) gives the same result."""
    height, width, window, heads = 12, 10, 7, 3
    qkv, qkv_bias, padding_qkv, bias = random_inputs(height, width, window, heads, 32, seed=22)
    threaded = attend_in_windows(qkv, qkv_bias, padding_qkv, bias, window, heads)
    monkeypatch.setattr(blas, "split_threads", lambda: 1)
    single = attend_in_windows(qkv, qkv_bias, padding_qkv, bias, window, heads)
    np.testing.assert_array_equal(single, threaded)


def test_window_change_stays_in_window():
    """Changing one key of one head in one window changes exactly that window's outputs of that head."""
    height, width, window, heads = 12, 10, 7, 3
    qkv, qkv_bias, padding_qkv, bias = random_inputs(height, width, window, heads, 32, seed=7)
    before = attend_in_windows(qkv, qkv_bias, padding_qkv, bias, window, heads)
    changed = qkv.copy()
    changed[8, 3, 1 * 96 + 32 + 5] += 3.0  # head 1, key channel 5 of token (8, 3): window (1, 0)
    after = attend_in_windows(changed, qkv_bias, padding_qkv, bias, window, heads)
    differs = np.any(after != before, axis=-1)
    expected_window = np.zeros((height, width), dtype=bool)
    expected_window[7:14, 0:7] = True
    np.testing.assert_array_equal(differs, expected_window)
    head_differs = np.any(after != before, axis=(0, 1)).reshape(heads, 32).any(axis=1)
    np.testing.assert_array_equal(head_differs, [False, True, False])


def test_padding_reaches_edge_windows_only():
    height, width, window, heads = 12, 10, 7, 2  # padded to 14 x 14: only window (0, 0) has no padding
    qkv, qkv_bias, padding_qkv, bias = random_inputs(height, width, window, heads, 32, seed=11)
    before = attend_in_windows(qkv, qkv_bias, padding_qkv, bias, window, heads)
    changed = padding_qkv.copy()
    changed[32 + 3] += 3.0  # key channel 3 of head 0
    after = attend_in_windows(qkv, qkv_bias, changed, bias, window, heads)
    differs = np.any(after[..., :32] != before[..., :32], axis=-1)
    expected = np.ones((height, width), dtype=bool)
    expected[:7, :7] = False
    np.testing.assert_array_equal(differs, expected)
    np.testing.assert_array_equal(after[..., 32:], before[..., 32:])  # head 1 reads its own channels only


# Rows far from zero relative to their spread test the one-pass variance for cancellation.
@pytest.mark.parametrize("mean, spread", [(0.5, 2.0), (1000.0, 0.05), (-300.0, 1.0)])
def test_layer_norm_matches_numpy(mean, spread):
    rng = np.random.default_rng(3)
    x = (rng.normal(mean, spread, (37, 96))).astype(np.float32)
    weight = rng.normal(1.0, 0.2, 96).astype(np.float32)
    bias = rng.normal(0.0, 0.2, 96).astype(np.float32)
    out = kernels.layer_norm(x, weight, bias, 1e-5)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean(axis=1, keepdims=True)) / np.sqrt(x64.var(axis=1, keepdims=True) + 1e-5) * weight + bias
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("batch", [1, 3])
def test_residual_layer_norm_equals_separate_passes(batch):
    """The fused kernel gives what the unfused NumPy additions and the layer norm kernel give, bit for bit."""
    from npsam.transformer import LN_EPS, layer_norm, residual_layer_norm

    rng = np.random.default_rng(batch)
    tokens, channels = 50, 64
    x = rng.normal(0.0, 1.0, (tokens, channels)).astype(np.float32)  # shared by the batch, like image tokens
    update = rng.normal(0.0, 1.0, (batch, tokens, channels)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, channels).astype(np.float32)
    pe = rng.normal(0.0, 1.0, (tokens, channels)).astype(np.float32)
    norm = {"weight": rng.normal(1.0, 0.1, channels).astype(np.float32), "bias": rng.normal(0.0, 0.1, channels).astype(np.float32)}
    originals = [a.copy() for a in (x, update, bias, pe)]

    keys, keys_with_pe = residual_layer_norm(x, update, bias, norm, pe)

    expected = layer_norm(x + (update + bias), norm)
    assert LN_EPS == 1e-5
    np.testing.assert_array_equal(keys, expected)
    np.testing.assert_array_equal(keys_with_pe, expected + pe)
    for original, argument in zip(originals, (x, update, bias, pe)):
        np.testing.assert_array_equal(argument, original)  # inputs are left as they were

    # Per-box image tokens (B, L, E) as x, as in the second two-way layer.
    per_box = rng.normal(0.0, 1.0, (batch, tokens, channels)).astype(np.float32)
    keys, keys_with_pe = residual_layer_norm(per_box, update, bias, norm, pe)
    np.testing.assert_array_equal(keys, layer_norm(per_box + (update + bias), norm))
    np.testing.assert_array_equal(keys_with_pe, layer_norm(per_box + (update + bias), norm) + pe)


def test_bias_residual_inplace_equals_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, (33, 40)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, 40).astype(np.float32)
    residual = rng.normal(0.0, 1.0, (33, 40)).astype(np.float32)
    expected = residual + (x + bias)
    kernels.bias_residual_inplace(x, bias, residual)
    np.testing.assert_array_equal(x, expected)


def test_bias_inplace_without_residual_equals_numpy():
    rng = np.random.default_rng(6)
    x = rng.normal(0.0, 1.0, (33, 40)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, 40).astype(np.float32)
    expected = x + bias
    kernels.bias_residual_inplace(x, bias, np.empty((0, 40), np.float32))
    np.testing.assert_array_equal(x, expected)


# Row counts and widths around the kernel's blocks of _GELU_CHUNK values: one row per block, several
# rows per block, and a last block that holds fewer rows than the others.
@pytest.mark.parametrize("rows, channels", [(3, 3000), (70, 64), (1, 5), (129, 48)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_bias_gelu_inplace_matches_numpy(rows, channels, with_residual):
    from scipy.special import erf

    rng = np.random.default_rng(rows + channels)
    x = rng.normal(0.0, 2.0, (rows, channels)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, channels).astype(np.float32)
    summed = x + bias
    residual = np.empty((0, channels), np.float32)
    if with_residual:
        residual = rng.normal(0.0, 1.0, (rows, channels)).astype(np.float32)
        summed = summed + residual  # the same float32 additions as the kernel, in the same order
    kernels.bias_gelu_inplace(x, bias, residual)
    expected = summed.astype(np.float64) / 2 * (1 + erf(summed.astype(np.float64) / np.sqrt(2)))
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-6 * max(1.0, float(np.abs(expected).max())))


def test_gelu_error_bound_on_dense_grid():
    """GELU stays within 2.5e-7 * max(1, |x|) of float64 GELU, also far outside the range of the erf fit.

    Measured: 2.0e-7 at x = 4.55. The Abramowitz and Stegun form that npsam used before reached 1.9e-7.
    """
    from scipy.special import erf

    grid = np.linspace(-12.0, 12.0, 2_400_001)
    extremes = [-1e30, -100.0, -20.0, 20.0, 100.0, 1e30, 0.0, -0.0, 1e-30, -1e-30]
    x = np.concatenate([grid, extremes]).astype(np.float32)
    out = x.reshape(1, -1).copy()
    kernels.bias_gelu_inplace(out, np.zeros(x.size, np.float32), np.empty((0, x.size), np.float32))
    wide = x.astype(np.float64)
    exact = wide / 2 * (1 + erf(wide / np.sqrt(2)))
    scaled_error = np.abs(out[0] - exact) / np.maximum(1.0, np.abs(wide))
    worst = int(np.argmax(scaled_error))
    assert scaled_error[worst] <= 2.5e-7, f"GELU({x[worst]}) = {out[0, worst]}, float64 {exact[worst]}"


@pytest.mark.parametrize("height, width, stride", [(9, 7, 1), (8, 8, 2), (7, 10, 2), (1, 5, 1), (3, 3, 1)])
@pytest.mark.parametrize("apply_gelu", [False, True])
def test_depthwise_conv3x3_matches_numpy(height, width, stride, apply_gelu):
    from scipy.special import erf

    rng = np.random.default_rng(height * 10 + width + stride)
    channels = 24
    x = rng.normal(0.0, 1.0, (height, width, channels)).astype(np.float32)
    weight = rng.normal(0.0, 1.0, (3, 3, channels)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, channels).astype(np.float32)
    out = kernels.depthwise_conv3x3(x, weight, bias, stride, apply_gelu)

    padded = np.zeros((height + 2, width + 2, channels))
    padded[1:-1, 1:-1] = x
    full = sum(padded[di : di + height, dj : dj + width] * weight[di, dj].astype(np.float64) for di in range(3) for dj in range(3))
    expected = (full + bias)[::stride, ::stride]
    if apply_gelu:
        expected = expected / 2 * (1 + erf(expected / np.sqrt(2)))
    assert out.shape == expected.shape
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


# Heights below and above the kernel's 8 bands, odd sizes and both strides.
@pytest.mark.parametrize("height, width, stride", [(9, 7, 1), (8, 8, 2), (7, 10, 2), (1, 5, 1), (37, 11, 1), (30, 6, 2)])
@pytest.mark.parametrize("apply_gelu", [False, True])
def test_gelu_depthwise_equals_separate_passes(height, width, stride, apply_gelu):
    rng = np.random.default_rng(height * 10 + width + stride)
    channels = 24
    x = rng.normal(0.0, 1.0, (height, width, channels)).astype(np.float32)
    input_bias = rng.normal(0.0, 1.0, channels).astype(np.float32)
    weight = rng.normal(0.0, 1.0, (3, 3, channels)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, channels).astype(np.float32)
    out = kernels.gelu_depthwise_conv3x3(x, input_bias, weight, bias, stride, apply_gelu)

    activated = x.reshape(-1, channels).copy()
    kernels.bias_gelu_inplace(activated, input_bias, np.empty((0, channels), np.float32))
    expected = kernels.depthwise_conv3x3(activated.reshape(x.shape), weight, bias, stride, apply_gelu)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


def random_expansion(channels, expanded, out_channels, seed):
    """Return conv1, conv2 (depthwise) and conv3 weights as `npsam.model` prepares them."""
    rng = np.random.default_rng(seed)

    def conv(shape):
        return {
            "weight": rng.normal(0.0, 0.5, shape).astype(np.float32),
            "bias": rng.normal(0.0, 0.5, shape[-1]).astype(np.float32),
        }

    return conv((channels, expanded)), conv((3, 3, expanded)), conv((expanded, out_channels))


# MBConv (stride 1, residual and GELU at the end) and PatchMerging (strides 1 and 2, no activation),
# on grids of one row, of fewer rows than a chunk and of many chunks. Bands run on one and on three
# threads. Chunks of one output row make the ring wrap inside a chunk's rows.
@pytest.mark.parametrize(
    "height, width, stride, residual_gelu",
    [(1, 5, 1, True), (9, 7, 1, True), (23, 6, 1, True), (9, 7, 1, False), (8, 8, 2, False), (21, 5, 2, False), (2, 3, 2, False)],
)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("chunk_bytes", [1, 4096])
def test_expansion_equals_whole_grid_passes(monkeypatch, height, width, stride, residual_gelu, threads, chunk_bytes):
    channels, expanded = 8, 24
    out_channels = channels if residual_gelu else 12
    conv1, conv2, conv3 = random_expansion(channels, expanded, out_channels, seed=height + width + stride)
    x = np.random.default_rng(height * width).normal(0.0, 1.0, (height, width, channels)).astype(np.float32)
    before = x.copy()

    hidden = image_encoder.gelu_depthwise3x3(image_encoder.gemm_only(x, conv1), conv1, conv2, stride)
    if residual_gelu:
        expected = image_encoder.conv1x1(hidden, conv3, apply_gelu=True, residual=x)
    else:
        expected = image_encoder.conv1x1(hidden, conv3)

    monkeypatch.setattr(image_encoder, "EXPANDED_CHUNK_BYTES", chunk_bytes)
    if threads > 1:
        # run_split uses OpenBLAS's thread count, so set it for this call and restore it afterwards:
        # left at 3 on a 2-core machine, it would slow down every later test.
        found = blas.openblas_threads()
        if found is None:
            pytest.skip("bands on several threads need NumPy's OpenBLAS")
        before_count = found.get()
        found.set(threads)
        try:
            out = image_encoder.expand_depthwise_project(x, conv1, conv2, conv3, stride, residual_gelu)
        finally:
            found.set(before_count)
    else:
        monkeypatch.setattr(blas, "openblas_threads", lambda: None)
        out = image_encoder.expand_depthwise_project(x, conv1, conv2, conv3, stride, residual_gelu)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(x, before)


def test_expansion_rejects_residual_with_stride():
    conv1, conv2, conv3 = random_expansion(8, 24, 8, seed=7)
    x = np.zeros((6, 6, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="residual_gelu=False"):
        image_encoder.expand_depthwise_project(x, conv1, conv2, conv3, 2, True)


def test_expansion_step_depends_on_every_weight():
    """Negative control for the test above: changing any one weight or bias changes the output."""
    conv1, conv2, conv3 = random_expansion(8, 24, 8, seed=5)
    x = np.random.default_rng(6).normal(0.0, 1.0, (9, 7, 8)).astype(np.float32)
    reference = image_encoder.expand_depthwise_project(x, conv1, conv2, conv3, 1, True)
    for conv in (conv1, conv2, conv3):
        for name in ("weight", "bias"):
            original = conv[name]
            changed = original.copy()
            changed.flat[-1] += 0.5
            conv[name] = changed
            out = image_encoder.expand_depthwise_project(x, conv1, conv2, conv3, 1, True)
            conv[name] = original
            assert np.abs(out - reference).max() > 1e-4, name


@pytest.mark.parametrize("height, width", [(5, 4), (1, 1), (3, 7)])
def test_patches3x3_matches_padded_slices(height, width):
    rng = np.random.default_rng(height + 10 * width)
    channels = 6
    x = rng.normal(0.0, 1.0, (height, width, channels)).astype(np.float32)
    padded = np.zeros((height + 2, width + 2, channels), dtype=np.float32)
    padded[1:-1, 1:-1] = x
    expected = np.stack([padded[di : di + height, dj : dj + width] for di in range(3) for dj in range(3)], axis=2)
    np.testing.assert_array_equal(kernels.patches3x3(x), expected.reshape(height * width, 9 * channels))


@pytest.mark.parametrize("rows, columns", [(4096, 256), (7, 33), (1, 1), (40, 16)])
def test_transpose2d_equals_numpy(rows, columns):
    x = np.random.default_rng(rows).normal(0.0, 1.0, (rows, columns)).astype(np.float32)
    out = kernels.transpose2d(x)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, x.T)


def test_serial_kernels_equal_parallel_ones():
    rng = np.random.default_rng(9)
    x = rng.normal(0.0, 3.0, (300, 7)).astype(np.float32)
    weight = rng.normal(1.0, 0.2, 7).astype(np.float32)
    bias = rng.normal(0.0, 0.2, 7).astype(np.float32)
    np.testing.assert_array_equal(kernels.layer_norm_serial(x, weight, bias, 1e-5), kernels.layer_norm(x, weight, bias, 1e-5))

    serial, parallel = x.copy(), x.copy()
    kernels.softmax_inplace_serial(serial)
    kernels.softmax_inplace(parallel)
    np.testing.assert_array_equal(serial, parallel)
    x64 = x.astype(np.float64)
    expected = np.exp(x64 - x64.max(axis=1, keepdims=True))
    np.testing.assert_allclose(serial, expected / expected.sum(axis=1, keepdims=True), rtol=0, atol=1e-6)
