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
import lzma
import zipfile
import zlib
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
from layergen.export.reading import (
    HIDDEN,
    LayerReport,
    clean_name,
    opaque_background,
    pil_to_rgba,
    place,
    scale_alpha,
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


ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,  # a seek to an offset before the start of the file, bz2's invalid data
    EOFError,
    ValueError,
    NotImplementedError,  # an unknown compression method
    RuntimeError,  # an encrypted member
    zlib.error,
    lzma.LZMAError,
)
"""What ``zipfile`` raises on a corrupt archive or member."""


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as err:
        raise LayeredImageError(f"{path}: not an OpenRaster (zip) file ({err})") from None


def _member(archive: zipfile.ZipFile, name: str, path: Path, max_bytes: int) -> bytes:
    """The bytes of member ``name``, refused above ``max_bytes`` by its declared size."""
    size = archive.getinfo(name).file_size
    if size > max_bytes:
        raise LayeredImageError(f"{path}: member '{name}' of {size} bytes is over {max_bytes}")
    try:
        return archive.read(name)
    except ZIP_ERRORS as err:
        raise LayeredImageError(f"{path}: member '{name}' is corrupt ({err})") from None


def _canvas_size(root: ElementTree.Element, path: Path) -> tuple[int, int]:
    """``(width, height)`` of ``stack.xml``."""
    try:
        width, height = int(root.get("w", 0)), int(root.get("h", 0))
    except ValueError as err:
        raise LayeredImageError(f"{path}: stack.xml: bad canvas size ({err})") from None
    if width < 1 or height < 1:
        raise LayeredImageError(f"{path}: stack.xml: bad canvas size {width}x{height}")
    return width, height


MAX_STACK_DEPTH = 64
"""Nesting of ``<stack>`` elements (layer groups) accepted in ``stack.xml``."""


def _attributes(entry: ElementTree.Element, what: str) -> tuple[int, int, float]:
    """``(x, y, opacity)`` of a ``<layer>`` or ``<stack>`` element."""
    try:
        return int(entry.get("x", 0)), int(entry.get("y", 0)), float(entry.get("opacity", 1.0))
    except ValueError as err:
        raise LayeredImageError(f"{what}: bad offset or opacity ({err})") from None


def _visible_layers(
    root: ElementTree.Element, path: Path, report: LayerReport
) -> list[tuple[ElementTree.Element, int, int, float]]:
    """The visible ``<layer>`` elements, top first, with offsets and opacities summed and
    multiplied through their stacks; the others go to ``report``."""
    found: list[tuple[ElementTree.Element, int, int, float]] = []
    # (stack element, its x, y, opacity, depth), walked in document order (top first)
    pending = [(iter(root), 0, 0, 1.0, 0)]
    while pending:
        children, x0, y0, opacity0, depth = pending[-1]
        child = next(children, None)
        if child is None:
            pending.pop()
            continue
        name = clean_name(child.get("name", "")) or child.get("src", "")
        what = f"{path}: stack.xml: {child.tag} {name[:80]!r}"
        hidden = child.get("visibility", "visible") == "hidden"
        if child.tag == "stack":
            if hidden:
                report.skip(HIDDEN, f"group {name}")
                continue
            if depth + 1 > MAX_STACK_DEPTH:
                raise LayeredImageError(f"{what}: stacks nested over {MAX_STACK_DEPTH} deep")
            x, y, opacity = _attributes(child, what)
            pending.append((iter(child), x0 + x, y0 + y, opacity0 * opacity, depth + 1))
        elif child.tag == "layer":
            if hidden:
                report.skip(HIDDEN, name)
                continue
            x, y, opacity = _attributes(child, what)
            if child.get("composite-op", "svg:src-over") != "svg:src-over":
                report.approximate(f"{child.get('composite-op')} layer(s) read as normal", name)
            found.append((child, x0 + x, y0 + y, opacity0 * opacity))
        else:
            report.skip(f"<{child.tag}> element(s) (not pixels)", name)
    return found


