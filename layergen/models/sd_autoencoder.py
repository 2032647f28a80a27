"""SD-AE baseline: a frozen Stable Diffusion VAE applied to each component (Text2Layer eq. 6).

Every layer RGB and every foreground mask (repeated to 3 channels, mapped to [-1, 1]) goes
through the same frozen ``AutoencoderKL``; the latents are stacked on the layer axis in the
order ``(B, F_1..F_K, m_1..m_K)``, so a batch of L layers has ``L' = 2L - 1`` latent layers
(the paper concatenates on channels; stacking on the layer axis keeps DESIGN's ``(B, L', C,
h, w)`` layout). A decoded mask is the mean of its 3 decoded channels.

:class:`FrozenVAEAutoencoder` holds the frozen VAE that this baseline and the composite-only
one (:mod:`layergen.models.composite_autoencoder`) share.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from layergen.latent_layout import COMPONENTS, LatentLayout
from layergen.layers import (
    background_mask,
    composite_layers,
    from_unit,
    normalize_masks,
    to_unit,
)
from layergen.models.autoencoder_interface import LayeredAutoencoderInterface
from layergen.models.autoencoder_outputs import (
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
)


class FrozenVAEAutoencoder(LayeredAutoencoderInterface):
    """A layered autoencoder around one frozen diffusers ``AutoencoderKL`` (``self.vae``).

    Build it from a VAE with ``from_vae`` (hub id or local path); ``save_pretrained`` then
    writes the VAE's configuration and weights into this model's own directory. Subclasses
    differ in what they encode, not in their weights (``load_state_dict`` moves one VAE
    between them).

    Args:
        vae_config: the ``AutoencoderKL`` configuration (``dict(vae.config)``).
        scaling_factor: latent scaling (default: the VAE's).
        latent_channels: C (filled in from the VAE; given only to check it).
    """

    @register_to_config
    def __init__(
        self,
        vae_config: dict[str, Any],
        scaling_factor: float | None = None,
        latent_channels: int | None = None,
    ) -> None:
        super().__init__()
        vae_config = {k: v for k, v in dict(vae_config).items() if not k.startswith("_")}
        self.vae = AutoencoderKL.from_config(vae_config)
        self.vae.requires_grad_(False)
        if scaling_factor is None:
            self.register_to_config(scaling_factor=float(self.vae.config.scaling_factor))
        if latent_channels not in (None, self.vae.config.latent_channels):
            raise ValueError(
                f"latent_channels: {latent_channels} differs from the VAE's "
                f"{self.vae.config.latent_channels}"
            )
        self.register_to_config(latent_channels=int(self.vae.config.latent_channels))

    @classmethod
    def from_vae(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any
    ) -> FrozenVAEAutoencoder:
        """Wrap a pretrained VAE given by hub id or local path (``subfolder="vae"`` for SD)."""
        vae = AutoencoderKL.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, use_safetensors=True
        )
        model = cls(vae_config=dict(vae.config), **kwargs)
        model.vae.load_state_dict(vae.state_dict())
        return model

    @property
    def downsample_factor(self) -> int:
        """Spatial down-sampling factor f."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


class StackedSDAutoencoder(FrozenVAEAutoencoder):
    """A frozen diffusers ``AutoencoderKL`` per component, latents ``(B, 2L - 1, C, h, w)``.

    Configured, built (``from_vae``) and saved as :class:`FrozenVAEAutoencoder`.
    """

    @property
    def latent_layout(self) -> LatentLayout:
        """``L' = 2L - 1``: L layer images and L - 1 foreground masks."""
        return COMPONENTS

    def encode(
        self, images: Tensor, masks: Tensor, layer_valid: Tensor | None = None
    ) -> LayeredEncoderOutput:
        """Encode every component with the frozen VAE.

        Args:
            images: ``(B, L, 3, H, W)`` in [-1, 1].
            masks: ``(B, L, 1, H, W)`` in [0, 1] (index 0, the background's, is not encoded).
            layer_valid: optional ``(B, L)`` bool; padded layers (False) are encoded as
                zero layers.

        Returns:
            ``LayeredEncoderOutput`` over ``(B, 2L - 1, C, h, w)``.
        """
        images, masks = self.check_layers(images, masks, layer_valid)
        batch = images.shape[0]
        mask_rgb = from_unit(masks[:, 1:]).expand(-1, -1, 3, -1, -1)  # (B, K, 3, H, W)
        components = torch.cat([images, mask_rgb], dim=1)  # (B, 2L - 1, 3, H, W)
        dist = self.vae.encode(components.flatten(0, 1)).latent_dist  # over (B*L', C, h, w)
        moments = dist.parameters.unflatten(0, (batch, components.shape[1]))
        return LayeredEncoderOutput(latent_dist=LayeredDiagonalGaussian(moments))

    def decode(self, latents: Tensor, num_layers: int | None = None) -> LayeredDecoderOutput:
        """Decode every component and composite the layers (DESIGN eq. 1).

        Args:
            latents: ``(B, 2L - 1, C, h, w)``.
            num_layers: L (default ``(L' + 1) / 2``).

        Returns:
            ``LayeredDecoderOutput`` with images ``(B, L, 3, H, W)``, masks ``(B, L, 1, H, W)``
            and the composite of the decoded layers.
        """
        layers = self.check_latents(latents, num_layers)
        batch, latent_layers = latents.shape[:2]
        decoded = self.vae.decode(latents.flatten(0, 1)).sample  # (B*L', 3, H, W)
        decoded = decoded.unflatten(0, (batch, latent_layers))
        images = decoded[:, :layers]
        fg_masks = to_unit(decoded[:, layers:].mean(dim=2, keepdim=True)).clamp(0.0, 1.0)
        fg_masks = normalize_masks(fg_masks)
        masks = torch.cat([background_mask(fg_masks)[:, None], fg_masks], 1)
        return LayeredDecoderOutput(
            images=images, masks=masks, composite=composite_layers(images, masks)
        )
