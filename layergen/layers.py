"""The layered-image data model shared by every part of layergen.

A layered image holds a background ``B`` and ``K >= 1`` foregrounds ``F_1..F_K`` (ordered
back to front), each with a visible-region mask ``m_i``. The composite is always derived
(LayerDiff eq. 1; with K = 1 Text2Layer eq. 1)::

    I = (1 - sum_i m_i) * B + sum_i m_i * F_i

Layer index 0 is the background, layers 1..K the foregrounds, so a layered image has
``L = K + 1`` layers. Batches mix samples with different K: they are padded to
``L = K_max + 1`` layers and carry a boolean ``layer_valid`` of shape ``(B, L)``.

A layered image made from a photograph may also carry that source ``image``: it is not the
composite (inpainting and mask edges differ) and is the target of the joint autoencoder's
auxiliary composite head and the FID reference (Text2Layer IV-B, V-B). Without one (synthetic
scenes), ``image_or_composite()`` falls back to the derived composite.

Value ranges: RGB tensors in [-1, 1], masks in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

BACKGROUND_PROMPT = "the background"
MASK_SUM_TOLERANCE = 1e-3


class LayeredImageError(ValueError):
    """A layered image or batch is malformed; the message names the field."""


# ----------------------------------------------------------------------------------------
# Value-range helpers
# ----------------------------------------------------------------------------------------


def to_unit(x: Tensor) -> Tensor:
    """Map [-1, 1] to [0, 1]."""
    return (x + 1.0) / 2.0


def from_unit(x: Tensor) -> Tensor:
    """Map [0, 1] to [-1, 1]."""
    return x * 2.0 - 1.0


def unit_to_uint8(x: Tensor | np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 [0, 255] with rounding (clamps first)."""
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def uint8_to_unit(x: np.ndarray) -> Tensor:
    """Map uint8 [0, 255] (or uint16 [0, 65535]) to a float tensor in [0, 1]."""
    x = np.asarray(x)
    scale = 65535.0 if x.dtype == np.uint16 else 255.0
    return torch.from_numpy(x.astype(np.float32) / scale)


def chw_to_hwc(x: Tensor) -> Tensor:
    """(C, H, W) -> (H, W, C)."""
    return x.permute(1, 2, 0)


def hwc_to_chw(x: Tensor) -> Tensor:
    """(H, W, C) -> (C, H, W)."""
    return x.permute(2, 0, 1)


# ----------------------------------------------------------------------------------------
# Compositing
# ----------------------------------------------------------------------------------------


def composite_layers(images: Tensor, masks: Tensor) -> Tensor:
    """Composite a stack of layers (DESIGN eq. 1, LayerDiff eq. 1).

    Args:
        images: ``(..., L, 3, H, W)`` layer RGB; index 0 on the layer axis is the background.
        masks: ``(..., L, 1, H, W)`` or ``(..., L - 1, 1, H, W)`` masks in [0, 1]. When L masks
            are given, index 0 (the background's) is ignored: the background weight is always
            ``1 - sum_i m_i`` of the foreground masks. Padded layers must have zero masks.

    Returns:
        ``(..., 3, H, W)`` composite, same range as ``images``.
    """
    num_layers = images.shape[-4]
    fg_masks = masks[..., 1:, :, :, :] if masks.shape[-4] == num_layers else masks
    if fg_masks.shape[-4] != num_layers - 1:
        raise LayeredImageError(
            f"masks: expected {num_layers} or {num_layers - 1} masks for {num_layers} layers, "
            f"got {masks.shape[-4]}"
        )
    background = images[..., 0, :, :, :]
    foregrounds = images[..., 1:, :, :, :]
    background_weight = 1.0 - fg_masks.sum(dim=-4)
    return background_weight * background + (fg_masks * foregrounds).sum(dim=-4)


