"""OpenRaster (``.ora``) export and import.

An OpenRaster file is a zip archive: ``mimetype`` (stored first, uncompressed, content
``image/openraster``), ``stack.xml`` listing the layers top first, one PNG per layer under
``data/``, ``mergedimage.png`` (the composite) and ``Thumbnails/thumbnail.png`` (at most
256x256). Krita and MyPaint open it. Layers carry straight alphas for "normal"
(``svg:src-over``) blending, so stacking them reproduces the composite (LayerDiff eq. 1).
The manifest is stored inside the archive as ``layergen.json``.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from layergen.export.manifest import apply_manifest, build_manifest
from layergen.layers import BACKGROUND_PROMPT, LayeredImage, LayeredImageError

logger = logging.getLogger(__name__)

ORA_MIMETYPE = "image/openraster"
MANIFEST_NAME = "layergen.json"
THUMBNAIL_SIZE = 256


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_ora(image: LayeredImage, path: str | Path, manifest: dict[str, Any] | None = None) -> Path:
    """Write ``image`` as an OpenRaster file.

    Args:
        image: a valid layered image (validated here).
        path: output ``.ora`` file.
        manifest: extra manifest fields (seed, model, steps, guidance, ...).

    Returns:
        The ``.ora`` path.
    """
    image.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = image.size
    root = ElementTree.Element("image", {"version": "0.0.3", "w": str(width), "h": str(height)})
    stack = ElementTree.SubElement(root, "stack")
    layers = image.to_pil_layers()
    sources = [f"data/layer{i:03d}.png" for i in range(len(layers))]
    for i in reversed(range(len(layers))):  # stack.xml lists the top layer first
        name = image.layer_prompts[i] or (BACKGROUND_PROMPT if i == 0 else f"layer {i}")
        ElementTree.SubElement(
            stack,
            "layer",
            {
                "name": name,
                "src": sources[i],
                "x": "0",
                "y": "0",
                "opacity": "1.0",
                "visibility": "visible",
                "composite-op": "svg:src-over",
            },
        )
    composite = image.composite_pil()
    thumbnail = composite.copy()
    thumbnail.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), ORA_MIMETYPE, zipfile.ZIP_STORED)
        archive.writestr(
            "stack.xml",
            ElementTree.tostring(root, encoding="utf-8", xml_declaration=True),
            zipfile.ZIP_DEFLATED,
        )
        for source, layer in zip(sources, layers):
            archive.writestr(source, _png_bytes(layer), zipfile.ZIP_STORED)
        archive.writestr("mergedimage.png", _png_bytes(composite), zipfile.ZIP_STORED)
        archive.writestr("Thumbnails/thumbnail.png", _png_bytes(thumbnail), zipfile.ZIP_STORED)
        archive.writestr(
            MANIFEST_NAME,
            json.dumps(build_manifest(image, manifest), indent=2),
            zipfile.ZIP_DEFLATED,
        )
    logger.debug("wrote %s (%d layers)", path, image.num_layers)
    return path


def load_ora(path: str | Path) -> LayeredImage:
    """Read an OpenRaster file into a ``LayeredImage``.

    The bottom visible layer of the stack is the background; nested stacks are flattened in
    order; layer names become layer prompts; ``layergen.json``, when present, restores the
    prompt and metadata.

    Raises:
        LayeredImageError: naming the file when it is not an OpenRaster archive or has fewer
            than two layers.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise LayeredImageError(f"{path}: not an OpenRaster (zip) file") from err
    with archive:
        names = set(archive.namelist())
        if "mimetype" not in names or archive.read("mimetype").decode().strip() != ORA_MIMETYPE:
            raise LayeredImageError(f"{path}: missing or wrong 'mimetype' entry")
        if "stack.xml" not in names:
            raise LayeredImageError(f"{path}: missing 'stack.xml'")
        root = ElementTree.fromstring(archive.read("stack.xml"))
        width, height = int(root.get("w", 0)), int(root.get("h", 0))
        entries = [e for e in root.iter("layer") if e.get("visibility", "visible") == "visible"]
        entries.reverse()  # bottom first
        if len(entries) < 2:
            raise LayeredImageError(
                f"{path}: expected a background and at least one foreground layer, "
                f"found {len(entries)}"
            )
        arrays, prompts = [], []
        for entry in entries:
            src = entry.get("src", "")
            if src not in names:
                raise LayeredImageError(f"{path}: layer source '{src}' is missing")
            with Image.open(io.BytesIO(archive.read(src))) as layer:
                canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
                canvas.paste(
                    layer.convert("RGBA"), (int(entry.get("x", 0)), int(entry.get("y", 0)))
                )
            rgba = np.asarray(canvas).copy()
            opacity = float(entry.get("opacity", 1.0))
            if opacity < 1.0:
                rgba[..., 3] = np.rint(rgba[..., 3] * opacity).astype(np.uint8)
            arrays.append(rgba)
            prompts.append(entry.get("name", ""))
        manifest = json.loads(archive.read(MANIFEST_NAME)) if MANIFEST_NAME in names else None
    image = LayeredImage.from_rgba(arrays, layer_prompts=prompts)
    if manifest is not None:
        apply_manifest(image, manifest)
    return image.validate()


def ora_merged_image(path: str | Path) -> np.ndarray:
    """``mergedimage.png`` of an OpenRaster file as ``(H, W, 3)`` uint8."""
    with (
        zipfile.ZipFile(path) as archive,
        Image.open(io.BytesIO(archive.read("mergedimage.png"))) as merged,
    ):
        return np.asarray(merged.convert("RGB"))
