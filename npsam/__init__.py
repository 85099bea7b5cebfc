"""npsam: box-prompted medical image segmentation (LiteMedSAM, SwiftMedSAM) in NumPy and Numba.

The model and pipeline modules are imported on first use, so `import npsam.config` or the weight
converter do not pay for compiling Numba kernels.
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Public name -> module that defines it.
_LAZY_EXPORTS = {
    "MODELS": "npsam.config",
    "ModelConfig": "npsam.config",
    "get_config": "npsam.config",
    "Model": "npsam.model",
    "load_model": "npsam.model",
    "Predictor": "npsam.predictor",
    "segment": "npsam.predictor",
}

__all__ = sorted(_LAZY_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'npsam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
