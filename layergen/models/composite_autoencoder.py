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

from layergen.latent_layout import JOINT, LatentLayout
from layergen.layers import composite_layers
from layergen.models.autoencoder_outputs import (
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
)
from layergen.models.sd_autoencoder import FrozenVAEAutoencoder


class CompositeAutoencoder(FrozenVAEAutoencoder):
    """A frozen diffusers ``AutoencoderKL`` on the composite only, latents ``(B, 1, C, h, w)``.

    Configured, built (``from_vae``: hub id or local path, ``subfolder="vae"`` for SD) and
    saved as :class:`~layergen.models.sd_autoencoder.FrozenVAEAutoencoder`, like
    :class:`~layergen.models.StackedSDAutoencoder`, whose VAE weights it loads unchanged
    (``load_state_dict``): the two baselines share one single-image autoencoder.
    """

    @property
    def latent_layout(self) -> LatentLayout:
        """``L' = 1`` whatever L: one latent of the composite."""
        return JOINT

    @property
    def composite_only(self) -> bool:
        """Its layers are the composite and empty foregrounds."""
        return True

    def encode(
        self, images: Tensor, masks: Tensor, layer_valid: Tensor | None = None
    ) -> LayeredEncoderOutput:
        """Encode the composite of a layered batch.

        Args:
            images: ``(B, L, 3, H, W)`` in [-1, 1].
            masks: ``(B, L, 1, H, W)`` in [0, 1] (padded layers have zero masks).
            layer_valid: optional ``(B, L)`` bool; padded layers (False) are left out of the
                composite.

        Returns:
            ``LayeredEncoderOutput`` over ``(B, 1, C, h, w)``.
        """
        images, masks = self.check_layers(images, masks, layer_valid)
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
        num_layers = self.check_latents(latents, num_layers)
        composite = self.vae.decode(latents[:, 0]).sample  # (B, 3, H, W)
        batch, _, height, width = composite.shape
        # (B, 3, H, W) -> (B, L, 3, H, W)
        images = composite[:, None].repeat(1, num_layers, 1, 1, 1)
        masks = composite.new_zeros(batch, num_layers, 1, height, width)
        masks[:, 0] = 1.0
        return LayeredDecoderOutput(images=images, masks=masks, composite=composite)
