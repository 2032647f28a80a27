"""Layered Photoshop (PSD) export and import through psd-tools.

One pixel layer per layer of the layered image, named by its layer prompt, the background at
the bottom and the foregrounds above it in order, each with the straight alpha of
``LayeredImage.to_rgba`` so that "normal" blending in Photoshop, GIMP or Krita reproduces
the composite (LayerDiff eq. 1). PSD has no place for free text, so the manifest goes to a
JSON file beside the PSD (``name.psd`` -> ``name.json``).
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from psd_tools import PSDImage
from psd_tools.api.layers import PixelLayer

from layergen import limits
from layergen.export.manifest import (
    apply_manifest,
    build_manifest,
    check_text,
    read_manifest,
    write_manifest,
)
from layergen.layers import BACKGROUND_PROMPT, LayeredImage, LayeredImageError

logger = logging.getLogger(__name__)


def _layer_name(prompt: str, index: int) -> str:
    """PSD layer name: the layer prompt, or ``layer i`` when it is empty."""
    name = prompt.strip() or (BACKGROUND_PROMPT if index == 0 else f"layer {index}")
    return name[:255]


def manifest_path(path: str | Path) -> Path:
    """The sidecar manifest of a PSD file: same name, ``.json`` suffix."""
    return Path(path).with_suffix(".json")


def save_psd(image: LayeredImage, path: str | Path, manifest: dict[str, Any] | None = None) -> Path:
    """Write ``image`` as a layered 8-bit RGB PSD with transparency (and its manifest beside it).

    Args:
        image: a valid layered image (validated here).
        path: output ``.psd`` file.
        manifest: extra manifest fields (seed, model, steps, guidance, ...).

    Returns:
        The PSD path.
    """
    image.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = image.size
    psd = PSDImage.new("RGBA", (width, height), depth=8)  # alpha as transparency
    for i, (rgba, prompt) in enumerate(zip(image.to_rgba(), image.layer_prompts)):
        layer = PixelLayer.frompil(
            Image.fromarray(rgba, mode="RGBA"), psd, name=_layer_name(prompt, i)
        )
        psd.append(layer)  # appended layers go on top: background first = bottom
    psd.save(str(path))
    write_manifest(manifest_path(path), build_manifest(image, manifest))
    logger.debug("wrote %s (%d layers)", path, image.num_layers)
    return path


def load_psd(path: str | Path) -> LayeredImage:
    """Read a layered PSD (ours or any RGB PSD with pixel layers) into a ``LayeredImage``.

    The bottom visible pixel layer is the background (made opaque), the layers above it are
    the foregrounds; layer names become the layer prompts, and the manifest beside the file,
    when present, restores the prompt and metadata. Layers smaller than the canvas are placed
    at their offsets. The canvas size, the number of layers, each layer's size and name are
    checked against ``layergen.limits`` before any pixel is decoded.

    Raises:
        LayeredImageError: naming the file when it cannot be parsed, has fewer than two
            pixel layers or is over a limit.
    """
    path = Path(path)
    psd = _open(path)
    width, height = psd.width, psd.height
    layers = [la for la in psd.descendants() if la.kind == "pixel" and la.is_visible()]
    if len(layers) < 2:
        raise LayeredImageError(
            f"{path}: expected a background and at least one foreground pixel layer, "
            f"found {len(layers)}"
        )
    limits.check_layers(len(layers), str(path))
    limits.check_pixels(width, height, f"{path}: canvas", layers=len(layers))
    arrays, names = [], []
    for layer in layers:
        what = f"{path}: layer {layer.name[:80]!r}"
        names.append(check_text(layer.name, what))
        limits.check_pixels(layer.width, layer.height, what)
        if layer.has_mask() or layer.opacity < 255:
            # let psd-tools fold the layer mask and opacity into the alpha
            canvas = layer.composite(viewport=(0, 0, width, height)).convert("RGBA")
        else:
            canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
            canvas.paste(layer.topil().convert("RGBA"), (layer.left, layer.top))
        arrays.append(np.asarray(canvas))
    image = LayeredImage.from_rgba(arrays, layer_prompts=names)
    sidecar = manifest_path(path)
    if sidecar.exists():
        apply_manifest(image, read_manifest(sidecar))
    return image.validate()


def _open(path: Path) -> PSDImage:
    """Parse a PSD file; a malformed one is a ``LayeredImageError`` naming it."""
    try:
        return PSDImage.open(str(path))
    except (OSError, ValueError, EOFError, struct.error) as err:
        raise LayeredImageError(f"{path}: not a readable PSD file ({err})") from None


def psd_composite(path: str | Path) -> np.ndarray:
    """The composite of a PSD as psd-tools renders it: ``(H, W, 3)`` uint8."""
    path = Path(path)
    psd = _open(path)
    limits.check_pixels(psd.width, psd.height, f"{path}: canvas")
    return np.asarray(psd.composite(force=True).convert("RGB"))
