"""Shared steps of the PSD, OpenRaster and PNG-folder readers.

Files written by other programs (GIMP, Krita, Photoshop, LayerDiffuse, Qwen-Image-Layered)
hold layers smaller than the canvas at offsets, 16-bit channels, hidden layers and layers
that are not pixels. These helpers turn one layer into a canvas-sized straight-alpha RGBA
array, make the bottom layer an opaque background, and report what was skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from layergen.layers import LayeredImageError

logger = logging.getLogger(__name__)

MAX_NAMES_LOGGED = 8
"""Layer names listed per reason in the skipped-layers warning."""


def clean_name(name: str) -> str:
    """A layer name without the NUL padding and surrounding blanks some writers add
    (Krita's PSD layer names end in ``\\x00``)."""
    return name.replace("\x00", "").strip()


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``2.png`` before ``10.png`` (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def pil_to_rgba(image: Image.Image, what: str) -> np.ndarray:
    """A decoded layer image as ``(h, w, 4)`` straight-alpha RGBA, uint8 or uint16.

    16-bit greyscale PNGs (``I;16``) keep their 16 bits; every other mode PIL can convert
    (``RGB``, ``RGBA``, ``L``, ``LA``, ``P``, ...) becomes 8-bit RGBA.

    Raises:
        LayeredImageError: ``what`` names the file and layer, for CMYK or float images.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(image).astype(np.int64).clip(0, 65535).astype(np.uint16)
        alpha = np.full_like(grey, 65535)
        return np.stack([grey, grey, grey, alpha], axis=-1)
    if mode in ("CMYK", "F"):
        raise LayeredImageError(
            f"{what}: {mode} pixels are not supported; save the layer as RGB or RGBA"
        )
    return np.asarray(image.convert("RGBA"))


def float_to_rgba(data: np.ndarray, colour_channels: int, bits: int) -> np.ndarray:
    """``(h, w, c)`` floats in [0, 1] (grey or RGB, with or without alpha) as RGBA.

    Args:
        data: colour channels first, then an optional alpha channel.
        colour_channels: 1 (greyscale) or 3 (RGB).
        bits: 8 (uint8 result) or 16 (uint16 result).
    """
    if data.ndim == 2:
        data = data[..., None]
    colour = data[..., :colour_channels]
    if colour_channels == 1:
        colour = np.repeat(colour, 3, axis=-1)
    if data.shape[-1] > colour_channels:
        alpha = data[..., colour_channels : colour_channels + 1]
    else:
        alpha = np.ones(data.shape[:2] + (1,), dtype=data.dtype)
    scale, dtype = (65535.0, np.uint16) if bits > 8 else (255.0, np.uint8)
    rgba = np.concatenate([colour, alpha], axis=-1).astype(np.float64)
    return np.rint(np.clip(rgba, 0.0, 1.0) * scale).astype(dtype)


def place(rgba: np.ndarray, size: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """Put a layer of any size at ``offset`` (x, y; may be negative) on a transparent canvas.

    Args:
        rgba: ``(h, w, 4)`` layer.
        size: canvas ``(width, height)``.
        offset: the layer's top-left corner on the canvas; parts outside are cut off.

    Returns:
        ``(height, width, 4)`` of ``rgba``'s dtype.
    """
    width, height = size
    canvas = np.zeros((height, width, 4), dtype=rgba.dtype)
    x, y = offset
    h, w = rgba.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = rgba[y0 - y : y1 - y, x0 - x : x1 - x]
    return canvas


def scale_alpha(rgba: np.ndarray, opacity: float) -> np.ndarray:
    """Multiply the straight alpha by a layer's or group's ``opacity`` in [0, 1]."""
    if opacity >= 1.0:
        return rgba
    out = rgba.copy()
    alpha = out[..., 3].astype(np.float64) * max(opacity, 0.0)
    out[..., 3] = np.rint(alpha).astype(rgba.dtype)
    return out


def opaque_background(rgba: np.ndarray) -> np.ndarray:
    """The bottom layer made opaque: transparent parts are laid over white, as GIMP and
    Krita flatten an image (a layered image's background has no alpha)."""
    top = np.iinfo(rgba.dtype).max
    alpha = rgba[..., 3:].astype(np.float64) / top
    if alpha.min() >= 1.0:
        return rgba
    rgb = rgba[..., :3].astype(np.float64) * alpha + top * (1.0 - alpha)
    out = np.empty_like(rgba)
    out[..., :3] = np.rint(rgb).astype(rgba.dtype)
    out[..., 3] = top
    return out


def check_same_size(arrays: Sequence[np.ndarray], names: Sequence[str], where: str) -> None:
    """Every layer has the first one's size; the message names the file that differs."""
    height, width = arrays[0].shape[:2]
    for array, name in zip(arrays[1:], names[1:]):
        if array.shape[:2] != (height, width):
            raise LayeredImageError(
                f"{where}: {name}: size {array.shape[1]}x{array.shape[0]} differs from "
                f"{names[0]}'s {width}x{height}"
            )


HIDDEN = "hidden"
"""The skip reason of hidden layers and groups: expected, so logged at INFO, not WARNING."""


class LayerReport:
    """What a reader left out or read approximately, logged once per file.

    Hidden layers are skipped and logged at INFO; layers that cannot be read as pixels
    (adjustment, fill, text without pixels, ...) are skipped with a WARNING, and so are
    settings read approximately (a blend mode other than normal read as normal). Each
    message names the file, the count and the layers.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.skipped: dict[str, list[str]] = {}
        self.approximated: dict[str, list[str]] = {}

    def skip(self, reason: str, name: str) -> None:
        """Record one layer left out."""
        self.skipped.setdefault(reason, []).append(name)

    def approximate(self, reason: str, name: str) -> None:
        """Record one layer read with a setting approximated."""
        self.approximated.setdefault(reason, []).append(name)

    def count(self) -> int:
        """Number of skipped layers."""
        return sum(len(names) for names in self.skipped.values())

    @staticmethod
    def _summary(by_reason: dict[str, list[str]]) -> str:
        parts = []
        for reason, names in by_reason.items():
            listed = ", ".join(repr(n[:80]) for n in names[:MAX_NAMES_LOGGED])
            if len(names) > MAX_NAMES_LOGGED:
                listed += f", ... {len(names) - MAX_NAMES_LOGGED} more"
            parts.append(f"{len(names)} {reason} ({listed})")
        return "; ".join(parts)

    def summary(self) -> str:
        """``"2 hidden ('a', 'b'); 1 adjustment layer ('Curves 1')"``, or ``""``."""
        return self._summary(self.skipped)

    def log(self) -> None:
        """Log the skipped and approximated layers (nothing when there are none)."""
        if self.skipped:
            level = logging.INFO if set(self.skipped) == {HIDDEN} else logging.WARNING
            logger.log(
                level, "%s: skipped %d layer(s): %s", self.where, self.count(), self.summary()
            )
        if self.approximated:
            logger.warning(
                "%s: read approximately: %s", self.where, self._summary(self.approximated)
            )
