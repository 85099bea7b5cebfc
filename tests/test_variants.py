"""SwiftMedSAM v1/v2: parameter counts, multiply-add counts, and stage parity with the PyTorch classes.

Trained SwiftMedSAM weights are not public, so both engines load the same seeded random weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numerics import assert_close
from reference.model import load_reference_model, reference_decode, reference_stages
from reference.pipeline import reference_preprocess_image, reference_resize_box
from torch.utils.flop_counter import FlopCounterMode

from npsam.config import MODELS, get_config, multiply_adds
from npsam.model import Model
from npsam.weights import random_state_dict

EXPECTED_PARAMETERS = {"litemedsam": 9_791_300, "swiftmedsam-v1": 6_996_636, "swiftmedsam-v2": 5_942_388}
VARIANTS = ["swiftmedsam-v1", "swiftmedsam-v2"]
ENCODER_STAGES = ["patch_embed", "layers.0", "layers.1", "layers.2", "layers.3", "image_embeddings"]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_parameter_count(name):
    model = Model(get_config(name), random_state_dict(get_config(name)))
    assert model.info.num_parameters == EXPECTED_PARAMETERS[name]


def test_registry_names():
    assert sorted(MODELS) == sorted(EXPECTED_PARAMETERS)


@pytest.fixture(scope="module")
def real_input(cases):
    image, boxes = cases("kvasir_seg")[0].load_image_and_boxes()
    input_image, _ = reference_preprocess_image(image)
    boxes_256 = np.stack([reference_resize_box(box, image.shape[:2]) for box in boxes]).astype(np.float32)
    return input_image, boxes_256


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_multiply_adds_match_torch_flop_counter(name, real_input):
    """npsam's analytic count equals torch's FlopCounterMode (2 FLOPs per multiply-add) on the reference."""
    config = get_config(name)
    reference = load_reference_model(config, random_state_dict(config))
    input_image, boxes_256 = real_input
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        embeddings = reference.image_encoder(torch.from_numpy(input_image))
        encoder_flops = counter.get_total_flops()
        sparse, dense = reference.prompt_encoder(points=None, boxes=torch.from_numpy(boxes_256[:1, None]), masks=None)
        reference.mask_decoder(
            image_embeddings=embeddings,
            image_pe=reference.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        total_flops = counter.get_total_flops()
    counted = multiply_adds(config)
    assert 2 * counted["image_encoder"] == encoder_flops
    assert 2 * counted["total"] == total_flops


def test_swiftmedsam_v2_multiply_adds_near_paper():
    """The SwiftMedSAM paper reports 30.04 G for v2 (fvcore, which also counts norm layers)."""
    total = multiply_adds(get_config("swiftmedsam-v2"))["total"]
    assert 29.7e9 < total < 30.04e9


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    config = get_config(request.param)
    state = random_state_dict(config, seed=1)
    return config, state, Model(config, state), load_reference_model(config, state)


def test_variant_encoder_stages_match_reference(variant, real_input):
    config, _, model, reference = variant
    input_image, _ = real_input
    expected = reference_stages(reference, input_image)
    actual = model.encoder_stage_outputs(input_image)
    for stage in ENCODER_STAGES:
        assert_close(actual[stage], expected[stage], stage=stage)


def test_variant_decoder_matches_reference(variant, real_input):
    config, _, model, reference = variant
    input_image, boxes_256 = real_input
    embeddings = reference_stages(reference, input_image)["image_embeddings"]
    expected = reference_decode(reference, embeddings, boxes_256)
    sparse, _ = model.encode_prompts(boxes_256)
    assert_close(sparse, expected["sparse_embeddings"], stage="sparse_embeddings")
    low_res_logits, iou_predictions = model.decode(embeddings, boxes_256)
    assert_close(low_res_logits, expected["low_res_logits"], stage="low_res_logits")
    assert_close(iou_predictions, expected["iou_predictions"], stage="iou_predictions")


def test_variant_parity_fails_with_perturbed_weight(variant, real_input):
    config, state, _, reference = variant
    input_image, boxes_256 = real_input
    embeddings = reference_stages(reference, input_image)["image_embeddings"]
    expected = reference_decode(reference, embeddings, boxes_256)
    perturbed = dict(state)
    key = "mask_decoder.output_hypernetworks_mlps.0.layers.2.bias"
    perturbed[key] = state[key].copy()
    perturbed[key][0] += 0.5
    low_res_logits, _ = Model(config, perturbed).decode(embeddings, boxes_256)
    with pytest.raises(AssertionError, match="low_res_logits"):
        assert_close(low_res_logits, expected["low_res_logits"], stage="low_res_logits")
