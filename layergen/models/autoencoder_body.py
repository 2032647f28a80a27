"""The KL-regularised encoder/decoder body shared by the layered autoencoders.

The body is Stable Diffusion's ``AutoencoderKL`` without its input and output layers:
diffusers' ``Encoder`` and ``Decoder`` blocks, ``quant_conv`` producing the posterior's mean and
log-variance and ``post_quant_conv`` (Text2Layer IV-B keeps the SD-AE "intact" apart from the
stacked input and the per-component heads). The submodule names match ``AutoencoderKL`` so that
the weights of an SD VAE copy over by name (``KLLayeredAutoencoder.from_sd_vae``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import Tensor, nn

from layergen.models.autoencoder_interface import LayeredAutoencoderInterface

logger = logging.getLogger(__name__)


class KLAutoencoderBody(nn.Module):
    """diffusers ``Encoder``/``Decoder`` with SD's quant convs; the decoder stops before conv_out.

    Args:
        in_channels: channels of the stacked input.
        latent_channels: C.
        block_out_channels: widths of the down/up blocks; the down-sampling factor is
            ``2 ** (len(block_out_channels) - 1)``.
        layers_per_block: resnets per block.
        norm_num_groups: GroupNorm groups.
        mid_block_add_attention: keep the self-attention of the mid blocks (SD: True).
        logvar_init: if set, the log-variance half of ``quant_conv`` starts at this constant
            (zero weights, this bias): a low value (e.g. -8) removes the early KL-noise stall of
            small models trained from scratch.
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        norm_num_groups: int,
        mid_block_add_attention: bool = True,
        logvar_init: float | None = None,
    ) -> None:
        super().__init__()
        num_blocks = len(block_out_channels)
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * num_blocks,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            double_z=True,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=3,
            up_block_types=("UpDecoderBlock2D",) * num_blocks,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
        )
        # The SD-AE's last layer is replaced by the per-component heads (Text2Layer IV-B).
        self.decoder.conv_out = nn.Identity()
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        if logvar_init is not None:
            with torch.no_grad():
                self.quant_conv.weight[latent_channels:].zero_()
                self.quant_conv.bias[latent_channels:].fill_(logvar_init)

    @property
    def feature_channels(self) -> int:
        """Channels of the decoder's last feature map (the heads' input)."""
        return int(self.decoder.conv_norm_out.num_channels)

    def encode_moments(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` -> posterior moments ``(N, 2C, h, w)``."""
        return self.quant_conv(self.encoder(x))

    def decode_features(self, z: Tensor) -> Tensor:
        """``(N, C, h, w)`` -> decoder features ``(N, feature_channels, H, W)``."""
        return self.decoder(self.post_quant_conv(z))

    def last_layer_weight(self) -> Tensor:
        """Weight of the decoder body's last convolution, shared by every head.

        Used for the adaptive adversarial weight (gradient-norm ratio, as in latent diffusion).
        """
        return self.decoder.up_blocks[-1].resnets[-1].conv2.weight

    def load_sd_vae(self, vae: AutoencoderKL) -> None:
        """Copy an SD VAE's body weights; the input conv is expanded to the stacked input.

        Every input channel ``c`` takes the VAE's filter of RGB channel ``c mod 3``, scaled by
        ``3 / in_channels`` so that the first activations keep their scale.
        """
        state = {k: v for k, v in vae.state_dict().items() if not k.startswith("decoder.conv_out")}
        conv_in = state.pop("encoder.conv_in.weight")  # (out, 3, k, k)
        in_channels = self.encoder.conv_in.in_channels
        index = torch.arange(in_channels) % conv_in.shape[1]
        state["encoder.conv_in.weight"] = conv_in[:, index] * (conv_in.shape[1] / in_channels)
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or missing:
            raise ValueError(
                "the SD VAE's body does not match this autoencoder's configuration: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]} (check block_out_channels, "
                "layers_per_block, norm_num_groups, latent_channels, mid_block_add_attention)"
            )


class KLLayeredAutoencoder(LayeredAutoencoderInterface):
    """The trainable layered autoencoders (joint and per-layer): a ``KLAutoencoderBody`` and
    heads.

    Subclasses register ``latent_channels``, ``block_out_channels``, ``layers_per_block``,
    ``norm_num_groups``, ``mid_block_add_attention`` and ``scaling_factor`` in their config and
    hold a ``KLAutoencoderBody`` as ``self.body``.
    """

    _supports_gradient_checkpointing = True

    @property
    def downsample_factor(self) -> int:
        """Spatial down-sampling factor f (``H = f * h``)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def last_layer_weight(self) -> Tensor:
        """Weight used for the adaptive adversarial weight (``KLAutoencoderBody``)."""
        return self.body.last_layer_weight()

    @classmethod
    def from_sd_vae(
        cls,
        pretrained_model_name_or_path: str,
        subfolder: str | None = None,
        **config: Any,
    ) -> KLLayeredAutoencoder:
        """Initialise the body from a Stable Diffusion VAE (hub id or local path).

        The body takes the VAE's widths, depth, groups and latent channels; the input conv is
        expanded to the stacked input; the heads are new (Text2Layer IV-B). ``config`` sets the
        remaining arguments (e.g. ``num_foregrounds``); ``scaling_factor`` defaults to the
        VAE's.
        """
        vae = AutoencoderKL.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, use_safetensors=True
        )
        body_config = {
            "latent_channels": vae.config.latent_channels,
            "block_out_channels": tuple(vae.config.block_out_channels),
            "layers_per_block": vae.config.layers_per_block,
            "norm_num_groups": vae.config.norm_num_groups,
            "mid_block_add_attention": vae.config.mid_block_add_attention,
            "scaling_factor": vae.config.scaling_factor,
        }
        body_config.update(config)
        model = cls(**body_config)
        model.body.load_sd_vae(vae)
        logger.info("initialised the %s body from %s", cls.__name__, pretrained_model_name_or_path)
        return model
