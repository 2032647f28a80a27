"""A layered image as a folder of PNGs: one RGBA PNG per layer, the composite, a manifest.

Layout::

    DIR/layer_00.png  ... layer_{K}.png   straight-alpha RGBA, background (opaque) first
    DIR/composite.png                     RGB composite (LayerDiff eq. 1)
    DIR/manifest.json                     prompt, layer prompts, files, seed, model, ...
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from layergen import limits
from layergen.export.manifest import apply_manifest, build_manifest, read_manifest, write_manifest
from layergen.layers import LayeredImage, LayeredImageError

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
COMPOSITE_FILE = "composite.png"


def layer_file(index: int) -> str:
    """File name of layer ``index`` (0 = background)."""
    return f"layer_{index:02d}.png"


def save_layer_pngs(
    image: LayeredImage, directory: str | Path, manifest: dict[str, Any] | None = None
) -> Path:
    """Write one RGBA PNG per layer, the composite PNG and ``manifest.json`` into a folder.

    Args:
        image: a valid layered image (validated here).
        directory: output folder (created).
        manifest: extra manifest fields (seed, model, steps, guidance, ...).

    Returns:
        The folder.
    """
    image.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, layer in enumerate(image.to_pil_layers()):
        layer.save(directory / layer_file(i))
        files.append(layer_file(i))
    image.composite_pil().save(directory / COMPOSITE_FILE)
    record = build_manifest(image, manifest)
    record["layer_files"] = files
    record["composite_file"] = COMPOSITE_FILE
    write_manifest(directory / MANIFEST_FILE, record)
    logger.debug("wrote %s (%d layers)", directory, image.num_layers)
    return directory


def load_layer_dir(directory: str | Path) -> LayeredImage:
    """Read a folder written by ``save_layer_pngs`` (or any folder of ``layer_XX.png``).

    The manifest, when present, names the layer files and restores the prompts; otherwise
    the ``layer_*.png`` files are taken in name order, the first being the background. Only
    plain file names inside the folder are read; the number of layers and each layer's size
    are checked against ``layergen.limits`` before any layer is decoded.

    Raises:
        LayeredImageError: naming the folder when a layer file is missing or outside it,
            fewer than two layers are found, or a limit is exceeded.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise LayeredImageError(f"{directory}: not a folder")
    manifest = (
        read_manifest(directory / MANIFEST_FILE) if (directory / MANIFEST_FILE).exists() else {}
    )
    names = manifest.get("layer_files") or sorted(p.name for p in directory.glob("layer_*.png"))
    if not isinstance(names, list):
        raise LayeredImageError(f"{directory}: {MANIFEST_FILE}: layer_files must be a list")
    if len(names) < 2:
        raise LayeredImageError(
            f"{directory}: expected at least two layer PNGs (layer_00.png = background), "
            f"found {len(names)}"
        )
    limits.check_layers(len(names), str(directory))
    arrays = []
    for name in names:
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise LayeredImageError(
                f"{directory}: layer file {name!r} is not a file name in the folder"
            )
        file = directory / name
        if not file.is_file():
            raise LayeredImageError(f"{directory}: layer file '{name}' is missing")
        try:
            with Image.open(file) as layer:  # reads the header only
                limits.check_pixels(layer.width, layer.height, f"{directory}: {name}", len(names))
                arrays.append(np.asarray(layer.convert("RGBA")))
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            raise LayeredImageError(f"{directory}: {name}: cannot decode ({err})") from None
    image = LayeredImage.from_rgba(arrays)
    if manifest:
        apply_manifest(
            image,
            {k: v for k, v in manifest.items() if not k.endswith("_file") and k != "layer_files"},
        )
    return image.validate()
