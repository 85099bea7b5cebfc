"""npsam: box-prompted medical image segmentation (LiteMedSAM, SwiftMedSAM) in NumPy and Numba."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from npsam.config import MODELS, ModelConfig, get_config  # noqa: E402
from npsam.model import Model, load_model  # noqa: E402
from npsam.predictor import Predictor, segment  # noqa: E402

__all__ = [
    "MODELS",
    "Model",
    "ModelConfig",
    "Predictor",
    "get_config",
    "load_model",
    "segment",
    "__version__",
]
