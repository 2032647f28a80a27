"""A simple layer-prompt adherence check on synthetic scenes: is the foreground the colour
its layer prompt names?

For each generated foreground ``F_i`` with visible mask ``m_i`` whose layer prompt names a
colour of :data:`layergen.data.shapes.COLORS`, the mask-weighted mean colour
``sum(m_i F_i) / sum(m_i)`` is mapped to the nearest palette colour; the accuracy is the share
of foregrounds whose nearest colour is the named one (chance = 1 / number of colours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from layergen.data.shapes import COLORS
from layergen.layers import LayeredImage, to_unit

MIN_MASK_AREA = 1.0  # pixels; a foreground with less visible area counts as wrong


@dataclass
class ColourCheck:
    """Result of :func:`layer_colour_accuracy`.

    Attributes:
        accuracy: share of checked foregrounds with the named colour (0 when none checked).
        checked: number of foregrounds whose layer prompt names a palette colour.
        correct: number with the nearest palette colour equal to the named one.
    """

    accuracy: float
    checked: int
    correct: int


def named_colour(layer_prompt: str) -> str | None:
    """The palette colour named in a layer prompt (``"a large red star"`` -> ``"red"``)."""
    for word in layer_prompt.lower().split():
        if word in COLORS:
            return word
    return None


def nearest_colour(rgb: torch.Tensor) -> str:
    """Nearest palette colour (Euclidean in RGB) to ``rgb`` ``(3,)`` in [0, 1]."""
    names = list(COLORS)
    palette = torch.tensor([COLORS[n] for n in names], dtype=torch.float32) / 255.0
    return names[int((palette - rgb.float()).norm(dim=1).argmin())]


def mean_layer_colour(image: LayeredImage, index: int) -> torch.Tensor | None:
    """Mask-weighted mean colour ``(3,)`` in [0, 1] of foreground ``index`` (1-based layer
    index), or None when its visible area is below ``MIN_MASK_AREA`` pixels."""
    mask = image.masks[index - 1]  # (1, H, W)
    area = mask.sum()
    if area < MIN_MASK_AREA:
        return None
    return (to_unit(image.foregrounds[index - 1]) * mask).flatten(1).sum(1) / area


def layer_colour_accuracy(images: Sequence[LayeredImage]) -> ColourCheck:
    """Colour accuracy of the foregrounds of ``images`` against their layer prompts."""
    checked = correct = 0
    for image in images:
        for i in range(1, image.num_layers):
            colour = named_colour(image.layer_prompts[i])
            if colour is None:
                continue
            checked += 1
            mean = mean_layer_colour(image, i)
            correct += int(mean is not None and nearest_colour(mean) == colour)
    return ColourCheck(correct / checked if checked else 0.0, checked, correct)
