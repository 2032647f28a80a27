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
from psd_tools.api.layers import AdjustmentLayer, FillLayer, PixelLayer
from psd_tools.constants import BlendMode, ColorMode

from layergen import limits
from layergen.export.manifest import (
    apply_manifest,
    build_manifest,
    check_text,
    read_manifest,
    write_manifest,
)
from layergen.export.reading import (
    HIDDEN,
    LayerReport,
    clean_name,
    float_to_rgba,
    opaque_background,
    place,
    scale_alpha,
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
    """Read a layered PSD (ours, or an RGB or greyscale PSD from GIMP, Krita, Photoshop).

    Which layers are read:
      * the pixel layers, leaf by leaf from the bottom up; groups are flattened into their
        layers in stacking order, a group's opacity multiplying its layers' alphas (exact
        where the group's layers do not overlap);
      * each layer at its offset on the canvas (layers may be smaller than the canvas or
        reach past it), with its opacity, layer mask and clipped layers folded into its
        alpha; 16-bit layers keep 16 bits per channel, 32-bit ones are rendered to 8 bits;
      * text, shape and smart-object layers as the pixels stored for them;
      * the bottom layer is the background, made opaque (transparent parts over white).

    Left out, with one log line naming the file, the count and the layers: hidden layers
    and the layers of hidden groups (INFO); adjustment and fill layers, and text or shape
    layers stored without pixels (WARNING). Blend modes other than normal are read as
    normal (WARNING). Layer names become the layer prompts (Krita's NUL padding removed),
    and the manifest beside the file, when present, restores the prompt and metadata. The
    canvas size, the number of layers, each layer's size and name are checked against
    ``layergen.limits`` before any pixel is decoded.

    Raises:
        LayeredImageError: naming the file (and the layer) when it cannot be parsed, is not
            RGB or greyscale (e.g. CMYK), has fewer than two usable layers or is over a limit.
    """
    path = Path(path)
    psd = _open(path)
    if psd.color_mode not in _COLOUR_CHANNELS:
        mode = getattr(psd.color_mode, "name", str(psd.color_mode))
        raise LayeredImageError(
            f"{path}: colour mode {mode} is not supported; convert the image to RGB first "
            "(GIMP: Image > Mode > RGB; Krita: Image > Convert Image Color Space)"
        )
    width, height = psd.width, psd.height
    report = LayerReport(str(path))
    layers = _leaf_layers(psd, report)
    if len(layers) < 2:
        skipped = f" (skipped: {report.summary()})" if report.count() else ""
        raise LayeredImageError(
            f"{path}: expected a background and at least one foreground pixel layer, "
            f"found {len(layers)}{skipped}"
        )
    limits.check_layers(len(layers), str(path))
    limits.check_pixels(width, height, f"{path}: canvas", layers=len(layers))
    arrays, names = [], []
    for layer in layers:
        name = clean_name(layer.name)
        what = f"{path}: layer {name[:80]!r}"
        names.append(check_text(name, what))
        limits.check_pixels(layer.width, layer.height, what)
        arrays.append(_render(layer, psd, (width, height), what))
    report.log()
    arrays[0] = opaque_background(arrays[0])
    image = LayeredImage.from_rgba(arrays, layer_prompts=names)
    sidecar = manifest_path(path)
    if sidecar.exists():
        apply_manifest(image, read_manifest(sidecar))
    return image.validate()


_COLOUR_CHANNELS = {ColorMode.RGB: 3, ColorMode.GRAYSCALE: 1}
_NORMAL_BLENDS = (BlendMode.NORMAL, BlendMode.PASS_THROUGH)


def _leaf_layers(psd: PSDImage, report: LayerReport) -> list[Any]:
    """The visible leaf layers with pixels, bottom first; the others go to ``report``."""
    layers = []
    for layer in psd.descendants():
        name = clean_name(layer.name)
        parent = layer.parent
        if parent is not None and parent.kind != "psdimage" and not parent.is_visible():
            continue  # inside a hidden group: the group is reported
        if layer.is_group():
            if not layer.visible:
                report.skip(HIDDEN, f"group {name}")
            elif layer.blend_mode not in _NORMAL_BLENDS:
                report.approximate(f"{_blend_name(layer)} group(s) read as normal", name)
        elif not layer.visible:
            report.skip(HIDDEN, name)
        elif isinstance(layer, AdjustmentLayer | FillLayer):
            report.skip("adjustment or fill layer(s)", name)
        elif layer.clipping and _clips_a_layer(layer):
            continue  # folded into the layer it clips by that layer's composite
        elif layer.kind != "pixel" and not layer.has_pixels():
            report.skip(f"{layer.kind} layer(s) without pixels", name)
        else:
            if layer.blend_mode not in _NORMAL_BLENDS:
                report.approximate(f"{_blend_name(layer)} layer(s) read as normal", name)
            layers.append(layer)
    return layers


def _blend_name(layer: Any) -> str:
    return getattr(layer.blend_mode, "name", str(layer.blend_mode)).lower().replace("_", " ")


def _clips_a_layer(layer: Any) -> bool:
    """Whether a clipping layer has a non-clipping layer below it in its group."""
    siblings = list(layer.parent)
    below = siblings[: siblings.index(layer)]
    return any(not s.clipping for s in below)


def _group_opacity(layer: Any) -> float:
    """Product of the opacities of the groups holding ``layer``, in [0, 1]."""
    opacity, parent = 1.0, layer.parent
    while parent is not None and parent.is_group() and parent.kind != "psdimage":
        opacity *= parent.opacity / 255.0
        parent = parent.parent
    return opacity


def _render(layer: Any, psd: PSDImage, size: tuple[int, int], what: str) -> np.ndarray:
    """One leaf layer as ``(H, W, 4)`` straight-alpha RGBA on the canvas (uint8 or uint16)."""
    width, height = size
    try:
        plain = (
            layer.kind == "pixel"
            and psd.depth in (8, 16)
            and not layer.has_mask()
            and not layer.has_vector_mask()
            and not layer.has_clip_layers(visible=True)
        )
        if plain:
            data = layer.numpy() if layer.has_pixels() else None
            if data is None:
                rgba = np.zeros((height, width, 4), np.uint16 if psd.depth > 8 else np.uint8)
            else:
                rgba = float_to_rgba(data, _COLOUR_CHANNELS[psd.color_mode], psd.depth)
                rgba = place(rgba, size, (layer.left, layer.top))
            rgba = scale_alpha(rgba, layer.opacity / 255.0)
        else:
            # psd-tools folds the layer mask, opacity and clipped layers into the alpha
            rendered = layer.composite(viewport=(0, 0, width, height))
            if rendered is None:
                rgba = np.zeros((height, width, 4), np.uint8)
            else:
                rgba = np.asarray(rendered.convert("RGBA"))
    except (OSError, ValueError, EOFError, struct.error, NotImplementedError) as err:
        raise LayeredImageError(f"{what}: cannot decode its pixels ({err})") from None
    return scale_alpha(rgba, _group_opacity(layer))


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
