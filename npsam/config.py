"""Model configurations: one frozen dataclass per architecture and a registry of the named variants.

Every size in the image encoder, prompt encoder and mask decoder is read from a `ModelConfig`, so a
variant with other depths, heads or MLP widths needs a new registry entry and no new code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

__all__ = [
    "ModelConfig",
    "MODELS",
    "get_config",
    "expected_state_dict_shapes",
    "multiply_adds",
]


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a LiteMedSAM-style model (TinyViT encoder, SAM prompt encoder and decoder)."""

    name: str

    # TinyViT image encoder. Stage 0 is convolutional (MBConv blocks); stages 1.. are attention blocks.
    image_size: int = 256
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: int = 4
    mbconv_expand_ratio: int = 4
    local_conv_size: int = 3

    # Prompt encoder and image embedding.
    prompt_embed_dim: int = 256
    image_embedding_size: int = 64
    mask_in_chans: int = 16

    # Mask decoder and its two-way transformer.
    num_multimask_outputs: int = 3
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    attention_downsample_rate: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        stages = len(self.embed_dims)
        for field in ("depths", "num_heads", "window_sizes"):
            if len(getattr(self, field)) != stages:
                raise ValueError(
                    f"ModelConfig {self.name!r}: {field} has {len(getattr(self, field))} entries "
                    f"but embed_dims has {stages}; give one value per encoder stage"
                )
        for stage in range(1, stages):
            if self.embed_dims[stage] % self.num_heads[stage]:
                raise ValueError(
                    f"ModelConfig {self.name!r}: embed_dims[{stage}]={self.embed_dims[stage]} is not "
                    f"divisible by num_heads[{stage}]={self.num_heads[stage]}"
                )
        internal_dim = self.prompt_embed_dim // self.attention_downsample_rate
        if self.prompt_embed_dim % self.decoder_num_heads or internal_dim % self.decoder_num_heads:
            raise ValueError(
                f"ModelConfig {self.name!r}: decoder_num_heads={self.decoder_num_heads} must divide "
                f"both prompt_embed_dim={self.prompt_embed_dim} and its downsampled width {internal_dim}"
            )
        if self.image_size // 4 != self.image_embedding_size:
            raise ValueError(
                f"ModelConfig {self.name!r}: the encoder downsamples by 4, so image_size="
                f"{self.image_size} needs image_embedding_size={self.image_size // 4}, "
                f"not {self.image_embedding_size}"
            )

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1

    def stage_resolution(self, stage: int) -> int:
        """Return the grid side of encoder stage `stage` (stage 3 keeps stage 2's 64x64 grid)."""
        return self.image_size // (2 ** min(stage, 2))

    def downsample_stride(self, stage: int) -> int:
        """Return the depthwise stride of the patch merging after `stage`.

        TinyViT picks stride 1 when the merged width is 320, 448 or 576 and stride 2 otherwise, which for
        LiteMedSAM keeps stage 3 at the 64x64 grid of stage 2.
        """
        return 1 if self.embed_dims[stage + 1] in (320, 448, 576) else 2

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"model config has unknown fields {unknown}; upgrade npsam to read it")
        for name, value in fields.items():
            if isinstance(value, list):
                fields[name] = tuple(value)
        return cls(**fields)


MODELS: dict[str, ModelConfig] = {
    "litemedsam": ModelConfig(name="litemedsam"),
    # SwiftMedSAM v1 and v2 keep LiteMedSAM's widths and change only depths, decoder MLP width, decoder
    # heads and the IoU head depth (SwiftMedSAM paper, Table 1).
    "swiftmedsam-v1": ModelConfig(
        name="swiftmedsam-v1",
        depths=(2, 2, 4, 2),
        decoder_depth=1,
        decoder_mlp_dim=1024,
        decoder_num_heads=8,
        iou_head_depth=2,
    ),
    "swiftmedsam-v2": ModelConfig(
        name="swiftmedsam-v2",
        depths=(1, 2, 2, 2),
        decoder_depth=1,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_depth=2,
    ),
}


