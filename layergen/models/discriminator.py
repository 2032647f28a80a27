"""PatchGAN discriminator (pix2pix, Isola et al. 2017), as used by latent diffusion's autoencoder.

Text2Layer appendix III keeps latent diffusion's loss for every image component (F, B, I),
adversarial term included; the discriminator judges ``70 x 70`` patches of RGB components.
"""

from __future__ import annotations

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """``n_layers`` strided conv-bn-leaky-relu blocks ending in one logit per patch.

    Args:
        in_channels: 3 (RGB components).
        base_channels: width of the first layer (64 in pix2pix).
        num_layers: strided blocks (3 in pix2pix / latent diffusion).
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for n in range(1, num_layers + 1):
            out = base_channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` in [-1, 1] -> patch logits ``(N, 1, H', W')``."""
        return self.main(images)


def _init_weights(module: nn.Module) -> None:
    """pix2pix initialisation: N(0, 0.02) convs, N(1, 0.02) norm scales."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
