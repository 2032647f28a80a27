"""Save or load a layered image, choosing the format by the path: .psd, .ora or a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layergen.export.ora import load_ora, save_ora
from layergen.export.png import load_layer_dir, save_layer_pngs
from layergen.export.psd import load_psd, save_psd
from layergen.layers import LayeredImage, LayeredImageError

LAYERED_SUFFIXES = (".psd", ".ora")


def save_layered(
    image: LayeredImage, path: str | Path, manifest: dict[str, Any] | None = None
) -> Path:
    """Save ``image`` as PSD (``.psd``), OpenRaster (``.ora``) or a PNG folder (no suffix).

    Args:
        image: a valid layered image.
        path: output path; its suffix picks the format.
        manifest: extra manifest fields (seed, model, steps, guidance, ...).

    Raises:
        ValueError: for any other suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".psd":
        return save_psd(image, path, manifest)
    if suffix == ".ora":
        return save_ora(image, path, manifest)
    if suffix == "" or path.is_dir():
        return save_layer_pngs(image, path, manifest)
    raise ValueError(f"{path}: unknown layered format '{suffix}'; use .psd, .ora or a folder name")


def load_layered(path: str | Path) -> LayeredImage:
    """Load a layered image from a ``.psd``, ``.ora`` or a folder of RGBA PNG layers.

    What each reader accepts (GIMP's and Krita's PSD and ORA files, Qwen-Image-Layered's
    and LayerDiffuse's RGBA PNGs) is described in ``load_psd``, ``load_ora`` and
    ``load_layer_dir``. A single image file is not a layered image: its error says to put
    the background and the RGBA layers in a folder.
    """
    path = Path(path)
    if not path.exists():
        raise LayeredImageError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_dir():
        return load_layer_dir(path)
    if suffix == ".psd":
        return load_psd(path)
    if suffix == ".ora":
        return load_ora(path)
    if suffix in (".png", ".webp", ".tif", ".tiff", ".jpg", ".jpeg"):
        raise LayeredImageError(
            f"{path}: one image is not a layered image; put the background and the RGBA "
            "layers in a folder (0.png = background, 1.png, ... bottom to top) and give "
            "the folder"
        )
    raise LayeredImageError(
        f"{path}: unknown layered format '{suffix}'; use .psd, .ora or a folder"
    )