def get_config(name: str) -> ModelConfig:
    """Return the registered config called `name`."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model name {name!r}; choose one of {sorted(MODELS)} or pass a path to an "
            f"npsam .h5 weights file"
        ) from None


def _conv2d_bn_shapes(prefix: str, weight_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    out_channels = weight_shape[0]
    return {
        f"{prefix}.c.weight": weight_shape,
        f"{prefix}.bn.weight": (out_channels,),
        f"{prefix}.bn.bias": (out_channels,),
        f"{prefix}.bn.running_mean": (out_channels,),
        f"{prefix}.bn.running_var": (out_channels,),
        f"{prefix}.bn.num_batches_tracked": (),
    }


def _linear_shapes(prefix: str, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out_features, in_features), f"{prefix}.bias": (out_features,)}


def _norm_shapes(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}


def _image_encoder_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    p = "image_encoder"
    dims = config.embed_dims
    k = config.local_conv_size

    stem_dim = dims[0] // 2
    shapes.update(_conv2d_bn_shapes(f"{p}.patch_embed.seq.0", (stem_dim, config.in_chans, 1, 1)))
    shapes.update(_conv2d_bn_shapes(f"{p}.patch_embed.seq.2", (dims[0], stem_dim, 1, 1)))

    hidden = dims[0] * config.mbconv_expand_ratio
    for block in range(config.depths[0]):
        b = f"{p}.layers.0.blocks.{block}"
        shapes.update(_conv2d_bn_shapes(f"{b}.conv1", (hidden, dims[0], 1, 1)))
        shapes.update(_conv2d_bn_shapes(f"{b}.conv2", (hidden, 1, 3, 3)))
        shapes.update(_conv2d_bn_shapes(f"{b}.conv3", (dims[0], hidden, 1, 1)))

    for stage in range(1, len(dims)):
        dim = dims[stage]
        heads = config.num_heads[stage]
        window = config.window_sizes[stage]
        for block in range(config.depths[stage]):
            b = f"{p}.layers.{stage}.blocks.{block}"
            shapes[f"{b}.attn.attention_biases"] = (heads, window * window)
            shapes.update(_norm_shapes(f"{b}.attn.norm", dim))
            shapes.update(_linear_shapes(f"{b}.attn.qkv", 3 * dim, dim))
            shapes.update(_linear_shapes(f"{b}.attn.proj", dim, dim))
            shapes.update(_norm_shapes(f"{b}.mlp.norm", dim))
            shapes.update(_linear_shapes(f"{b}.mlp.fc1", config.mlp_ratio * dim, dim))
            shapes.update(_linear_shapes(f"{b}.mlp.fc2", dim, config.mlp_ratio * dim))
            shapes.update(_conv2d_bn_shapes(f"{b}.local_conv", (dim, 1, k, k)))

    # Patch merging sits at the end of every stage but the last.
    for stage in range(len(dims) - 1):
        d = f"{p}.layers.{stage}.downsample"
        out_dim = dims[stage + 1]
        shapes.update(_conv2d_bn_shapes(f"{d}.conv1", (out_dim, dims[stage], 1, 1)))
        shapes.update(_conv2d_bn_shapes(f"{d}.conv2", (out_dim, 1, 3, 3)))
        shapes.update(_conv2d_bn_shapes(f"{d}.conv3", (out_dim, out_dim, 1, 1)))

    e = config.prompt_embed_dim
    shapes[f"{p}.neck.0.weight"] = (e, dims[-1], 1, 1)
    shapes.update(_norm_shapes(f"{p}.neck.1", e))
    shapes[f"{p}.neck.2.weight"] = (e, e, 3, 3)
    shapes.update(_norm_shapes(f"{p}.neck.3", e))
    return shapes


def _prompt_encoder_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    p = "prompt_encoder"
    e = config.prompt_embed_dim
    m = config.mask_in_chans
    shapes: dict[str, tuple[int, ...]] = {
        f"{p}.pe_layer.positional_encoding_gaussian_matrix": (2, e // 2),
        f"{p}.not_a_point_embed.weight": (1, e),
        f"{p}.no_mask_embed.weight": (1, e),
    }
    for point in range(4):
        shapes[f"{p}.point_embeddings.{point}.weight"] = (1, e)
    # The mask branch is unused for box prompts but is part of every checkpoint.
    shapes[f"{p}.mask_downscaling.0.weight"] = (m // 4, 1, 2, 2)
    shapes[f"{p}.mask_downscaling.0.bias"] = (m // 4,)
    shapes.update(_norm_shapes(f"{p}.mask_downscaling.1", m // 4))
    shapes[f"{p}.mask_downscaling.3.weight"] = (m, m // 4, 2, 2)
    shapes[f"{p}.mask_downscaling.3.bias"] = (m,)
    shapes.update(_norm_shapes(f"{p}.mask_downscaling.4", m))
    shapes[f"{p}.mask_downscaling.6.weight"] = (e, m, 1, 1)
    shapes[f"{p}.mask_downscaling.6.bias"] = (e,)
    return shapes


def _attention_shapes(prefix: str, dim: int, internal_dim: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name in ("q_proj", "k_proj", "v_proj"):
        shapes.update(_linear_shapes(f"{prefix}.{name}", internal_dim, dim))
    shapes.update(_linear_shapes(f"{prefix}.out_proj", dim, internal_dim))
    return shapes


def _mask_decoder_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    p = "mask_decoder"
    e = config.prompt_embed_dim
    reduced = e // config.attention_downsample_rate
    shapes: dict[str, tuple[int, ...]] = {
        f"{p}.iou_token.weight": (1, e),
        f"{p}.mask_tokens.weight": (config.num_mask_tokens, e),
    }

    t = f"{p}.transformer"
    for layer in range(config.decoder_depth):
        lp = f"{t}.layers.{layer}"
        shapes.update(_attention_shapes(f"{lp}.self_attn", e, e))
        shapes.update(_attention_shapes(f"{lp}.cross_attn_token_to_image", e, reduced))
        shapes.update(_attention_shapes(f"{lp}.cross_attn_image_to_token", e, reduced))
        shapes.update(_linear_shapes(f"{lp}.mlp.lin1", config.decoder_mlp_dim, e))
        shapes.update(_linear_shapes(f"{lp}.mlp.lin2", e, config.decoder_mlp_dim))
        for norm in range(1, 5):
            shapes.update(_norm_shapes(f"{lp}.norm{norm}", e))
    shapes.update(_attention_shapes(f"{t}.final_attn_token_to_image", e, reduced))
    shapes.update(_norm_shapes(f"{t}.norm_final_attn", e))

    shapes[f"{p}.output_upscaling.0.weight"] = (e, e // 4, 2, 2)
    shapes[f"{p}.output_upscaling.0.bias"] = (e // 4,)
    shapes.update(_norm_shapes(f"{p}.output_upscaling.1", e // 4))
    shapes[f"{p}.output_upscaling.3.weight"] = (e // 4, e // 8, 2, 2)
    shapes[f"{p}.output_upscaling.3.bias"] = (e // 8,)

    for token in range(config.num_mask_tokens):
        h = f"{p}.output_hypernetworks_mlps.{token}.layers"
        shapes.update(_linear_shapes(f"{h}.0", e, e))
        shapes.update(_linear_shapes(f"{h}.1", e, e))
        shapes.update(_linear_shapes(f"{h}.2", e // 8, e))

    hidden = config.iou_head_hidden_dim
    widths = [e] + [hidden] * (config.iou_head_depth - 1) + [config.num_mask_tokens]
    for layer in range(config.iou_head_depth):
        shapes.update(
            _linear_shapes(f"{p}.iou_prediction_head.layers.{layer}", widths[layer + 1], widths[layer])
        )
    return shapes


def expected_state_dict_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Return every checkpoint key of a model built with `config`, mapped to its tensor shape.

    The names are the PyTorch reference's `state_dict` keys, including batch norm running statistics and
    the 0-d `num_batches_tracked` counters, so a converted file can be checked key for key.
    """
    shapes = _image_encoder_shapes(config)
    shapes.update(_prompt_encoder_shapes(config))
    shapes.update(_mask_decoder_shapes(config))
    return shapes


