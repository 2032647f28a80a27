"""Adversarial part of the autoencoder loss (latent diffusion's ``LPIPSWithDiscriminator``).

Hinge loss for the discriminator, ``-mean(D(x_hat))`` for the generator, an adaptive weight
from the gradient norms of the reconstruction and adversarial losses at the decoder's last
layer, and a start step before which the adversarial term is off.
"""

from __future__ import annotations

import torch
from torch import Tensor

ADAPTIVE_WEIGHT_MAX = 1e4
ADAPTIVE_WEIGHT_EPS = 1e-4


def hinge_discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())


def generator_adversarial_loss(logits_fake: Tensor) -> Tensor:
    """``-mean D(x_hat)``, the generator's hinge-GAN loss."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, adv_loss: Tensor, last_layer: Tensor) -> Tensor:
    """``|grad rec| / (|grad adv| + 1e-4)`` at the last layer, clamped to [0, 1e4], detached.

    Balances the adversarial gradient against the reconstruction gradient (Esser et al. 2021,
    used by latent diffusion). Both losses must still have their graphs.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (adv_grad.norm() + ADAPTIVE_WEIGHT_EPS)
    return weight.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()


def adversarial_factor(global_step: int, start_step: int) -> float:
    """1 once ``global_step >= start_step``, else 0 (the discriminator's delayed start)."""
    return 1.0 if global_step >= start_step else 0.0
