"""Composition-aware layered autoencoder, the joint CaT²I-AE (Text2Layer IV-B).

The encoder sees the whole layered image stacked on the channel axis — K foregrounds, the
background and K masks, ``3(K + 1) + K`` channels (K = 1 gives the paper's 7) — and produces one
latent layer. The SD-AE decoder's last layer is replaced by one conv-bn-relu-conv head per
component (each F_i, B, each m_i with a sigmoid) plus the auxiliary composite head I, which
``composite_head=False`` removes (the paper's "no-sup" ablation).

``LayeredAutoencoder``, the class's name before it was renamed to tell it apart from the
per-layer model, remains an alias: saved models, pipelines and configs carrying it load.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from layergen.latent_layout import JOINT, LatentLayout
from layergen.layers import LayeredImageError, background_mask, normalize_masks
from layergen.models.autoencoder_body import KLAutoencoderBody, KLLayeredAutoencoder
from layergen.models.autoencoder_outputs import (
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
)
from layergen.models.heads import ConvBnReluConvHead


class JointAutoencoder(KLLayeredAutoencoder):
    """Joint CaT²I-AE: a whole layered image <-> one latent ``(B, 1, C, h, w)``.

    Args:
        num_foregrounds: K, the number of foreground layers the model encodes; batches with
            fewer layers are padded with zero layers.
        latent_channels: C (SD: 4).
        block_out_channels: body widths; f = ``2 ** (len - 1)`` (SD: (128, 256, 512, 512), f = 8).
        layers_per_block: resnets per block (SD: 2).
        norm_num_groups: GroupNorm groups (SD: 32).
        mid_block_add_attention: self-attention in the mid blocks (SD: True).
        composite_head: add the auxiliary head predicting the composite I (False = "no-sup").
        head_channels: hidden width of the heads (default: the decoder's last width).
        logvar_init: initial log-variance of the posterior (None: diffusers' default init).
        scaling_factor: multiply latents by it before diffusion.
    """

    @register_to_config
    def __init__(
        self,
        num_foregrounds: int = 1,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        composite_head: bool = True,
        head_channels: int | None = None,
        logvar_init: float | None = None,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if num_foregrounds < 1:
            raise ValueError(f"num_foregrounds: must be >= 1, got {num_foregrounds}")
        k = num_foregrounds
        self.body = KLAutoencoderBody(
            in_channels=3 * (k + 1) + k,
            latent_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
            logvar_init=logvar_init,
        )
        width = self.body.feature_channels
        self.foreground_heads = nn.ModuleList(
            ConvBnReluConvHead(width, 3, head_channels) for _ in range(k)
        )
        self.background_head = ConvBnReluConvHead(width, 3, head_channels)
        self.mask_heads = nn.ModuleList(
            ConvBnReluConvHead(width, 1, head_channels, sigmoid=True) for _ in range(k)
        )
        self.auxiliary_head = (
            ConvBnReluConvHead(width, 3, head_channels) if composite_head else None
        )

    @property
    def latent_layout(self) -> LatentLayout:
        """One latent for the whole layered image, ``L' = 1``."""
        return JOINT

    @property
    def fixed_num_layers(self) -> int:
        """L = K + 1, the layers the model encodes (batches are padded to it) and decodes."""
        return self.config.num_foregrounds + 1

    @property
    def has_composite_head(self) -> bool:
        """Whether the auxiliary head predicts the composite (False: "no-sup")."""
        return self.auxiliary_head is not None

    def stack_inputs(self, images: Tensor, masks: Tensor) -> Tensor:
        """Stack a layered batch into the encoder input X = (F_1..F_K, B, m_1..m_K).

        Args:
            images: ``(B, L, 3, H, W)`` in [-1, 1], layer 0 the background, ``L <= K + 1``.
            masks: ``(B, L, 1, H, W)`` in [0, 1] (index 0, the background's, is not used).

        Returns:
            ``(B, 3(K + 1) + K, H, W)``; missing foregrounds are zero layers.
        """
        images, masks = self.check_layers(images, masks)
        k = self.config.num_foregrounds
        num_layers = images.shape[1]
        if num_layers > k + 1:
            raise LayeredImageError(
                f"images: {num_layers} layers but this autoencoder encodes at most "
                f"num_foregrounds + 1 = {k + 1}"
            )
        pad = k + 1 - num_layers
        foregrounds, fg_masks = images[:, 1:], masks[:, 1:]
        if pad:
            foregrounds = torch.cat(
                [foregrounds, foregrounds.new_zeros(len(images), pad, 3, *images.shape[-2:])], 1
            )
            fg_masks = torch.cat(
                [fg_masks, fg_masks.new_zeros(len(images), pad, 1, *images.shape[-2:])], 1
            )
        # (B, K, 3, H, W), (B, 3, H, W), (B, K, 1, H, W) -> (B, 3K + 3 + K, H, W)
        return torch.cat([foregrounds.flatten(1, 2), images[:, 0], fg_masks.flatten(1, 2)], dim=1)

    def encode(
        self, images: Tensor, masks: Tensor, layer_valid: Tensor | None = None
    ) -> LayeredEncoderOutput:
        """Encode a layered batch (Text2Layer IV-B).

        Args:
            images: ``(B, L, 3, H, W)`` in [-1, 1], ``L <= K + 1``.
            masks: ``(B, L, 1, H, W)`` in [0, 1].
            layer_valid: optional ``(B, L)`` bool; padded layers (False) enter the encoder
                as zero layers, like the missing foregrounds.

        Returns:
            ``LayeredEncoderOutput`` whose posterior is over ``(B, 1, C, h, w)``.
        """
        images, masks = self.check_layers(images, masks, layer_valid)
        moments = self.body.encode_moments(self.stack_inputs(images, masks))
        return LayeredEncoderOutput(latent_dist=LayeredDiagonalGaussian(moments[:, None]))

    def decode(self, latents: Tensor, num_layers: int | None = None) -> LayeredDecoderOutput:
        """Decode latents into a layered batch with one head per component.

        Args:
            latents: ``(B, 1, C, h, w)``.
            num_layers: L to return (default and maximum K + 1); extra foregrounds are dropped.

        Returns:
            ``LayeredDecoderOutput``: images ``(B, L, 3, H, W)``, masks ``(B, L, 1, H, W)``
            (index 0 = ``1 - sum_i m_i``, foreground masks normalised), and the auxiliary
            composite ``(B, 3, H, W)`` or None without the composite head.
        """
        num_layers = self.check_latents(latents, num_layers)
        features = self.body.decode_features(latents[:, 0])  # (B, width, H, W)
        foregrounds = torch.stack([head(features) for head in self.foreground_heads], 1)
        background = self.background_head(features)[:, None]  # (B, 1, 3, H, W)
        fg_masks = normalize_masks(torch.stack([head(features) for head in self.mask_heads], 1))
        images = torch.cat([background, foregrounds], 1)[:, :num_layers]
        fg_masks = fg_masks[:, : num_layers - 1]
        masks = torch.cat([background_mask(fg_masks)[:, None], fg_masks], 1)
        composite = self.auxiliary_head(features) if self.auxiliary_head is not None else None
        return LayeredDecoderOutput(images=images, masks=masks, composite=composite)


LayeredAutoencoder = JointAutoencoder  # the old name (see the module docstring)