def _attention_multiply_adds(queries: int, keys: int, dim: int, internal_dim: int) -> int:
    projections = queries * dim * internal_dim + 2 * keys * dim * internal_dim + queries * internal_dim * dim
    return projections + 2 * queries * keys * internal_dim  # q k^T, then attention weights times v


def _image_encoder_multiply_adds(config: ModelConfig) -> int:
    size = config.image_size
    dims = config.embed_dims
    pixels = size * size
    total = pixels * config.in_chans * (dims[0] // 2) + pixels * (dims[0] // 2) * dims[0]  # patch embedding

    hidden = dims[0] * config.mbconv_expand_ratio
    total += config.depths[0] * pixels * (2 * dims[0] * hidden + 9 * hidden)  # MBConv blocks

    for stage in range(1, len(dims)):
        dim = dims[stage]
        resolution = config.stage_resolution(stage)
        window = config.window_sizes[stage]
        padded = -(-resolution // window) * window
        windows = (padded // window) ** 2
        tokens = window * window
        # The reference projects and attends on the zero-padded grid, so the padded token count is used.
        attention = padded * padded * dim * 4 * dim + 2 * windows * tokens * tokens * dim
        local_conv = resolution * resolution * dim * config.local_conv_size**2
        mlp = 2 * resolution * resolution * dim * config.mlp_ratio * dim
        total += config.depths[stage] * (attention + local_conv + mlp)

    for stage in range(len(dims) - 1):
        resolution = config.stage_resolution(stage)
        merged = resolution // config.downsample_stride(stage)
        out_dim = dims[stage + 1]
        total += resolution * resolution * dims[stage] * out_dim + merged * merged * out_dim * (9 + out_dim)

    grid = config.image_embedding_size
    e = config.prompt_embed_dim
    total += grid * grid * (dims[-1] * e + 9 * e * e)  # neck: 1x1 and 3x3 convolutions
    return total


def _decoder_multiply_adds(config: ModelConfig, boxes: int) -> int:
    e = config.prompt_embed_dim
    reduced = e // config.attention_downsample_rate
    grid = config.image_embedding_size
    image_tokens = grid * grid
    tokens = 1 + config.num_mask_tokens + 2  # IoU token, mask tokens, two box corners
    features = e // 8

    per_layer = (
        _attention_multiply_adds(tokens, tokens, e, e)
        + _attention_multiply_adds(tokens, image_tokens, e, reduced)
        + 2 * tokens * e * config.decoder_mlp_dim
        + _attention_multiply_adds(image_tokens, tokens, e, reduced)
    )
    transformer = config.decoder_depth * per_layer + _attention_multiply_adds(tokens, image_tokens, e, reduced)
    upscaling = image_tokens * e * (e // 4) * 4 + 4 * image_tokens * (e // 4) * features * 4
    hypernetworks = config.num_mask_tokens * (2 * e * e + e * features)
    masks = config.num_mask_tokens * (4 * grid) ** 2 * features
    iou_head = (config.iou_head_depth - 1) * e * config.iou_head_hidden_dim + config.iou_head_hidden_dim * config.num_mask_tokens
    prompt = 2 * 2 * (e // 2) + image_tokens * 2 * (e // 2)  # box corners and the dense positional encoding
    return boxes * (transformer + upscaling + hypernetworks + masks + iou_head) + prompt


def multiply_adds(config: ModelConfig, boxes: int = 1) -> dict[str, int]:
    """Count the multiply-adds of matrix products and convolutions for one image and `boxes` boxes.

    Counts what the PyTorch reference executes with `multimask_output=False`, which still computes all
    mask tokens' masks and the IoU head, and pads TinyViT's attention grid. Normalisation layers,
    activations and softmax are not counted.
    """
    encoder = _image_encoder_multiply_adds(config)
    decoder = _decoder_multiply_adds(config, boxes)
    return {"image_encoder": encoder, "prompt_and_mask_decoder": decoder, "total": encoder + decoder}
