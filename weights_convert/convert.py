"""Convert a PyTorch checkpoint into an npsam weights file, checked against a registered model config."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npsam.config import MODELS, ModelConfig, get_config
from npsam.weights import expected_dtype, file_sha256, find_shape_problems, write_weights
from weights_convert.checkpoint import CheckpointError, read_checkpoint

__all__ = ["ConversionSummary", "convert_checkpoint"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConversionSummary:
    """Summary of one conversion: the file written and what it contains."""

    output_path: Path
    model_name: str
    num_tensors: int
    num_elements: int
    source_sha256: str

    def describe(self) -> str:
        """Return a one-line summary for the command line."""
        return (
            f"converted {self.num_tensors} tensors ({self.num_elements:,} elements) for model "
            f"{self.model_name}, source sha256 {self.source_sha256}, written to {self.output_path}"
        )


def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model_name: str = "litemedsam",
) -> ConversionSummary:
    """Convert the state dict checkpoint at `checkpoint_path` into an npsam weights file at `output_path`.

    The state dict must match the registered config `model_name` key for key and shape for shape.
    float16 tensors are widened to float32 (exact), float64 tensors are rounded to float32 with a logged
    warning, and int32 batch norm counters become int64. The output is written atomically and never
    over the checkpoint itself. Raises CheckpointError (a ValueError) for an unreadable checkpoint and
    ValueError for a state dict that does not match the model.
    """
    config = get_config(model_name)
    checkpoint_path = Path(checkpoint_path)
    output_path = Path(output_path)
    _reject_same_file(checkpoint_path, output_path)

    source_sha256 = file_sha256(checkpoint_path)
    state_dict = _cast_to_weights_dtypes(read_checkpoint(checkpoint_path), checkpoint_path)
    _check_against_config(config, state_dict, checkpoint_path)

    write_weights(
        output_path,
        config,
        state_dict,
        source_file=checkpoint_path.name,
        source_sha256=source_sha256,
        trained=True,
    )
    return ConversionSummary(
        output_path=output_path,
        model_name=config.name,
        num_tensors=len(state_dict),
        num_elements=sum(value.size for value in state_dict.values()),
        source_sha256=source_sha256,
    )


def _reject_same_file(checkpoint_path: Path, output_path: Path) -> None:
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint_path} not found")
    same = output_path.exists() and os.path.samefile(checkpoint_path, output_path)
    if same or checkpoint_path.resolve() == output_path.resolve():
        raise ValueError(
            f"output path {output_path} is the checkpoint itself; choose another output file, "
            f"such as {checkpoint_path.with_suffix('.h5')}"
        )


def _cast_to_weights_dtypes(state_dict: dict[str, np.ndarray], checkpoint_path: Path) -> dict[str, np.ndarray]:
    """Cast float tensors to float32 and integer counters to int64; leave other mismatches to the checks."""
    cast: dict[str, np.ndarray] = {}
    rounded = []
    for key, value in state_dict.items():
        target = expected_dtype(key)
        if value.dtype != target and value.dtype.kind == target.kind:
            if value.dtype.itemsize > target.itemsize and target.kind == "f":
                rounded.append(key)
            value = value.astype(target)
        cast[key] = value

    if rounded:
        logger.warning(
            "%s: rounded %d float64 tensors to float32 (first: %s)", checkpoint_path, len(rounded), rounded[0]
        )
    return cast


def _check_against_config(config: ModelConfig, state_dict: dict[str, np.ndarray], checkpoint_path: Path) -> None:
    shapes = {key: value.shape for key, value in state_dict.items()}
    problems = find_shape_problems(config, shapes)
    if not problems:
        return

    matching = [name for name, other in MODELS.items() if name != config.name and not find_shape_problems(other, shapes)]
    if matching:
        fix = f"The checkpoint matches model {matching[0]!r}: convert it with --model {matching[0]}."
    else:
        fix = (
            f"It matches none of the registered models {sorted(MODELS)}; check that it is a LiteMedSAM-style "
            f"state dict and choose --model accordingly."
        )
    lines = [
        f"checkpoint {checkpoint_path} does not match model {config.name!r} ({len(problems)} problems). {fix}"
    ]
    lines += [f"  {problem}" for problem in problems]
    lines.append(fix)
    raise ValueError("\n".join(lines))
