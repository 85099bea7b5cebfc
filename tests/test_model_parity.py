"""Stage-by-stage parity of npsam's LiteMedSAM with the PyTorch reference on real images.

Every stage is compared with `assert_close` and the tolerances of `numerics.TOLERANCES`. The negative
controls perturb one weight of npsam's copy and require the same comparison to fail, so a comparison
that cannot fail is caught.
"""

from __future__ import annotations

import numpy as np
import pytest
from numerics import assert_close
from reference.model import reference_decode, reference_stages
from reference.pipeline import reference_preprocess_image, reference_resize_box

from npsam.config import get_config
from npsam.model import Model

# One real image per modality that the challenge's 2D cases cover here.
PARITY_SOURCES = ["kvasir_seg", "ph2_dermoscopy", "hc18_fetal_us", "cxr_lungs_imlab", "stardist_dsb2018_nuclei"]
ENCODER_STAGES = ["patch_embed", "layers.0", "layers.1", "layers.2", "layers.3", "image_embeddings"]


@pytest.fixture(scope="module")
def npsam_model(litemedsam_state_dict_numpy):
    return Model(get_config("litemedsam"), litemedsam_state_dict_numpy)


def load_input(cases, source):
    """Return the model input (1, 3, 256, 256) and the 256-frame boxes of the first case of `source`."""
    image, boxes = cases(source)[0].load_image_and_boxes()
    input_image, _ = reference_preprocess_image(image)
    boxes_256 = np.stack([reference_resize_box(box, image.shape[:2]) for box in boxes]).astype(np.float32)
    return input_image, boxes_256


@pytest.fixture(scope="module", params=PARITY_SOURCES)
def encoded(request, cases, litemedsam_reference):
    """Reference stage outputs for the first case of one source."""
    input_image, boxes_256 = load_input(cases, request.param)
    return request.param, input_image, boxes_256, reference_stages(litemedsam_reference, input_image)


def test_encoder_stages_match_reference(encoded, npsam_model):
    source, input_image, _, expected = encoded
    actual = npsam_model.encoder_stage_outputs(input_image)
    assert sorted(actual) == sorted(ENCODER_STAGES)
    for stage in ENCODER_STAGES:
        assert_close(actual[stage], expected[stage], stage=stage)


def test_encode_equals_last_stage(encoded, npsam_model):
    _, input_image, _, expected = encoded
    embeddings = npsam_model.encode(input_image)
    assert_close(embeddings, expected["image_embeddings"], stage="image_embeddings")


def test_decoder_matches_reference(encoded, npsam_model, litemedsam_reference):
    """Decoder parity on the reference's own embeddings, so only decoder error is measured."""
    source, _, boxes_256, stages = encoded
    embeddings = stages["image_embeddings"]
    expected = reference_decode(litemedsam_reference, embeddings, boxes_256[:16])

    sparse, dense = npsam_model.encode_prompts(boxes_256[:16])
    assert_close(sparse, expected["sparse_embeddings"], stage="sparse_embeddings")
    assert_close(np.ascontiguousarray(dense), expected["dense_embeddings"], stage="dense_embeddings")
    assert_close(npsam_model.get_dense_pe(), expected["dense_pe"], stage="dense_pe")

    low_res_logits, iou_predictions = npsam_model.decode(embeddings, boxes_256[:16])
    assert_close(low_res_logits, expected["low_res_logits"], stage="low_res_logits")
    assert_close(iou_predictions, expected["iou_predictions"], stage="iou_predictions")
    sign_flips = int(np.sum((low_res_logits > 0) != (expected["low_res_logits"] > 0)))
    assert sign_flips == 0, f"{source}: {sign_flips} logits change sign between npsam and the reference"


