"""A layered image as a folder of PNGs: one RGBA PNG per layer, the composite, a manifest.

Written layout (``load_layer_dir`` also reads other programs' folders of RGBA PNGs)::

    DIR/layer_00.png  ... layer_{K}.png   straight-alpha RGBA, background (opaque) first
    DIR/composite.png                     RGB composite (LayerDiff eq. 1)
    DIR/manifest.json                     prompt, layer prompts, files, seed, model, ...
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from layergen import limits
from layergen.export.manifest import apply_manifest, build_manifest, read_manifest, write_manifest
from layergen.export.reading import check_same_size, natural_key, opaque_background, pil_to_rgba
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


NOT_LAYERS = (COMPOSITE_FILE, "mergedimage.png", "thumbnail.png")
"""PNG names in a folder that are never layers (compared in lower case)."""


def _layer_names(directory: Path, manifest: dict[str, Any]) -> list[Any]:
    """The layer files of a folder, bottom first (see ``load_layer_dir``)."""
    if manifest.get("layer_files"):
        return manifest["layer_files"]
    pngs = sorted(
        (p.name for p in directory.iterdir() if p.suffix.lower() == ".png" and p.is_file()),
        key=natural_key,
    )
    ours = [n for n in pngs if n.lower().startswith("layer_")]
    if ours:
        return ours
    return [n for n in pngs if n.lower() not in NOT_LAYERS]


def load_layer_dir(directory: str | Path) -> LayeredImage:
    """Read a folder of RGBA PNG layers: ours (``save_layer_pngs``), Qwen-Image-Layered's
    (``0.png``, ``1.png``, ... from its diffusers example, ``layer_1.png``, ... from its
    app's ZIP) or any numbered PNGs, e.g. LayerDiffuse's background and foregrounds.

    Which files, bottom (the background) first:
      1. the ``layer_files`` of ``manifest.json`` when the folder has one;
      2. else the ``layer_*.png`` files, in natural order (``layer_2`` before ``layer_10``);
      3. else every ``*.png`` except ``composite.png``, ``mergedimage.png`` and
         ``thumbnail.png``, in natural order (``2.png`` before ``10.png``).
    Each layer's alpha is its straight alpha under "normal" blending (alpha = mask); the
    bottom layer is made opaque (transparent parts over white). 16-bit greyscale PNGs
    keep 16 bits. ComfyUI's Qwen-Image-Layered node also outputs the whole picture as its
    first image: leave that one out of the folder. Only plain file names inside the folder
    are read; the number of layers and each layer's size are checked against
    ``layergen.limits`` before any layer is decoded.

    Raises:
        LayeredImageError: naming the folder and the file when a layer file is missing,
            outside the folder, cannot be decoded or differs in size from the first one,
            fewer than two layers are found, or a limit is exceeded.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise LayeredImageError(f"{directory}: not a folder")
    manifest = (
        read_manifest(directory / MANIFEST_FILE) if (directory / MANIFEST_FILE).exists() else {}
    )
    names = _layer_names(directory, manifest)
    if not isinstance(names, list):
        raise LayeredImageError(f"{directory}: {MANIFEST_FILE}: layer_files must be a list")
    if len(names) < 2:
        raise LayeredImageError(
            f"{directory}: expected at least two layer PNGs (the background first: "
            f"layer_00.png or 0.png, ...), found {len(names)}"
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
                arrays.append(pil_to_rgba(layer, f"{directory}: {name}"))
        except LayeredImageError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            # PIL raises ValueError too, e.g. "Truncated IHDR chunk"
            raise LayeredImageError(f"{directory}: {name}: cannot decode ({err})") from None
        if len(arrays) > 1 and arrays[-1].shape[:2] != arrays[0].shape[:2]:
            check_same_size(arrays, names, str(directory))
    logger.debug("%s: layers bottom to top: %s", directory, ", ".join(names))
    arrays[0] = opaque_background(arrays[0])
    image = LayeredImage.from_rgba(arrays)
    if manifest:
        apply_manifest(
            image,
            {k: v for k, v in manifest.items() if not k.endswith("_file") and k != "layer_files"},
        )
    return image.validate()
