"""Load any layered autoencoder saved with ``save_pretrained`` by its config's ``_class_name``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# the built-in autoencoders register with the interface by being imported
from layergen.models import composite_autoencoder, joint_autoencoder, per_layer_autoencoder  # noqa: F401
from layergen.models.autoencoder_interface import LayeredAutoencoderInterface, autoencoder_classes


def load_autoencoder(
    path: str | Path, subfolder: str | None = None, **kwargs: Any
) -> LayeredAutoencoderInterface:
    """Load a layered autoencoder directory written by ``save_pretrained``.

    The class is the ``LayeredAutoencoderInterface`` subclass named by ``_class_name`` (or an
    old name of one, e.g. ``LayeredAutoencoder``); a class of your own must be imported first.

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
    classes = autoencoder_classes()
    if class_name not in classes:
        raise ValueError(
            f"{config_file}: _class_name {class_name!r} is not a layered autoencoder; "
            f"expected one of {sorted(classes)}"
        )
    return classes[class_name].from_pretrained(
        str(directory), use_safetensors=kwargs.pop("use_safetensors", True), **kwargs
    )
