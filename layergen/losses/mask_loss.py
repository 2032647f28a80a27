"""Mask loss of the layered autoencoder (Text2Layer eq. 4 and appendix III, eqs. 7-8).

    L_mask = l1(m, m_hat) + 2 l_comp + 3 l_lap

Every term is averaged (over pixels, then over the valid foreground layers of the batch)
rather than summed, so that the appendix's weights 1 / 2 / 3 balance terms of one scale and
do not depend on the resolution. Eq. 8 sums the pyramid levels' L1 norms; every level is
divided by the same count, the finest level's pixels, which keeps eq. 8's relative weights.
"""

from __future__ import annotations

import torch
from kornia.geometry.transform import build_laplacian_pyramid
from torch import Tensor

from layergen.layers import composite_layers

COMPOSITION_EPS = 1e-6
LAPLACIAN_LEVELS = 3


def _valid_mean(per_layer: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``(B, K)`` per-layer values over the valid layers (all when ``valid`` is None)."""
    if valid is None:
        return per_layer.mean()
    weight = valid.to(per_layer.dtype)
    return (per_layer * weight).sum() / weight.sum().clamp_min(1.0)


def mask_l1_loss(pred_masks: Tensor, masks: Tensor, valid: Tensor | None = None) -> Tensor:
    """``l1(m, m_hat)``, the mean absolute error of the masks.

    Args:
        pred_masks: ``(B, K, 1, H, W)`` predicted foreground masks in [0, 1].
        masks: ``(B, K, 1, H, W)`` ground-truth foreground masks in [0, 1].
        valid: ``(B, K)`` bool, False for padded layers (left out).
    """
    return _valid_mean((pred_masks - masks).abs().flatten(2).mean(2), valid)


def composition_loss(
    pred_masks: Tensor,
    masks: Tensor,
    images: Tensor,
    eps: float = COMPOSITION_EPS,
) -> Tensor:
    """Composition loss ``mean_i sqrt((C_i - C_hat_i)^2 + eps^2)`` (Text2Layer eq. 7, averaged).

    ``C`` composites the ground-truth layers with the ground-truth masks and ``C_hat`` with the
    predicted masks (DESIGN eq. 1; with K = 1 ``C = m F + (1 - m) B``, ``C_hat = m_hat F +
    (1 - m_hat) B``). Padded layers have zero masks and images, so they add nothing.

    Args:
        pred_masks: ``(B, K, 1, H, W)`` predicted foreground masks.
        masks: ``(B, K, 1, H, W)`` ground-truth foreground masks.
        images: ``(B, K + 1, 3, H, W)`` ground-truth layers in [-1, 1], background first.
        eps: the appendix's 1e-6.
    """
    target = composite_layers(images, masks)
    pred = composite_layers(images, pred_masks)
    return torch.sqrt((target - pred).pow(2) + eps**2).mean()


def laplacian_loss(
    pred_masks: Tensor,
    masks: Tensor,
    valid: Tensor | None = None,
    levels: int = LAPLACIAN_LEVELS,
) -> Tensor:
    """Laplacian loss ``sum_{j=1..3} 2^(j-1) |phi^j(m_hat) - phi^j(m)|_1`` (Text2Layer eq. 8).

    ``phi^j`` is level j of kornia's Laplacian pyramid (level 1 the finest; the last level is
    the low-pass residual); each level's L1 sum is divided by the finest level's pixel count
    (a mean at level 1; coarser levels keep eq. 8's weight relative to it).

    Args:
        pred_masks: ``(B, K, 1, H, W)`` predicted foreground masks.
        masks: ``(B, K, 1, H, W)`` ground-truth foreground masks.
        valid: ``(B, K)`` bool, False for padded layers (left out).
        levels: pyramid levels (3 in the paper).
    """
    batch, k = masks.shape[:2]
    # (B, K, 1, H, W) -> (B*K, 1, H, W)
    pred_pyramid = build_laplacian_pyramid(pred_masks.flatten(0, 1), levels)
    true_pyramid = build_laplacian_pyramid(masks.flatten(0, 1), levels)
    num_pixels = true_pyramid[0][0].numel()  # the finest level's
    per_layer = sum(
        2.0**j * (p - t).abs().flatten(1).sum(1) / num_pixels
        for j, (p, t) in enumerate(zip(pred_pyramid, true_pyramid))
    )
    return _valid_mean(per_layer.view(batch, k), valid)


def mask_loss(
    pred_masks: Tensor,
    masks: Tensor,
    images: Tensor,
    valid: Tensor | None = None,
    l1_weight: float = 1.0,
    composition_weight: float = 2.0,
    laplacian_weight: float = 3.0,
) -> dict[str, Tensor]:
    """``L_mask = l1 + 2 comp + 3 lap`` (Text2Layer eq. 4) on the foreground masks.

    Args:
        pred_masks: ``(B, K, 1, H, W)`` predicted foreground masks in [0, 1].
        masks: ``(B, K, 1, H, W)`` ground-truth foreground masks in [0, 1].
        images: ``(B, K + 1, 3, H, W)`` ground-truth layers in [-1, 1], background first.
        valid: ``(B, K)`` bool, False for padded foregrounds.

    Returns:
        dict with ``mask_l1``, ``mask_comp``, ``mask_lap`` and their weighted sum ``mask``.
    """
    terms = {
        "mask_l1": mask_l1_loss(pred_masks, masks, valid),
        "mask_comp": composition_loss(pred_masks, masks, images),
        "mask_lap": laplacian_loss(pred_masks, masks, valid),
    }
    terms["mask"] = (
        l1_weight * terms["mask_l1"]
        + composition_weight * terms["mask_comp"]
        + laplacian_weight * terms["mask_lap"]
    )
    return terms