def mask_boxes(masks: Tensor, threshold: float = 0.5) -> Tensor:
    """Bounding boxes of masks: ``(..., 1, H, W)`` in [0, 1] -> ``(..., 4)`` ``(x0, y0, x1, y1)``
    in [0, 1] (pixel edges over the side) of ``mask > threshold``; NaN where it is empty."""
    inside = masks[..., 0, :, :] > threshold  # (..., H, W)
    height, width = inside.shape[-2:]
    rows, cols = inside.any(dim=-1), inside.any(dim=-2)  # (..., H), (..., W)

    def span(hit: Tensor, size: int) -> tuple[Tensor, Tensor]:
        index = torch.arange(size, device=hit.device)
        first = torch.where(hit, index, size).amin(dim=-1)
        last = torch.where(hit, index, -1).amax(dim=-1)
        return first.float() / size, (last + 1).float() / size

    (y0, y1), (x0, x1) = span(rows, height), span(cols, width)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1)
    return torch.where(rows.any(dim=-1)[..., None], boxes, float("nan"))


def background_mask(fg_masks: Tensor) -> Tensor:
    """Visible region of the background, ``m_b = 1 - sum_i m_i`` (clamped to [0, 1]).

    Args:
        fg_masks: ``(..., K, 1, H, W)`` foreground masks.

    Returns:
        ``(..., 1, H, W)``.
    """
    return (1.0 - fg_masks.sum(dim=-4)).clamp(0.0, 1.0)


def normalize_masks(fg_masks: Tensor) -> Tensor:
    """Scale predicted foreground masks so that their sum is at most 1 where it exceeds 1.

    Decoders predict each mask with its own sigmoid; visible masks must not overlap by more
    than the whole pixel. Where ``s = sum_i m_i > 1`` every mask is divided by ``s``.

    Args:
        fg_masks: ``(..., K, 1, H, W)`` in [0, 1].

    Returns:
        ``(..., K, 1, H, W)`` in [0, 1] with ``sum_i m_i <= 1``.
    """
    total = fg_masks.sum(dim=-4, keepdim=True)
    return fg_masks / total.clamp_min(1.0)


def blend_alphas(masks: Tensor) -> Tensor:
    """Straight alphas that reproduce visible masks under "normal" blending.

    ``a_i = m_i / (1 - sum_{j > i} m_j)`` (0 where nothing is left uncovered).

    Args:
        masks: ``(..., K, 1, H, W)`` visible masks, back to front, ``sum_i m_i <= 1``.

    Returns:
        ``(..., K, 1, H, W)`` alphas in [0, 1].
    """
    covered_above = masks.flip(-4).cumsum(-4).flip(-4) - masks  # sum_{j > i} m_j
    uncovered = (1.0 - covered_above).clamp_min(0.0)
    alpha = torch.where(uncovered > 1e-6, masks / uncovered.clamp_min(1e-6), torch.zeros_like(masks))
    return alpha.clamp(0.0, 1.0)


def visible_masks(alphas: Tensor) -> Tensor:
    """Visible masks of layers stacked with "normal" blending: ``m_i = a_i prod_{j>i} (1 - a_j)``.

    Args:
        alphas: ``(..., K, 1, H, W)`` straight alphas in [0, 1], back to front.

    Returns:
        ``(..., K, 1, H, W)`` visible masks; their sum is at most 1.
    """
    transmit = (1.0 - alphas).flip(-4).cumprod(-4).flip(-4)  # prod_{j >= i} (1 - a_j)
    above = torch.cat([transmit[..., 1:, :, :, :], torch.ones_like(transmit[..., :1, :, :, :])], -4)
    return alphas * above


# ----------------------------------------------------------------------------------------
# One layered image
# ----------------------------------------------------------------------------------------


