"""Load any layered autoencoder saved with ``save_pretrained`` by its config's ``_class_name``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import ModelMixin

from layergen.models.composite_autoencoder import CompositeAutoencoder
from layergen.models.layer_autoencoder import PerLayerAutoencoder
from layergen.models.layered_autoencoder import LayeredAutoencoder
from layergen.models.sd_autoencoder import StackedSDAutoencoder

AUTOENCODER_CLASSES: dict[str, type[ModelMixin]] = {
    cls.__name__: cls
    for cls in (LayeredAutoencoder, PerLayerAutoencoder, StackedSDAutoencoder, CompositeAutoencoder)
}


def load_autoencoder(
    path: str | Path, subfolder: str | None = None, **kwargs: Any
) -> LayeredAutoencoder | PerLayerAutoencoder | StackedSDAutoencoder | CompositeAutoencoder:
    """Load a layered autoencoder directory written by ``save_pretrained``.

    Args:
        path: the directory (local; it holds ``config.json`` and the safetensors weights).
        subfolder: optional sub-directory (e.g. ``"autoencoder"`` of a pipeline directory).
        **kwargs: passed to ``from_pretrained`` (e.g. ``torch_dtype``).

    Raises:
        FileNotFoundError: no ``config.json`` in the directory.
        ValueError: ``_class_name`` names no layered autoencoder.
    """
    directory = Path(path) / subfolder if subfolder else Path(path)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file}: no autoencoder config; expected a directory written by "
            "save_pretrained (LayeredAutoencoderModule.export_pretrained or SavePretrained)"
        )
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name not in AUTOENCODER_CLASSES:
        raise ValueError(
            f"{config_file}: _class_name {class_name!r} is not a layered autoencoder; "
            f"expected one of {sorted(AUTOENCODER_CLASSES)}"
        )
    return AUTOENCODER_CLASSES[class_name].from_pretrained(
        str(directory), use_safetensors=kwargs.pop("use_safetensors", True), **kwargs
    )
