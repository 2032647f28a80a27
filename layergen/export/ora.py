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

from layergen import limits
from layergen.export.manifest import (
    apply_manifest,
    build_manifest,
    check_manifest,
    check_text,
)
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


def _member(archive: zipfile.ZipFile, name: str, path: Path, max_bytes: int) -> bytes:
    """The bytes of member ``name``, refused above ``max_bytes`` by its declared size."""
    size = archive.getinfo(name).file_size
    if size > max_bytes:
        raise LayeredImageError(f"{path}: member '{name}' of {size} bytes is over {max_bytes}")
    return archive.read(name)


def _canvas_size(root: ElementTree.Element, path: Path) -> tuple[int, int]:
    """``(width, height)`` of ``stack.xml``."""
    try:
        width, height = int(root.get("w", 0)), int(root.get("h", 0))
    except ValueError as err:
        raise LayeredImageError(f"{path}: stack.xml: bad canvas size ({err})") from None
    if width < 1 or height < 1:
        raise LayeredImageError(f"{path}: stack.xml: bad canvas size {width}x{height}")
    return width, height


def _read_layer(
    archive: zipfile.ZipFile, entry: ElementTree.Element, path: Path, size: tuple[int, int]
) -> np.ndarray:
    """One ``stack.xml`` layer entry as ``(H, W, 4)`` uint8 on a canvas of ``size``."""
    src = entry.get("src", "")
    try:
        offset = (int(entry.get("x", 0)), int(entry.get("y", 0)))
        opacity = float(entry.get("opacity", 1.0))
    except ValueError as err:
        raise LayeredImageError(f"{path}: layer '{src}': bad offset or opacity ({err})") from None
    data = _member(archive, src, path, limits.MAX_MEMBER_BYTES)
    try:
        with Image.open(io.BytesIO(data)) as layer:  # reads the header only
            limits.check_pixels(layer.width, layer.height, f"{path}: layer '{src}'")
            canvas = Image.new("RGBA", size, (0, 0, 0, 0))
            canvas.paste(layer.convert("RGBA"), offset)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise LayeredImageError(f"{path}: layer '{src}': cannot decode ({err})") from None
    rgba = np.asarray(canvas).copy()
    if opacity < 1.0:
        rgba[..., 3] = np.rint(rgba[..., 3] * max(opacity, 0.0)).astype(np.uint8)
    return rgba


def load_ora(path: str | Path) -> LayeredImage:
    """Read an OpenRaster file into a ``LayeredImage``.

    The bottom visible layer of the stack is the background; nested stacks are flattened in
    order; layer names become layer prompts; ``layergen.json``, when present, restores the
    prompt and metadata. Sizes are checked against ``layergen.limits`` before they are
    used: the members' sizes, the canvas, the number of layers, each layer's size and name.

    Raises:
        LayeredImageError: naming the file when it is not an OpenRaster archive, has fewer
            than two layers or is over a limit.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise LayeredImageError(f"{path}: not an OpenRaster (zip) file") from err
    with archive:
        names = set(archive.namelist())
        mimetype = _member(archive, "mimetype", path, 64) if "mimetype" in names else b""
        if mimetype.strip() != ORA_MIMETYPE.encode():
            raise LayeredImageError(f"{path}: missing or wrong 'mimetype' entry")
        if "stack.xml" not in names:
            raise LayeredImageError(f"{path}: missing 'stack.xml'")
        try:
            root = ElementTree.fromstring(
                _member(archive, "stack.xml", path, limits.MAX_JSON_BYTES)
            )
        except ElementTree.ParseError as err:
            raise LayeredImageError(f"{path}: stack.xml: invalid XML ({err})") from None
        size = _canvas_size(root, path)
        entries = [e for e in root.iter("layer") if e.get("visibility", "visible") == "visible"]
        entries.reverse()  # bottom first
        if len(entries) < 2:
            raise LayeredImageError(
                f"{path}: expected a background and at least one foreground layer, "
                f"found {len(entries)}"
            )
        limits.check_layers(len(entries), f"{path}: stack.xml")
        limits.check_pixels(*size, f"{path}: stack.xml canvas", layers=len(entries))
        arrays, prompts = [], []
        for entry in entries:
            src = entry.get("src", "")
            if src not in names:
                raise LayeredImageError(f"{path}: layer source '{src}' is missing")
            prompts.append(check_text(entry.get("name", ""), f"{path}: layer '{src}'"))
            arrays.append(_read_layer(archive, entry, path, size))
        manifest = None
        if MANIFEST_NAME in names:
            data = _member(archive, MANIFEST_NAME, path, limits.MAX_JSON_BYTES)
            manifest = check_manifest(
                limits.parse_json(data, f"{path}: {MANIFEST_NAME}"), f"{path}: {MANIFEST_NAME}"
            )
    image = LayeredImage.from_rgba(arrays, layer_prompts=prompts)
    if manifest is not None:
        apply_manifest(image, manifest)
    return image.validate()


def ora_merged_image(path: str | Path) -> np.ndarray:
    """``mergedimage.png`` of an OpenRaster file as ``(H, W, 3)`` uint8."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        data = _member(archive, "mergedimage.png", path, limits.MAX_MEMBER_BYTES)
    with Image.open(io.BytesIO(data)) as merged:
        limits.check_pixels(merged.width, merged.height, f"{path}: mergedimage.png")
        return np.asarray(merged.convert("RGB"))
