"""Where and in what precision a script runs: the ``--device`` and ``--dtype`` options."""

from __future__ import annotations

import argparse

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` (default ``auto``) and ``--dtype`` (default ``None``: no cast)."""
    parser.add_argument(
        "--device", default="auto", choices=DEVICES,
        help="where the models run; 'auto': cuda if available, else mps, else cpu (default: auto)",
    )
    parser.add_argument(
        "--dtype", default=None, choices=list(DTYPES),
        help="cast the models' weights to this precision (default: keep the saved one)",
    )


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> the best available device; others are checked.

    Raises:
        ValueError: when the requested device is not available on this machine.
    """
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ValueError(f"--device {name}: not available on this machine (try --device auto)")
    return torch.device(name)
