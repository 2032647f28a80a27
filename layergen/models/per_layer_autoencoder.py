"""Per-layer autoencoder: one RGB + mask autoencoder applied to every layer (LayerDiff's latents).

Each layer (RGB and its visible mask, 4 channels) is encoded on its own, so a batch of L
layers has latents ``(B, L, C, h, w)``. The decoder ends in two conv-bn-relu-conv heads (RGB;
mask with a sigmoid, Text2Layer IV-B); the composite is the composite of the decoded layers
(DESIGN eq. 1), which the training loss supervises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from layergen.latent_layout import PER_LAYER, LatentLayout
from layergen.layers import background_mask, composite_layers, from_unit, normalize_masks
from layergen.models.autoencoder_body import KLAutoencoderBody, KLLayeredAutoencoder
from layergen.models.autoencoder_outputs import (
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
)
from layergen.models.heads import ConvBnReluConvHead


def _map_valid_layers(
    fn: Callable[[Tensor], Tensor], x: Tensor, layer_valid: Tensor | None
) -> Tensor:
    """Apply ``fn`` to the valid rows of ``x`` ``(B*L, ...)``; padded rows of the result are zero.

    ``layer_valid`` is ``(B, L)`` bool or None (every layer valid). Mixed layer counts pad many
    layers (LayerDiff's K = 1..4), which are then not computed.
    """
    if layer_valid is None or bool(layer_valid.all()):
        return fn(x)
    valid = layer_valid.flatten().to(x.device)
    y = fn(x[valid])
    out = y.new_zeros((x.shape[0], *y.shape[1:]))
    out[valid] = y
    return out


class PerLayerAutoencoder(KLLayeredAutoencoder):
    """One KL autoencoder for a single RGB + mask layer, applied to each of the L layers.

    Args:
        latent_channels: C.
        block_out_channels: body widths; f = ``2 ** (len - 1)``.
        layers_per_block: resnets per block.
        norm_num_groups: GroupNorm groups.
        mid_block_add_attention: self-attention in the mid blocks.
        head_channels: hidden width of the heads (default: the decoder's last width).
        logvar_init: initial log-variance of the posterior (None: diffusers' default init).
        scaling_factor: multiply latents by it before diffusion.
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        head_channels: int | None = None,
        logvar_init: float | None = None,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.body = KLAutoencoderBody(
            in_channels=4,
            latent_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
            logvar_init=logvar_init,
        )
        width = self.body.feature_channels
        self.image_head = ConvBnReluConvHead(width, 3, head_channels)
        self.mask_head = ConvBnReluConvHead(width, 1, head_channels, sigmoid=True)

    @property
    def latent_layout(self) -> LatentLayout:
        """One latent per layer, ``L' = L``."""
        return PER_LAYER

    def encode(
        self, images: Tensor, masks: Tensor, layer_valid: Tensor | None = None
    ) -> LayeredEncoderOutput:
        """Encode every layer.

        Args:
            images: ``(B, L, 3, H, W)`` in [-1, 1].
            masks: ``(B, L, 1, H, W)`` in [0, 1] (the mask enters the encoder mapped to [-1, 1]).
            layer_valid: optional ``(B, L)`` bool; padded layers (False) are not computed: their
                posterior is ``N(0, I)`` (zero mean and log-variance, so zero KL).

        Returns:
            ``LayeredEncoderOutput`` whose posterior is over ``(B, L, C, h, w)``.
        """
        self.check_layers(images, masks, layer_valid)  # padded layers are skipped, not zeroed
        batch, num_layers = images.shape[:2]
        x = torch.cat([images, from_unit(masks)], dim=2)  # (B, L, 4, H, W)
        # (B*L, 4, H, W) -> (B*L, 2C, h, w), valid layers only
        moments = _map_valid_layers(self.body.encode_moments, x.flatten(0, 1), layer_valid)
        moments = moments.unflatten(0, (batch, num_layers))  # (B, L, 2C, h, w)
        return LayeredEncoderOutput(latent_dist=LayeredDiagonalGaussian(moments))

    def decode(
        self, latents: Tensor, num_layers: int | None = None, layer_valid: Tensor | None = None
    ) -> LayeredDecoderOutput:
        """Decode every latent layer and composite the result (DESIGN eq. 1).

        Args:
            latents: ``(B, L, C, h, w)``.
            num_layers: must equal L when given (one latent layer per layer).
            layer_valid: optional ``(B, L)`` bool; padded layers (False) are not computed and
                decode to zero images and masks, as in a padded ``LayeredBatch``.

        Returns:
            ``LayeredDecoderOutput``: images ``(B, L, 3, H, W)``, masks ``(B, L, 1, H, W)`` —
            foreground masks normalised, index 0 recomputed as ``1 - sum_i m_i`` — and the
            composite of the decoded layers ``(B, 3, H, W)``.
        """
        layers = self.check_latents(latents, num_layers)
        batch = latents.shape[0]
        # (B*L, C, h, w) -> (B*L, 4, H, W): RGB then the mask, valid layers only
        decoded = _map_valid_layers(self._decode_layers, latents.flatten(0, 1), layer_valid)
        images, raw_masks = decoded.unflatten(0, (batch, layers)).split([3, 1], dim=2)
        fg_masks = normalize_masks(raw_masks[:, 1:])
        masks = torch.cat([background_mask(fg_masks)[:, None], fg_masks], 1)
        return LayeredDecoderOutput(
            images=images, masks=masks, composite=composite_layers(images, masks)
        )

    def _decode_layers(self, latents: Tensor) -> Tensor:
        """``(N, C, h, w)`` -> RGB and raw mask ``(N, 4, H, W)`` (mask not yet normalised)."""
        features = self.body.decode_features(latents)  # (N, width, H, W)
        return torch.cat([self.image_head(features), self.mask_head(features)], dim=1)

    def forward(
        self,
        images: Tensor,
        masks: Tensor,
        layer_valid: Tensor | None = None,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[LayeredDecoderOutput, LayeredDiagonalGaussian]:
        """Encode, sample (or take the mode) and decode; returns (reconstruction, posterior).

        Padded layers (``layer_valid`` False) are neither encoded nor decoded.
        """
        posterior = self.encode(images, masks, layer_valid).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, layer_valid=layer_valid), posterior