def _check_finite(name: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise LayeredImageError(f"{name}: contains NaN or infinite values")


@dataclass
class LayeredImage:
    """One layered image: background, K foregrounds with visible masks, prompts.

    Attributes:
        background: ``(3, H, W)`` float in [-1, 1].
        foregrounds: ``(K, 3, H, W)`` float in [-1, 1], back to front.
        masks: ``(K, 1, H, W)`` float in [0, 1], visible regions, ``sum_i m_i <= 1``.
        prompt: global caption.
        layer_prompts: ``K + 1`` strings; index 0 is the background ("the background").
        metadata: free-form JSON-serialisable data (source, scores, depth, key, ...).
        image: ``(3, H, W)`` float in [-1, 1], the source photograph, or None (synthetic).
    """

    background: Tensor
    foregrounds: Tensor
    masks: Tensor
    prompt: str = ""
    layer_prompts: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    image: Tensor | None = None

    def __post_init__(self) -> None:
        if self.layer_prompts is None:
            self.layer_prompts = [BACKGROUND_PROMPT] + [""] * self.num_foregrounds
        else:
            self.layer_prompts = list(self.layer_prompts)

    @property
    def num_foregrounds(self) -> int:
        """K."""
        return int(self.foregrounds.shape[0]) if self.foregrounds.ndim == 4 else 0

    @property
    def num_layers(self) -> int:
        """L = K + 1."""
        return self.num_foregrounds + 1

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.background.shape[-2]), int(self.background.shape[-1])

    def layer_images(self) -> Tensor:
        """``(L, 3, H, W)``: background then foregrounds."""
        return torch.cat([self.background[None], self.foregrounds], dim=0)

    def layer_masks(self) -> Tensor:
        """``(L, 1, H, W)``: the background's visible mask then the foreground masks."""
        return torch.cat([background_mask(self.masks)[None], self.masks], dim=0)

    def composite(self) -> Tensor:
        """``(3, H, W)`` composite in [-1, 1] (eq. 1)."""
        return composite_layers(self.layer_images(), self.masks)

    def image_or_composite(self) -> Tensor:
        """``(3, H, W)``: the source image if there is one, else the composite."""
        return self.image if self.image is not None else self.composite()

    def validate(self, mask_sum_tolerance: float = MASK_SUM_TOLERANCE) -> LayeredImage:
        """Check shapes, ranges and prompts; raise ``LayeredImageError`` naming the field."""
        if self.background.ndim != 3 or self.background.shape[0] != 3:
            raise LayeredImageError(
                f"background: expected shape (3, H, W), got {tuple(self.background.shape)}"
            )
        height, width = self.size
        k = self.num_foregrounds
        if self.foregrounds.ndim != 4 or tuple(self.foregrounds.shape[1:]) != (3, height, width):
            raise LayeredImageError(
                f"foregrounds: expected shape (K, 3, {height}, {width}), "
                f"got {tuple(self.foregrounds.shape)}"
            )
        if k < 1:
            raise LayeredImageError("foregrounds: a layered image needs K >= 1 foregrounds")
        if tuple(self.masks.shape) != (k, 1, height, width):
            raise LayeredImageError(
                f"masks: expected shape ({k}, 1, {height}, {width}), got {tuple(self.masks.shape)}"
            )
        if self.image is not None and tuple(self.image.shape) != (3, height, width):
            raise LayeredImageError(
                f"image: expected shape (3, {height}, {width}), got {tuple(self.image.shape)}"
            )
        rgb = ("background", "foregrounds") + (("image",) if self.image is not None else ())
        for name in (*rgb, "masks"):
            _check_finite(name, getattr(self, name))
        for name in rgb:
            x = getattr(self, name)
            if x.min() < -1.0 - 1e-4 or x.max() > 1.0 + 1e-4:
                raise LayeredImageError(
                    f"{name}: values must lie in [-1, 1], got [{x.min():.4g}, {x.max():.4g}]"
                )
        if self.masks.min() < 0.0 or self.masks.max() > 1.0:
            raise LayeredImageError(
                f"masks: values must lie in [0, 1], got "
                f"[{self.masks.min():.4g}, {self.masks.max():.4g}]"
            )
        total = self.masks.sum(dim=0).max()
        if total > 1.0 + mask_sum_tolerance:
            raise LayeredImageError(
                f"masks: the sum of the foreground masks must be <= 1 (visible regions), "
                f"got up to {total:.4g}"
            )
        if len(self.layer_prompts) != k + 1:
            raise LayeredImageError(
                f"layer_prompts: expected K + 1 = {k + 1} prompts (index 0 the background), "
                f"got {len(self.layer_prompts)}"
            )
        if not all(isinstance(p, str) for p in self.layer_prompts):
            raise LayeredImageError("layer_prompts: every layer prompt must be a string")
        if not isinstance(self.prompt, str):
            raise LayeredImageError(f"prompt: expected a string, got {type(self.prompt).__name__}")
        return self

    # -- straight-alpha RGBA conversions --------------------------------------------------

    def to_rgba(self) -> list[np.ndarray]:
        """Layers as straight-alpha RGBA uint8 arrays ``(H, W, 4)``, background first.

        The background is opaque. Stacking with "normal" blending (Photoshop, GIMP, Krita)
        shows layer i through the layers above it, so its alpha is the visible mask divided by
        what the layers above leave uncovered: ``a_i = m_i / (1 - sum_{j > i} m_j)``. Blending
        these layers reproduces ``composite()``; ``from_rgba`` inverts the mapping.
        """
        return [unit_to_uint8(chw_to_hwc(rgba)) for rgba in self.to_rgba_tensors()]

    def to_rgba_tensors(self) -> list[Tensor]:
        """Layers as straight-alpha RGBA float tensors ``(4, H, W)`` in [0, 1] (see ``to_rgba``)."""
        alphas = blend_alphas(self.masks)
        out = []
        alpha_bg = torch.ones(1, *self.size, dtype=self.background.dtype)
        for rgb, alpha in zip(self.layer_images(), [alpha_bg, *alphas]):
            out.append(torch.cat([to_unit(rgb), alpha], dim=0))
        return out

    def to_pil_layers(self) -> list[Image.Image]:
        """Layers as PIL RGBA images, background first."""
        return [Image.fromarray(a, mode="RGBA") for a in self.to_rgba()]

    def composite_pil(self) -> Image.Image:
        """The composite as a PIL RGB image."""
        return Image.fromarray(unit_to_uint8(chw_to_hwc(to_unit(self.composite()))), mode="RGB")

    @classmethod
    def from_rgba(
        cls,
        layers: Sequence[np.ndarray | Image.Image],
        prompt: str = "",
        layer_prompts: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> LayeredImage:
        """Build from straight-alpha RGBA layers, background first.

        The background's alpha is ignored (treated as opaque). Layers stacked with "normal"
        blending have visible regions ``m_i = a_i * prod_{j > i} (1 - a_j)``, which are stored
        as the masks (the inverse of ``blend_alphas``).

        Args:
            layers: ``L >= 2`` arrays ``(H, W, 4)`` uint8 (or PIL images, converted to RGBA).
        """
        if len(layers) < 2:
            raise LayeredImageError("layers: need a background and at least one foreground")
        arrays = [np.asarray(x.convert("RGBA") if isinstance(x, Image.Image) else x) for x in layers]
        for i, a in enumerate(arrays):
            if a.ndim != 3 or a.shape[2] != 4:
                raise LayeredImageError(f"layers[{i}]: expected (H, W, 4) RGBA, got {a.shape}")
            if a.shape[:2] != arrays[0].shape[:2]:
                raise LayeredImageError(
                    f"layers[{i}]: size {a.shape[:2]} differs from the background's "
                    f"{arrays[0].shape[:2]}"
                )
        rgba = torch.stack([hwc_to_chw(uint8_to_unit(a)) for a in arrays])  # (L, 4, H, W)
        rgb = from_unit(rgba[:, :3])
        alpha = rgba[1:, 3:]
        return cls(
            background=rgb[0],
            foregrounds=rgb[1:],
            masks=visible_masks(alpha),
            prompt=prompt,
            layer_prompts=list(layer_prompts) if layer_prompts is not None else None,
            metadata=dict(metadata or {}),
        )

    def to(self, *args: Any, **kwargs: Any) -> LayeredImage:
        """Move tensors (``Tensor.to`` arguments)."""
        return replace(
            self,
            background=self.background.to(*args, **kwargs),
            foregrounds=self.foregrounds.to(*args, **kwargs),
            masks=self.masks.to(*args, **kwargs),
            image=self.image.to(*args, **kwargs) if self.image is not None else None,
        )


# ----------------------------------------------------------------------------------------
# A padded batch
# ----------------------------------------------------------------------------------------


@dataclass
class LayeredBatch:
    """A batch of layered images padded to ``L = K_max + 1`` layers.

    Attributes:
        images: ``(B, L, 3, H, W)`` in [-1, 1]; layer 0 is the background; padded layers 0.
        masks: ``(B, L, 1, H, W)`` in [0, 1]; layer 0 is the background's visible mask
            ``1 - sum_i m_i``; padded layers 0.
        layer_valid: ``(B, L)`` bool; True for the background and the K real foregrounds.
        prompts: B global prompts.
        layer_prompts: B lists of L strings (padded with "").
        metadata: B dicts.
        image: ``(B, 3, H, W)`` in [-1, 1]: each sample's source image, or its composite where
            it has none; None when no sample has one.
    """

    images: Tensor
    masks: Tensor
    layer_valid: Tensor
    prompts: list[str]
    layer_prompts: list[list[str]]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    image: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_layers(self) -> int:
        """L (padded)."""
        return int(self.images.shape[1])

    @property
    def num_foregrounds(self) -> Tensor:
        """``(B,)`` long: K per sample."""
        return self.layer_valid.sum(dim=1) - 1

    def composite(self) -> Tensor:
        """``(B, 3, H, W)`` composite in [-1, 1] (eq. 1)."""
        return composite_layers(self.images, self.masks)

    def image_or_composite(self) -> Tensor:
        """``(B, 3, H, W)``: the source images if the batch has them, else the composites."""
        return self.image if self.image is not None else self.composite()

    @classmethod
    def collate(cls, samples: Sequence[LayeredImage], num_layers: int | None = None) -> LayeredBatch:
        """Pad and stack layered images (a ``collate_fn``).

        Args:
            samples: layered images of one size, any K.
            num_layers: pad to this L (default ``K_max + 1`` of the batch).
        """
        if not samples:
            raise LayeredImageError("samples: cannot collate an empty batch")
        sizes = {s.size for s in samples}
        if len(sizes) != 1:
            raise LayeredImageError(f"samples: all images in a batch need one size, got {sizes}")
        height, width = sizes.pop()
        max_layers = max(s.num_layers for s in samples)
        num_layers = max_layers if num_layers is None else num_layers
        if num_layers < max_layers:
            raise LayeredImageError(
                f"num_layers: {num_layers} is fewer than the {max_layers} layers in the batch"
            )
        dtype = samples[0].background.dtype
        images = torch.zeros(len(samples), num_layers, 3, height, width, dtype=dtype)
        masks = torch.zeros(len(samples), num_layers, 1, height, width, dtype=dtype)
        valid = torch.zeros(len(samples), num_layers, dtype=torch.bool)
        layer_prompts = []
        for b, s in enumerate(samples):
            n = s.num_layers
            images[b, :n] = s.layer_images()
            masks[b, :n] = s.layer_masks()
            valid[b, :n] = True
            layer_prompts.append(list(s.layer_prompts) + [""] * (num_layers - n))
        has_image = any(s.image is not None for s in samples)
        return cls(
            images=images,
            masks=masks,
            layer_valid=valid,
            prompts=[s.prompt for s in samples],
            layer_prompts=layer_prompts,
            metadata=[dict(s.metadata) for s in samples],
            image=torch.stack([s.image_or_composite() for s in samples]) if has_image else None,
        )

    def unbatch(self) -> list[LayeredImage]:
        """Split into ``LayeredImage``s, dropping padded layers (``image`` as batched)."""
        out = []
        for b in range(len(self)):
            n = int(self.layer_valid[b].sum())
            out.append(
                LayeredImage(
                    background=self.images[b, 0],
                    foregrounds=self.images[b, 1:n],
                    masks=self.masks[b, 1:n],
                    prompt=self.prompts[b],
                    layer_prompts=self.layer_prompts[b][:n],
                    metadata=dict(self.metadata[b]) if self.metadata else {},
                    image=self.image[b] if self.image is not None else None,
                )
            )
        return out

    def to(self, *args: Any, **kwargs: Any) -> LayeredBatch:
        """Move tensors (``Tensor.to`` arguments); ``layer_valid`` keeps its bool dtype."""
        device_only = {k: v for k, v in kwargs.items() if k != "dtype"}
        device_args = [a for a in args if not isinstance(a, torch.dtype)]
        return replace(
            self,
            images=self.images.to(*args, **kwargs),
            masks=self.masks.to(*args, **kwargs),
            layer_valid=self.layer_valid.to(*device_args, **device_only),
            image=self.image.to(*args, **kwargs) if self.image is not None else None,
        )
