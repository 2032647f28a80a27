"""SD-AE baseline: a frozen Stable Diffusion VAE applied to each component (Text2Layer eq. 6).

Every layer RGB and every foreground mask (repeated to 3 channels, mapped to [-1, 1]) goes
through the same frozen ``AutoencoderKL``; the latents are stacked on the layer axis in the
order ``(B, F_1..F_K, m_1..m_K)``, so a batch of L layers has ``L' = 2L - 1`` latent layers
(the paper concatenates on channels; stacking on the layer axis keeps DESIGN's ``(B, L', C,
h, w)`` layout). A decoded mask is the mean of its 3 decoded channels.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from layergen.layers import (
    LayeredImageError,
    background_mask,
    composite_layers,
    from_unit,
    normalize_masks,
    to_unit,
)
from layergen.models.autoencoder_outputs import (
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
)


class StackedSDAutoencoder(ModelMixin, ConfigMixin):
    """A frozen diffusers ``AutoencoderKL`` per component, latents ``(B, 2L - 1, C, h, w)``.

    Build it from a VAE with ``from_vae`` (hub id or local path); ``save_pretrained`` then
    writes the VAE's configuration and weights into this model's own directory.

    Args:
        vae_config: the ``AutoencoderKL`` configuration (``dict(vae.config)``).
        scaling_factor: latent scaling (default: the VAE's).
        latent_channels: C (filled in from the VAE; given only to check it).
    """

    per_layer = False

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
    ) -> StackedSDAutoencoder:
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

    def latent_num_layers(self, num_layers: int) -> int:
        """``L' = 2L - 1``: L layer images and L - 1 foreground masks."""
        return 2 * num_layers - 1

    def encode(
        self, images: Tensor, masks: Tensor, layer_valid: Tensor | None = None
    ) -> LayeredEncoderOutput:
        """Encode every component with the frozen VAE.

        Args:
            images: ``(B, L, 3, H, W)`` in [-1, 1].
            masks: ``(B, L, 1, H, W)`` in [0, 1] (index 0, the background's, is not encoded).
            layer_valid: ``(B, L)`` bool, accepted for the common interface
                (unused: every component is encoded).

        Returns:
            ``LayeredEncoderOutput`` over ``(B, 2L - 1, C, h, w)``.
        """
        if images.ndim != 5 or images.shape[2] != 3:
            raise LayeredImageError(f"images: expected (B, L, 3, H, W), got {tuple(images.shape)}")
        if masks.shape[:2] != images.shape[:2] or masks.shape[2] != 1:
            raise LayeredImageError(
                f"masks: expected (B, {images.shape[1]}, 1, H, W), got {tuple(masks.shape)}"
            )
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
        if latents.ndim != 5 or latents.shape[1] % 2 == 0:
            raise ValueError(f"latents: expected (B, 2L - 1, C, h, w), got {tuple(latents.shape)}")
        batch, latent_layers = latents.shape[:2]
        layers = (latent_layers + 1) // 2
        if num_layers is not None and num_layers != layers:
            raise ValueError(
                f"num_layers: {latent_layers} latent layers hold {layers} layers, "
                f"got num_layers={num_layers}"
            )
        decoded = self.vae.decode(latents.flatten(0, 1)).sample  # (B*L', 3, H, W)
        decoded = decoded.unflatten(0, (batch, latent_layers))
        images = decoded[:, :layers]
        fg_masks = to_unit(decoded[:, layers:].mean(dim=2, keepdim=True)).clamp(0.0, 1.0)
        fg_masks = normalize_masks(fg_masks)
        masks = torch.cat([background_mask(fg_masks)[:, None], fg_masks], 1)
        return LayeredDecoderOutput(
            images=images, masks=masks, composite=composite_layers(images, masks)
        )
