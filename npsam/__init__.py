"""npsam: box-prompted medical image segmentation (LiteMedSAM, SwiftMedSAM) in NumPy and Numba.

The model and pipeline modules are imported on first use, so `import npsam.config` or the weight
converter do not pay for compiling Numba kernels.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Thread-pool settings that OpenMP (Numba's parallel kernels) and OpenBLAS (NumPy's matrix products) read
# when each library loads. npsam switches between the two pools hundreds of times per slice. By default
# each pool keeps its threads spinning after its work is done, so the two pools compete for the cores.
# benchmarks/README.md gives the measured cost. A value the user has set is kept.
THREAD_POOL_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
# NOTE: OpenBLAS reads its variable when NumPy is first imported; when NumPy was imported before npsam,
# only child processes (such as `npsam segment --workers`) get it. `npsam.model.load_model` logs a hint.
OPENBLAS_SETTING_APPLIES = "numpy" not in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ
for _name, _value in THREAD_POOL_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
del _name, _value

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
