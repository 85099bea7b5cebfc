"""Torch-free converter from PyTorch checkpoints to npsam weights files.

Usage: python -m weights_convert lite_medsam.pth -o lite_medsam.h5 [--model NAME]

This package never imports torch: the checkpoint's pickle is read by a restricted unpickler that
admits only the globals a state dict needs.
"""

from weights_convert.checkpoint import CheckpointError, read_checkpoint
from weights_convert.convert import ConversionSummary, convert_checkpoint

__all__ = ["CheckpointError", "ConversionSummary", "convert_checkpoint", "read_checkpoint"]
