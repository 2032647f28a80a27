"""Geometric transforms applied identically to every layer of a layered image.

Every transform acts on the stacked layers and masks at once, so the background, each
foreground, each mask and the source image (if any) get exactly the same resize, crop and
flip. Resizing is bilinear with antialiasing (non-negative interpolation weights that sum
to 1), so masks stay in [0, 1] and their sum stays <= 1; RGB is clamped back to [-1, 1].
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from layergen.layers import LayeredImage

_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def _swap_left_right(text: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def _swap_in_metadata(value: Any) -> Any:
    """Swap left/right in the ``position`` fields (and mirror ``center``) of the metadata."""
    if isinstance(value, dict):
        out = {k: _swap_in_metadata(v) for k, v in value.items()}
        if isinstance(out.get("position"), str):
            out["position"] = _swap_left_right(out["position"])
        center = out.get("center")
        if isinstance(center, list) and len(center) == 2 and "position" in out:
            out["center"] = [1.0 - center[0], center[1]]
        return out
    if isinstance(value, list):
        return [_swap_in_metadata(v) for v in value]
    return value


def _map_layers(sample: LayeredImage, fn: Any) -> LayeredImage:
    """Apply ``fn`` to ``(N, C, H, W)`` stacks: the layers and source image, then the masks."""
    rgb = sample.layer_images()  # (L, 3, H, W)
    if sample.image is not None:
        rgb = torch.cat([rgb, sample.image[None]])  # (L + 1, 3, H, W)
    rgb = fn(rgb)
    masks = fn(sample.masks)  # (K, 1, H, W)
    n = sample.num_layers
    image = rgb[n] if sample.image is not None else None
    return replace(sample, background=rgb[0], foregrounds=rgb[1:n], masks=masks, image=image)


def _clamped(sample: LayeredImage) -> LayeredImage:
    """RGB back in [-1, 1] and masks in [0, 1] after an interpolation."""
    return replace(
        sample,
        background=sample.background.clamp(-1.0, 1.0),
        foregrounds=sample.foregrounds.clamp(-1.0, 1.0),
        masks=sample.masks.clamp(0.0, 1.0),
        image=sample.image.clamp(-1.0, 1.0) if sample.image is not None else None,
    )


def resize_center_crop(sample: LayeredImage, size: int) -> LayeredImage:
    """Resize the shorter side to ``size`` and centre-crop to ``(size, size)``.

    Args:
        sample: layered image ``(3, H, W)`` / ``(K, 3, H, W)`` / ``(K, 1, H, W)``.
        size: output side in pixels.

    Returns:
        A layered image of size ``(size, size)``; unchanged if it already has that size.
    """
    if sample.size == (size, size):
        return sample

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = TF.resize(x, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return TF.center_crop(x, [size, size])

    return _clamped(_map_layers(sample, fn))


def resize(sample: LayeredImage, size: tuple[int, int]) -> LayeredImage:
    """Resize every layer to ``size`` = ``(H, W)`` (the aspect ratio may change, nothing is cut)."""
    if sample.size == tuple(size):
        return sample
    size = [int(size[0]), int(size[1])]
    return _clamped(_map_layers(
        sample, lambda x: TF.resize(x, size, interpolation=InterpolationMode.BILINEAR, antialias=True)))


def horizontal_flip(sample: LayeredImage) -> LayeredImage:
    """Mirror every layer left-right; swap "left"/"right" in the prompts and positions."""
    out = _map_layers(sample, TF.horizontal_flip)
    return replace(
        out,
        prompt=_swap_left_right(sample.prompt),
        layer_prompts=[_swap_left_right(p) for p in sample.layer_prompts],
        metadata={**_swap_in_metadata(sample.metadata), "flipped": True},
    )


class LayeredTransform:
    """Resize/centre-crop to ``size`` then, optionally, a random horizontal flip (p = 0.5).

    The flip draws from torch's global generator, which Lightning seeds per worker
    (``seed_everything(workers=True)``).

    Args:
        size: output side in pixels (None: keep the size).
        random_flip: flip half of the samples.
    """

    def __init__(self, size: int | None = None, random_flip: bool = False) -> None:
        self.size = size
        self.random_flip = random_flip

    def __call__(self, sample: LayeredImage) -> LayeredImage:
        if self.size is not None:
            sample = resize_center_crop(sample, self.size)
        if self.random_flip and bool(torch.rand(()) < 0.5):
            sample = horizontal_flip(sample)
        return sample
