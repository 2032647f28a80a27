"""Conversions between batched tensors and OpenCV images shared by the classical backends."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from layergen.layers import chw_to_hwc, from_unit, hwc_to_chw, to_unit, uint8_to_unit, unit_to_uint8


def to_uint8_hwc(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [-1, 1] -> ``(H, W, 3)`` uint8 RGB."""
    return np.ascontiguousarray(unit_to_uint8(chw_to_hwc(to_unit(image.detach().float().cpu()))))


def from_uint8_hwc(image: np.ndarray, like: Tensor) -> Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float in [-1, 1] on ``like``'s device."""
    return from_unit(hwc_to_chw(uint8_to_unit(image))).to(device=like.device, dtype=like.dtype)


def mask_to_uint8(mask: Tensor) -> np.ndarray:
    """``(1, H, W)`` in [0, 1] -> ``(H, W)`` uint8 in {0, 255} (pixels > 0.5 set)."""
    return np.ascontiguousarray(
        (mask[0].detach().float().cpu().numpy() > 0.5).astype(np.uint8) * 255
    )


def stack_masks(masks: list[np.ndarray], like: Tensor) -> Tensor:
    """List of ``(H, W)`` float arrays in [0, 1] -> ``(B, 1, H, W)`` on ``like``'s device."""
    return torch.from_numpy(np.stack(masks).astype(np.float32)[:, None]).to(
        device=like.device, dtype=like.dtype
    )
