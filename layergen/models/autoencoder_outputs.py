"""Outputs shared by the layered autoencoders: a layered Gaussian posterior and two dataclasses.

Latents of every layered autoencoder are shaped ``(B, L', C, h, w)`` (DESIGN section 1);
how L layers are packed into ``L'`` latent layers is :class:`layergen.latent_layout.LatentLayout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


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