def test_decode_batching_is_invisible(encoded, npsam_model):
    """Decoding boxes in batches of 1, 3 and 16 gives the same logits up to GEMM rounding (4e-7 relative seen)."""
    _, _, boxes_256, stages = encoded
    boxes = np.concatenate([boxes_256, boxes_256 + 5, boxes_256 - 5])[:7].clip(0, 255)
    single, _ = npsam_model.decode(stages["image_embeddings"], boxes, batch_size=1)
    triple, _ = npsam_model.decode(stages["image_embeddings"], boxes, batch_size=3)
    full, _ = npsam_model.decode(stages["image_embeddings"], boxes, batch_size=16)
    np.testing.assert_allclose(triple, single, atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(full, single, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("valid_size", [(192, 256), (256, 128), (50, 97), (1, 1), (256, 256)])
def test_decode_valid_corner_equals_full(encoded, npsam_model, valid_size):
    """Upscaling only the valid corner gives that corner of the full logits, to GEMM rounding."""
    _, _, boxes_256, stages = encoded
    side = npsam_model.prepare_image(stages["image_embeddings"])
    boxes = boxes_256[:2]
    full, full_iou = npsam_model.decode_prepared(side, boxes)
    corner, corner_iou = npsam_model.decode_prepared(side, boxes, valid_size=valid_size)

    rows, cols = (-(-size // 4) * 4 for size in valid_size)
    assert corner.shape == (len(boxes), 1, rows, cols)
    np.testing.assert_allclose(corner, full[..., :rows, :cols], atol=1e-5, rtol=1e-6)
    assert not np.any((corner > 0) != (full[..., :rows, :cols] > 0))
    np.testing.assert_array_equal(corner_iou, full_iou)


def test_decode_rejects_bad_valid_size(encoded, npsam_model):
    _, _, boxes_256, stages = encoded
    side = npsam_model.prepare_image(stages["image_embeddings"])
    for valid_size in [(0, 10), (10, 257), (-4, 8)]:
        with pytest.raises(ValueError, match="valid_size must lie within the"):
            npsam_model.decode_prepared(side, boxes_256[:1], valid_size=valid_size)


def perturbed_model(state_dict, key, index, delta):
    state = dict(state_dict)
    weight = state[key].copy()
    weight[index] += delta
    state[key] = weight
    return Model(get_config("litemedsam"), state)


def test_encoder_parity_fails_with_perturbed_weight(cases, litemedsam_reference, litemedsam_state_dict_numpy):
    input_image, _ = load_input(cases, "kvasir_seg")
    expected = reference_stages(litemedsam_reference, input_image)
    model = perturbed_model(
        litemedsam_state_dict_numpy, "image_encoder.layers.3.blocks.1.mlp.fc2.weight", (7, 11), 0.05
    )
    with pytest.raises(AssertionError, match="image_embeddings"):
        assert_close(model.encode(input_image), expected["image_embeddings"], stage="image_embeddings")


def test_decoder_parity_fails_with_perturbed_weight(cases, litemedsam_reference, litemedsam_state_dict_numpy):
    input_image, boxes_256 = load_input(cases, "kvasir_seg")
    embeddings = reference_stages(litemedsam_reference, input_image)["image_embeddings"]
    expected = reference_decode(litemedsam_reference, embeddings, boxes_256)
    model = perturbed_model(
        litemedsam_state_dict_numpy, "mask_decoder.transformer.layers.1.mlp.lin2.weight", (3, 5), 0.05
    )
    low_res_logits, _ = model.decode(embeddings, boxes_256)
    with pytest.raises(AssertionError, match="low_res_logits"):
        assert_close(low_res_logits, expected["low_res_logits"], stage="low_res_logits")


def test_prompt_parity_fails_with_perturbed_weight(cases, litemedsam_reference, litemedsam_state_dict_numpy):
    _, boxes_256 = load_input(cases, "kvasir_seg")
    embeddings = np.zeros((1, 256, 64, 64), dtype=np.float32)
    expected = reference_decode(litemedsam_reference, embeddings, boxes_256)
    model = perturbed_model(litemedsam_state_dict_numpy, "prompt_encoder.point_embeddings.3.weight", (0, 9), 0.01)
    sparse, _ = model.encode_prompts(boxes_256)
    with pytest.raises(AssertionError, match="sparse_embeddings"):
        assert_close(sparse, expected["sparse_embeddings"], stage="sparse_embeddings")


def test_constant_image_gives_finite_logits(npsam_model):
    """A constant image normalises to zeros; the model must still produce finite numbers."""
    embeddings = npsam_model.encode(np.zeros((1, 3, 256, 256), dtype=np.float32))
    assert np.isfinite(embeddings).all()
    low_res_logits, iou_predictions = npsam_model.decode(embeddings, np.array([[10, 10, 200, 200]], np.float32))
    assert np.isfinite(low_res_logits).all()
    assert np.isfinite(iou_predictions).all()


def test_encoder_rejects_wrong_input(npsam_model):
    with pytest.raises(ValueError, match=r"\(1, 3, 256, 256\)"):
        npsam_model.encode(np.zeros((1, 3, 128, 128), dtype=np.float32))
    with pytest.raises(ValueError, match="float32"):
        npsam_model.encode(np.zeros((1, 3, 256, 256), dtype=np.float64))


def test_decoder_rejects_bad_boxes(npsam_model):
    embeddings = np.zeros((1, 256, 64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        npsam_model.decode(embeddings, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        npsam_model.decode(embeddings, np.array([[0, 0, np.nan, 10]], dtype=np.float32))
    with pytest.raises(ValueError, match="image_embeddings"):
        npsam_model.decode(np.zeros((256, 64, 64), dtype=np.float32), np.array([[0, 0, 10, 10]]))
