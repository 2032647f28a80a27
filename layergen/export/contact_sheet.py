"""Contact sheet: every layer, every mask and the composite of several layered images.

One row per sample: the layers (RGBA over a checkerboard, background first), the visible
masks (background's ``1 - sum_i m_i`` first, then each foreground's), then the composite.
Each tile is labelled with its layer prompt and the row with the global prompt. Small
images are enlarged with nearest-neighbour sampling so that 32x32 samples stay readable.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from layergen.layers import LayeredImage, unit_to_uint8

CHECKER_SQUARE = 8
LABEL_LINES = 3
LINE_HEIGHT = 11
TILE_PAD = 4


def checkerboard(height: int, width: int, square: int = CHECKER_SQUARE) -> Image.Image:
    """Light/grey checkerboard RGB image of the given size (the usual transparency backdrop)."""
    ys, xs = np.mgrid[0:height, 0:width]
    light = ((ys // square + xs // square) % 2) == 0
    board = np.where(light[..., None], 230, 180).astype(np.uint8).repeat(3, axis=-1)
    return Image.fromarray(board, mode="RGB")


def _enlarge(image: Image.Image, tile: int) -> Image.Image:
    scale = max(1, tile // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def _on_checkerboard(rgba: Image.Image) -> Image.Image:
    board = checkerboard(rgba.height, rgba.width)
    board.paste(rgba, (0, 0), rgba)
    return board


def sample_tiles(image: LayeredImage, tile: int = 128) -> list[tuple[Image.Image, str]]:
    """Tiles of one sample: (picture, label) for each layer, each mask, the composite."""
    tiles: list[tuple[Image.Image, str]] = []
    for i, (layer, prompt) in enumerate(zip(image.to_pil_layers(), image.layer_prompts)):
        tiles.append((_on_checkerboard(_enlarge(layer, tile)), f"L{i}: {prompt}"))
    for i, mask in enumerate(image.layer_masks()):
        gray = Image.fromarray(unit_to_uint8(mask[0]), mode="L").convert("RGB")
        tiles.append((_enlarge(gray, tile), "mask 0 (bg)" if i == 0 else f"mask {i}"))
    composite = image.composite_pil()
    tiles.append((_enlarge(composite, tile), "composite"))
    return tiles


def make_contact_sheet(
    images: Sequence[LayeredImage],
    tile: int = 128,
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """Contact sheet of several layered images as one RGB picture.

    Args:
        images: layered images (they may have different numbers of layers).
        tile: target tile size in pixels; images are enlarged by an integer factor.
        titles: optional row titles (defaults to each image's global prompt).

    Returns:
        A PIL RGB image.
    """
    if not images:
        raise ValueError("images: the contact sheet needs at least one layered image")
    font = ImageFont.load_default()
    rows = [sample_tiles(image, tile) for image in images]
    tile_w = max(t.width for row in rows for t, _ in row)
    tile_h = max(t.height for row in rows for t, _ in row)
    chars = max(8, tile_w // 6)
    label_h = LABEL_LINES * LINE_HEIGHT
    title_h = LINE_HEIGHT + TILE_PAD
    row_h = title_h + tile_h + label_h + TILE_PAD
    columns = max(len(row) for row in rows)
    sheet = Image.new(
        "RGB", (columns * (tile_w + TILE_PAD) + TILE_PAD, len(rows) * row_h + TILE_PAD), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for r, (image, row) in enumerate(zip(images, rows)):
        top = TILE_PAD + r * row_h
        title = titles[r] if titles is not None else image.prompt
        draw.text((TILE_PAD, top), title, fill="black", font=font)
        for c, (picture, label) in enumerate(row):
            left = TILE_PAD + c * (tile_w + TILE_PAD)
            sheet.paste(picture, (left, top + title_h))
            draw.rectangle(
                (left - 1, top + title_h - 1, left + picture.width, top + title_h + picture.height),
                outline="gray",
            )
            lines = textwrap.wrap(label, chars)[:LABEL_LINES]
            for j, line in enumerate(lines):
                draw.text(
                    (left, top + title_h + picture.height + j * LINE_HEIGHT),
                    line,
                    fill="black",
                    font=font,
                )
    return sheet


def save_contact_sheet(
    images: Sequence[LayeredImage],
    path: str | Path,
    tile: int = 128,
    titles: Sequence[str] | None = None,
) -> Path:
    """Write the contact sheet of ``images`` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_contact_sheet(images, tile, titles).save(path)
    return path
