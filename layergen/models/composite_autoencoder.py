"""Composite-only autoencoder: the latent of the text-to-image baseline (Text2Layer V-A,
SD-LAION-L²I: Stable Diffusion trained on the composites of LAION-L²I).

A text-to-image model sees the composite ``I = (1 - sum_i m_i) B + sum_i m_i F_i`` (DESIGN
eq. 1) and nothing else. ``CompositeAutoencoder`` puts a frozen diffusers ``AutoencoderKL``
behind the layered autoencoder interface so that the same UNet, training module, pipeline
and benchmark serve it: ``encode`` composites the layered batch and encodes ``I`` alone
(``L' = 1``); ``decode`` returns ``I`` as a layered image that is all background (every
layer's RGB is ``I``, every foreground mask is zero), so the composite of the decoded layers
is ``I``. Its layers carry no information: ``composite_only`` tells the benchmark to score
the composite only.
"""

from __future__ import annotations

from torch import Tensor

from layergen.layers import LayeredImageError, composite_layers
from layergen.models.autoencoder_outputs import (
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
)
from layergen.models.sd_autoencoder import StackedSDAutoencoder


class CompositeAutoencoder(StackedSDAutoencoder):
    """A frozen diffusers ``AutoencoderKL`` on the composite only, latents ``(B, 1, C, h, w)``.

    Configured, built (``from_vae``: hub id or local path, ``subfolder="vae"`` for SD) and
    saved like :class:`~layergen.models.StackedSDAutoencoder`, whose VAE weights it can load
    unchanged (``load_state_dict``): the two baselines share one single-image autoencoder.

    Args:
        vae_config: the ``AutoencoderKL`` configuration (``dict(vae.config)``).
        scaling_factor: latent scaling (default: the VAE's).
        latent_channels: C (filled in from the VAE; given only to check it).
    """

    per_layer = False
    composite_only = True

    def latent_num_layers(self, num_layers: int) -> int:
        """``L' = 1`` whatever L: one latent of the composite."""
        return 1

    def encode(
        self, images: Tensor, masks: Tensor, layer_valid: Tensor | None = None
    ) -> LayeredEncoderOutput:
        """Encode the composite of a layered batch.

        Args:
            images: ``(B, L, 3, H, W)`` in [-1, 1].
            masks: ``(B, L, 1, H, W)`` in [0, 1] (padded layers have zero masks).
            layer_valid: ``(B, L)`` bool, accepted for the common interface
                (unused: only the composite is encoded).

        Returns:
            ``LayeredEncoderOutput`` over ``(B, 1, C, h, w)``.
        """
        if images.ndim != 5 or images.shape[2] != 3:
            raise LayeredImageError(f"images: expected (B, L, 3, H, W), got {tuple(images.shape)}")
        if masks.shape[:2] != images.shape[:2] or masks.shape[2] != 1:
            raise LayeredImageError(
                f"masks: expected (B, {images.shape[1]}, 1, H, W), got {tuple(masks.shape)}"
            )
        composite = composite_layers(images, masks)  # (B, 3, H, W)
        moments = self.vae.encode(composite).latent_dist.parameters  # (B, 2C, h, w)
        return LayeredEncoderOutput(latent_dist=LayeredDiagonalGaussian(moments[:, None]))

    def decode(self, latents: Tensor, num_layers: int | None = None) -> LayeredDecoderOutput:
        """Decode the composite and return it as a layered batch that is all background.

        Args:
            latents: ``(B, 1, C, h, w)``.
            num_layers: L to return (default 2: the composite and one empty foreground).

        Returns:
            ``LayeredDecoderOutput`` with images ``(B, L, 3, H, W)`` (each layer is the
            composite), masks ``(B, L, 1, H, W)`` (ones for the background, zeros for the
            foregrounds) and the decoded composite ``(B, 3, H, W)``.
        """
        if latents.ndim != 5 or latents.shape[1] != 1:
            raise ValueError(f"latents: expected (B, 1, C, h, w), got {tuple(latents.shape)}")
        num_layers = 2 if num_layers is None else num_layers
        if num_layers < 2:
            raise ValueError(
                f"num_layers: expected >= 2 (a background and foregrounds), got {num_layers}"
            )
        composite = self.vae.decode(latents[:, 0]).sample  # (B, 3, H, W)
        batch, _, height, width = composite.shape
        # (B, 3, H, W) -> (B, L, 3, H, W)
        images = composite[:, None].repeat(1, num_layers, 1, 1, 1)
        masks = composite.new_zeros(batch, num_layers, 1, height, width)
        masks[:, 0] = 1.0
        return LayeredDecoderOutput(images=images, masks=masks, composite=composite)
