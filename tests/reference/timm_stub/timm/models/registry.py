"""Stand-in for `timm.models.registry`: a name -> builder table filled by `register_model`."""

from __future__ import annotations

from typing import Callable

_MODEL_BUILDERS: dict[str, Callable] = {}


def register_model(builder: Callable) -> Callable:
    """Record `builder` under its function name and return it unchanged, as timm's decorator does."""
    _MODEL_BUILDERS[builder.__name__] = builder
    return builder
