"""Mask IoU at a threshold (Text2Layer V-B, Table II).

Text2Layer compares each generated mask ``m`` with a reference mask: a salient-object
detector (ICON) run on the generated composite, or a human annotation. Both masks are
binarised at 0.5 and ``IoU = |A ∩ B| / |A ∪ B|``; two empty masks agree perfectly (IoU 1).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from layergen.layers import LayeredImage

IOU_THRESHOLD = 0.5


class SalientMaskFn(Protocol):
    """A reference-mask backend: composites ``(N, 3, H, W)`` in [-1, 1] -> ``(N, 1, H, W)``
    saliency in [0, 1] (ICON in the paper; a trained segmenter or a classical backend here)."""

    def __call__(self, composites: Tensor) -> Tensor: ...


def mask_iou(pred: Tensor, target: Tensor, threshold: float = IOU_THRESHOLD) -> Tensor:
    """IoU of masks binarised at ``threshold``.

    Args:
        pred: ``(..., 1, H, W)`` (or ``(N, H, W)``) in [0, 1], e.g. ``(B, L, 1, H, W)``.
        target: same shape, in [0, 1].
        threshold: a pixel is foreground when its value is ``> threshold``.

    Returns:
        ``(...)`` (``(N,)``) IoU in [0, 1]; 1 where both masks are empty.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred, target: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    pixel_dims = 2 if pred.dim() == 3 else 3
    a = (pred > threshold).flatten(-pixel_dims)
    b = (target > threshold).flatten(-pixel_dims)
    intersection = (a & b).sum(-1).float()
    union = (a | b).sum(-1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def foreground_union(image: LayeredImage) -> Tensor:
    """The union of the foreground masks, ``sum_i m_i = 1 - m_B``: ``(1, H, W)`` in [0, 1]."""
    return image.masks.sum(0).clamp(0, 1)


def layer_mask_ious(
    pred: LayeredImage, target: LayeredImage, threshold: float = IOU_THRESHOLD
) -> Tensor:
    """IoU of each foreground mask with the matching ground-truth layer: ``(K,)``.

    Raises:
        ValueError: the two images have different numbers of foregrounds.
    """
    if pred.num_foregrounds != target.num_foregrounds:
        raise ValueError(
            f"layer counts differ: generated {pred.num_foregrounds} foregrounds, "
            f"reference {target.num_foregrounds}"
        )
    return mask_iou(pred.masks.float().cpu(), target.masks.float().cpu(), threshold)
