"""Outputs shared by the layered autoencoders: a layered Gaussian posterior and two dataclasses.

Latents of every layered autoencoder are shaped ``(B, L', C, h, w)`` (DESIGN section 1):
``L' = 1`` for the joint CaT²I-AE (Text2Layer IV-B), ``L' = L`` for the per-layer autoencoder
(LayerDiff's layout) and ``L' = 2L - 1`` for the stacked SD-AE baseline (Text2Layer eq. 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


def latent_layer_index(num_layers: int, latent_layers: int) -> Tensor:
    """The layer each latent layer belongs to, ``(L',)`` long.

    ``L' = L`` (per-layer autoencoder), ``1`` (joint: one latent, reported as layer 0) or
    ``2L - 1`` (stacked SD-AE: L layer images, then the masks of layers 1..L-1).

    Raises:
        ValueError: for any other ``L'``.
    """
    if latent_layers == num_layers:
        return torch.arange(num_layers)
    if latent_layers == 1:
        return torch.zeros(1, dtype=torch.long)
    if latent_layers == 2 * num_layers - 1:
        return torch.cat([torch.arange(num_layers), torch.arange(1, num_layers)])
    raise ValueError(f"cannot map {latent_layers} latent layers onto {num_layers} layers")


class LayeredDiagonalGaussian:
    """Diagonal Gaussian posterior ``q(z | x)`` over layered latents (SD's KL-regularised latent).

    Args:
        parameters: ``(B, L', 2C, h, w)``: the mean then the log-variance on the channel axis.
        deterministic: if True the variance is zero (``sample`` returns the mean, ``kl`` is 0).
    """

    def __init__(self, parameters: Tensor, deterministic: bool = False) -> None:
        if parameters.ndim != 5 or parameters.shape[2] % 2:
            raise ValueError(
                f"parameters: expected (B, L', 2C, h, w) with an even channel count, "
                f"got {tuple(parameters.shape)}"
            )
        self.parameters = parameters
        self.mean, logvar = parameters.chunk(2, dim=2)
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.deterministic = deterministic
        if deterministic:
            self.logvar = torch.full_like(self.mean, LOGVAR_MIN)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``z = mean + std * eps``; ``(B, L', C, h, w)``."""
        if self.deterministic:
            return self.mean
        noise = randn_tensor(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        """The posterior mean; ``(B, L', C, h, w)``."""
        return self.mean

    def kl(self, layer_valid: Tensor | None = None) -> Tensor:
        """``KL(q(z | x) || N(0, I))`` summed over latent elements; ``(B,)``.

        Args:
            layer_valid: optional ``(B, L')`` bool; latent layers marked False are left out
                (padded layers of the per-layer autoencoder).
        """
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        kl = 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)  # (B, L', C, h, w)
        kl = kl.flatten(2).sum(dim=2)  # (B, L')
        if layer_valid is not None:
            kl = kl * layer_valid.to(kl.dtype)
        return kl.sum(dim=1)


@dataclass
class LayeredEncoderOutput(BaseOutput):
    """Output of ``encode``.

    Attributes:
        latent_dist: posterior over latents ``(B, L', C, h, w)``.
    """

    latent_dist: LayeredDiagonalGaussian


@dataclass
class LayeredDecoderOutput(BaseOutput):
    """Output of ``decode``: a batch of layered images.

    Attributes:
        images: ``(B, L, 3, H, W)`` layer RGB in about [-1, 1]; layer 0 is the background.
        masks: ``(B, L, 1, H, W)`` in [0, 1]; index 0 is the background's visible mask
            ``1 - sum_i m_i``; foreground masks normalised so that ``sum_i m_i <= 1``.
        composite: ``(B, 3, H, W)`` composite predicted by an auxiliary head (joint
            autoencoder), the composite of the decoded layers (per-layer and SD-AE
            variants), or None (joint autoencoder without the composite head).
    """

    images: Tensor
    masks: Tensor
    composite: Tensor | None = None
