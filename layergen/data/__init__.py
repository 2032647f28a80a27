"""Data: synthetic layered scenes, WebDataset shards, the LightningDataModule, transforms.

Names are imported lazily (PEP 562), so ``import layergen.data.shapes`` from model code does
not import Lightning; ``from layergen.data import LayeredDataModule`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "layergen.data.datamodule": ("LayeredCollate", "LayeredDataModule", "SkipReport"),
    "layergen.data.shapes": (
        "BACKGROUND_FAMILIES",
        "COLORS",
        "POSITIONS",
        "SHAPES",
        "SIZES",
        "Scene",
        "ShapeScenes",
        "vocabulary",
    ),
    "layergen.data.codec": ("ShardError", "decode_sample", "encode_sample"),
    "layergen.data.shards": (
        "ShardWriter",
        "layered_pipeline",
        "read_image_shards",
        "read_shards",
        "write_shards",
    ),
    "layergen.data.skips": ("SKIP_REASONS", "SkipCounter"),
    "layergen.data.transforms": ("LayeredTransform", "horizontal_flip", "resize_center_crop"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'layergen.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return __all__
