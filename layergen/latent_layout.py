"""How an autoencoder packs the L layers of a layered image into ``L'`` latent layers.

Latents are ``(B, L', C, h, w)`` (DESIGN section 1). Three packings exist:

- ``"per_layer"``: one latent per layer, ``L' = L`` (``PerLayerAutoencoder``, LayerDiff).
- ``"joint"``: one latent for the whole layered image, ``L' = 1`` (the joint CaT²I-AE of
  Text2Layer IV-B; the composite-only baseline). It is reported as belonging to layer 0.
- ``"components"``: one latent per component, ``L' = 2L - 1``: the L layer images, then
  the masks of layers 1..L-1 (the SD-AE baseline, Text2Layer eq. 6; the background's mask
  ``1 - sum_i m_i`` is derived, not encoded).

:class:`LatentLayout` owns everything that follows from the packing: how many latent
layers L layers take, which layer each latent layer belongs to, padding a sample to more
layers and taking it back out of a padded batch, and the two ways ``LayeredUNet`` reads the
latents besides one per layer (its ``latent_layout`` config): image + mask pairs ("stacked",
components only) and all latent layers on the channel axis ("folded").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Packing = Literal["per_layer", "joint", "components"]
PACKINGS: tuple[str, ...] = ("per_layer", "joint", "components")


@dataclass(frozen=True)
class LatentLayout:
    """The packing of layers into latent layers (see the module docstring).

    Args:
        packing: ``"per_layer"`` (``L' = L``), ``"joint"`` (``L' = 1``) or
            ``"components"`` (``L' = 2L - 1``).
    """

    packing: Packing

    def __post_init__(self) -> None:
        if self.packing not in PACKINGS:
            raise ValueError(f"LatentLayout: packing {self.packing!r} not in {PACKINGS}")

    @classmethod
    def infer(cls, num_layers: int, latent_layers: int) -> LatentLayout:
        """The packing that puts ``num_layers`` layers into ``latent_layers`` latent layers.

        ``L' = L`` is read as per-layer first (with ``L = 1`` all three packings give one
        latent layer), then ``L' = 1`` as joint, then ``L' = 2L - 1`` as components.

        Raises:
            ValueError: no packing gives ``latent_layers`` for ``num_layers``.
        """
        for packing in PACKINGS:
            if cls(packing).latent_layers(num_layers) == latent_layers:
                return cls(packing)
        raise ValueError(f"cannot map {latent_layers} latent layers onto {num_layers} layers")

    def latent_layers(self, num_layers: int) -> int:
        """``L'`` of the latents of ``num_layers`` layers."""
        if self.packing == "per_layer":
            return num_layers
        if self.packing == "joint":
            return 1
        return 2 * num_layers - 1

    def num_layers(self, latent_layers: int) -> int | None:
        """L held by ``latent_layers`` latent layers; None for a joint latent (any L).

        Raises:
            ValueError: an even ``L'`` for the components packing.
        """
        if self.packing == "per_layer":
            return latent_layers
        if self.packing == "joint":
            return None
        if latent_layers % 2 == 0:
            raise ValueError(f"latents: expected (B, 2L - 1, C, h, w), got L' = {latent_layers}")
        return (latent_layers + 1) // 2

    def layer_index(self, num_layers: int) -> Tensor:
        """The layer each latent layer belongs to, ``(L',)`` long.

        Per-layer: ``0..L-1``; joint: ``[0]``; components: ``0..L-1`` then ``1..L-1``.
        """
        if self.packing == "per_layer":
            return torch.arange(num_layers)
        if self.packing == "joint":
            return torch.zeros(1, dtype=torch.long)
        return torch.cat([torch.arange(num_layers), torch.arange(1, num_layers)])

    def pad(self, latents: Tensor, num_layers: int, target_layers: int) -> Tensor:
        """Pad one sample's latents ``(L', C, h, w)`` of ``num_layers`` layers to
        ``target_layers`` layers with zero latent layers.

        Per-layer latents are padded at the end, components in both groups (images, masks);
        a joint latent is returned as it is.
        """
        if self.packing == "joint":
            return latents
        zeros = latents.new_zeros((target_layers - num_layers, *latents.shape[1:]))
        if self.packing == "per_layer":
            return torch.cat([latents, zeros])
        return torch.cat([latents[:num_layers], zeros, latents[num_layers:], zeros])

    def unpad(self, latents: Tensor, num_layers: int, padded_layers: int) -> Tensor:
        """One sample's latents ``(L', C, h, w)`` of ``num_layers`` layers out of its latents
        padded to ``padded_layers`` layers (the inverse of :meth:`pad`)."""
        if self.packing == "joint":
            return latents
        if self.packing == "per_layer":
            return latents[:num_layers]
        return torch.cat([latents[:num_layers], latents[padded_layers : padded_layers + num_layers - 1]])

    def to_image_mask_pairs(self, latents: Tensor) -> Tensor:
        """Components latents ``(B, 2L - 1, C, h, w)`` -> ``(B, L, 2C, h, w)`` pairs
        ``[image_i, mask_i]``; the background's mask latent is zeros (LayeredUNet "stacked")."""
        self._require_components()
        num_layers = self.num_layers(latents.shape[1])
        masks = torch.cat([torch.zeros_like(latents[:, :1]), latents[:, num_layers:]], dim=1)
        return torch.cat([latents[:, :num_layers], masks], dim=2)

    def from_image_mask_pairs(self, pairs: Tensor) -> Tensor:
        """``(B, L, 2C, h, w)`` image + mask pairs -> components ``(B, 2L - 1, C, h, w)``;
        the background's mask latent is dropped (the inverse of :meth:`to_image_mask_pairs`)."""
        self._require_components()
        channels = pairs.shape[2] // 2
        return torch.cat([pairs[:, :, :channels], pairs[:, 1:, channels:]], dim=1)

    @staticmethod
    def fold(latents: Tensor) -> Tensor:
        """``(B, L', C, h, w) -> (B, L'*C, h, w)``: every latent layer on the channel axis
        (LayeredUNet "folded", one plain UNet; any packing)."""
        batch, latent_layers, channels, height, width = latents.shape
        return latents.reshape(batch, latent_layers * channels, height, width)

    @staticmethod
    def unfold(latents: Tensor, latent_layers: int) -> Tensor:
        """``(B, L'*C, h, w) -> (B, L', C, h, w)``, the inverse of :meth:`fold`."""
        batch, _, height, width = latents.shape
        return latents.view(batch, latent_layers, -1, height, width)

    def _require_components(self) -> None:
        if self.packing != "components":
            raise ValueError(
                f"LatentLayout: image + mask pairs need the components packing, not {self.packing!r}"
            )


PER_LAYER = LatentLayout("per_layer")
JOINT = LatentLayout("joint")
COMPONENTS = LatentLayout("components")