def _read_layer(
    archive: zipfile.ZipFile,
    entry: ElementTree.Element,
    path: Path,
    size: tuple[int, int],
    offset: tuple[int, int],
    opacity: float,
) -> np.ndarray:
    """One ``stack.xml`` layer as ``(H, W, 4)`` RGBA (uint8, or uint16 for 16-bit greys) on
    a canvas of ``size`` (width, height), at ``offset`` (x, y), its alpha times ``opacity``."""
    src = entry.get("src", "")
    what = f"{path}: layer '{src}'"
    name = clean_name(entry.get("name", ""))
    named = f" (layer {name[:80]!r})" if name else ""
    data = _member(archive, src, path, limits.MAX_MEMBER_BYTES)
    try:
        with Image.open(io.BytesIO(data)) as layer:  # reads the header only
            limits.check_pixels(layer.width, layer.height, what)
            rgba = pil_to_rgba(layer, what)
    except LayeredImageError as err:
        raise LayeredImageError(f"{err}{named}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise LayeredImageError(f"{what}: cannot decode ({err}){named}") from None
    return scale_alpha(place(rgba, size, offset), opacity)


def load_ora(path: str | Path) -> LayeredImage:
    """Read an OpenRaster file (ours, Krita's, MyPaint's) into a ``LayeredImage``.

    The visible layers of ``stack.xml`` are read bottom first, the bottom one being the
    background (made opaque, transparent parts over white). Nested stacks (groups) are
    flattened into their layers in order, their ``x``/``y`` offsets added to their layers'
    (as the OpenRaster spec says; Krita writes 0 and ignores them) and their opacities
    multiplying their layers' alphas (exact where a group's layers do not overlap); each
    layer's PNG, of any size, is placed at its offset. Hidden layers
    and stacks are skipped and logged at INFO; other elements (e.g. text or filter
    entries) are skipped and composite ops other than ``svg:src-over`` read as normal,
    with a WARNING naming the file and the layers. Layer names become layer prompts;
    ``layergen.json``, when present, restores the prompt and metadata. Sizes are checked
    against ``layergen.limits`` before they are used: the members' sizes, the canvas, the
    number of layers, each layer's size and name.

    Raises:
        LayeredImageError: naming the file (and the layer) when it is not an OpenRaster
            archive, a layer cannot be decoded, fewer than two layers are visible or a
            limit is exceeded.
    """
    path = Path(path)
    with _open_zip(path) as archive:
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
        except (ElementTree.ParseError, LookupError, ValueError) as err:  # LookupError:
            # an unknown encoding in the XML declaration
            raise LayeredImageError(f"{path}: stack.xml: invalid XML ({err})") from None
        size = _canvas_size(root, path)
        report = LayerReport(str(path))
        entries = _visible_layers(root, path, report)
        entries.reverse()  # bottom first
        if len(entries) < 2:
            skipped = f" (skipped: {report.summary()})" if report.count() else ""
            raise LayeredImageError(
                f"{path}: expected a background and at least one foreground layer, "
                f"found {len(entries)}{skipped}"
            )
        limits.check_layers(len(entries), f"{path}: stack.xml")
        limits.check_pixels(*size, f"{path}: stack.xml canvas", layers=len(entries))
        arrays, prompts = [], []
        for entry, x, y, opacity in entries:
            src = entry.get("src", "")
            if src not in names:
                raise LayeredImageError(f"{path}: layer source '{src}' is missing")
            name = clean_name(entry.get("name", ""))
            prompts.append(check_text(name, f"{path}: layer '{src}'"))
            arrays.append(_read_layer(archive, entry, path, size, (x, y), opacity))
        report.log()
        manifest = None
        if MANIFEST_NAME in names:
            data = _member(archive, MANIFEST_NAME, path, limits.MAX_JSON_BYTES)
            manifest = check_manifest(
                limits.parse_json(data, f"{path}: {MANIFEST_NAME}"), f"{path}: {MANIFEST_NAME}"
            )
    arrays[0] = opaque_background(arrays[0])
    image = LayeredImage.from_rgba(arrays, layer_prompts=prompts)
    if manifest is not None:
        apply_manifest(image, manifest)
    return image.validate()


def ora_merged_image(path: str | Path) -> np.ndarray:
    """``mergedimage.png`` of an OpenRaster file as ``(H, W, 3)`` uint8."""
    path = Path(path)
    with _open_zip(path) as archive:
        data = _member(archive, "mergedimage.png", path, limits.MAX_MEMBER_BYTES)
    with Image.open(io.BytesIO(data)) as merged:
        limits.check_pixels(merged.width, merged.height, f"{path}: mergedimage.png")
        return np.asarray(merged.convert("RGB"))
