"""LPIPS perceptual distance (Zhang et al. 2018) loaded without any download at run time.

The ``lpips`` package ships its linear-layer weights but takes the ImageNet backbone (VGG16 or
AlexNet) from torchvision, which normally downloads it. Here the backbone comes from a local
file or from torch hub's cache; if neither holds it, ``load_lpips`` fails with a message saying
what to download and where to put it. ``backbone="random"`` builds a randomly initialised
backbone — only for tests and the CPU demo, where it is a cheap stand-in, not a perceptual
metric.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lpips as lpips_package
import torch
import torchvision
from torch import nn

logger = logging.getLogger(__name__)

BACKBONE_WEIGHTS = {
    "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
}
BACKBONE_CHOICES = ("pretrained", "random")


def backbone_cache_path(net: str) -> Path:
    """Where torchvision would cache the ImageNet weights of ``net`` (torch hub's directory)."""
    url = BACKBONE_WEIGHTS[net].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_backbone(model: lpips_package.LPIPS, net: str, path: Path) -> None:
    """Copy torchvision ImageNet ``features`` weights into the LPIPS backbone slices."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise ValueError(f"{path}: no 'features.*' weights; expected torchvision's {net} weights")
    for index, module in (
        (name, module)
        for block in model.net.children()
        if isinstance(block, nn.Sequential)
        for name, module in block.named_children()
    ):
        params = {k.split(".", 1)[1]: v for k, v in features.items() if k.split(".")[0] == index}
        if params:
            module.load_state_dict(params)


class FrozenLPIPS(nn.Module):
    """An LPIPS module that stays frozen and in eval mode (``train()`` does not reach it).

    Args:
        model: the ``lpips.LPIPS`` network.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenLPIPS:
        """Keep eval mode (LPIPS has dropout in its linear layers)."""
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` pairs in [-1, 1] -> ``(N,)`` perceptual distances (float32).

        Under bf16 autocast the backbone runs in bf16; the distances come back as float32 so
        that the loss sums over components and samples in float32.
        """
        return self.model(x, y).flatten().float()


def load_lpips(
    net: str = "vgg", backbone: str = "pretrained", backbone_path: str | None = None
) -> FrozenLPIPS:
    """Build a frozen LPIPS module (``FrozenLPIPS``); inputs are RGB in [-1, 1].

    Args:
        net: ``"vgg"`` (latent diffusion's choice) or ``"alex"``.
        backbone: ``"pretrained"`` (ImageNet weights from ``backbone_path`` or torch hub's cache)
            or ``"random"`` (random backbone: tests and the CPU demo only).
        backbone_path: torchvision weights file of the backbone (e.g. ``vgg16-397923af.pth``).

    Raises:
        FileNotFoundError: ``backbone="pretrained"`` and the weights are in neither place.
        ValueError: unknown ``net`` or ``backbone``.
    """
    if net not in BACKBONE_WEIGHTS:
        raise ValueError(f"net: expected one of {sorted(BACKBONE_WEIGHTS)}, got {net!r}")
    if backbone not in BACKBONE_CHOICES:
        raise ValueError(f"backbone: expected one of {BACKBONE_CHOICES}, got {backbone!r}")
    path = None
    if backbone == "pretrained":
        path = Path(backbone_path) if backbone_path else backbone_cache_path(net)
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS ({net}) needs torchvision's ImageNet weights, not found at {path}. "
                f"Download {BACKBONE_WEIGHTS[net].url} and put it in {backbone_cache_path(net).parent}"
                " (torch hub's cache) or pass its path as lpips_backbone_path; for tests and the "
                "CPU demo only, set lpips_backbone: random, or lpips_weight: 0 to disable LPIPS."
            )
    else:
        logger.warning("LPIPS with a random %s backbone: for tests and the CPU demo only", net)
    model = lpips_package.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        _load_backbone(model, net, path)
    return FrozenLPIPS(model)
