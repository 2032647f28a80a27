"""Quality classifiers for synthesised layered images (Text2Layer sec. III-D).

An EfficientNet-b0 whose last layer is replaced by one logit (``p(good)``); every other
layer is frozen, BatchNorm statistics included, and only the last layer is trained with a
binary cross-entropy loss. Two kinds share the code:

* ``kind="mask"`` judges the salient mask ``m`` of image ``I``. The frozen ImageNet
  backbone takes 3 channels, so the mask enters as a *cut-out*: ``m * I + (1 - m) * grey``
  (``mask_input="cutout"``). The cut-out is exactly what the foreground layer ``F`` will
  look like, an image the ImageNet features describe well, and the three bad-mask
  conditions of sec. III-D are visible in it: an incomplete object (missing object parts),
  background regions inside the mask (background texture in the cut-out) and a too small
  selection (mostly grey). ``mask_input="side_by_side"`` instead shows ``[I | cut-out]``
  resized to a square, for labels that need the context of the whole photograph.
* ``kind="inpaint"`` judges the inpainted background ``B`` alone (objects or artifacts in
  the inpainted region, a region not cohesive with the rest).

The decision threshold, chosen on validation labels for a target precision
(:func:`select_threshold`), is stored in the config and saved with the weights.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from layergen.layers import to_unit

logger = logging.getLogger(__name__)

KINDS = ("mask", "inpaint")
MASK_INPUTS = ("cutout", "side_by_side")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY = 0.5


class QualityClassifier(ModelMixin, ConfigMixin):
    """EfficientNet-b0 with one trainable output logit: ``p(good | input)``.

    Args:
        kind: ``"mask"`` (input: image and mask) or ``"inpaint"`` (input: background).
        mask_input: how the mask enters the 3-channel backbone (``"cutout"`` or
            ``"side_by_side"``), see the module docstring.
        image_size: square input size of the backbone.
        threshold: decision threshold on ``p(good)``.
        dropout: dropout before the last layer (as in torchvision's EfficientNet-b0).
    """

    @register_to_config
    def __init__(
        self,
        kind: str = "mask",
        mask_input: str = "cutout",
        image_size: int = 224,
        threshold: float = 0.5,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        from torchvision.models import efficientnet_b0

        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if mask_input not in MASK_INPUTS:
            raise ValueError(f"mask_input: expected one of {MASK_INPUTS}, got {mask_input!r}")
        backbone = efficientnet_b0(weights=None)
        self.features = backbone.features
        self.avgpool = backbone.avgpool
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.classifier[1].in_features, 1)
        self.features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> QualityClassifier:
        """Set training mode; the frozen backbone always stays in eval mode (BatchNorm statistics)."""
        super().train(mode)
        self.features.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters of the last layer, the only ones trained."""
        return list(self.head.parameters())

    def prepare_inputs(self, images: Tensor, masks: Tensor | None = None) -> Tensor:
        """Build the backbone input.

        Args:
            images: ``(B, 3, H, W)`` in [-1, 1]: the image ``I`` (mask kind) or the
                inpainted background ``B`` (inpaint kind).
            masks: ``(B, 1, H, W)`` in [0, 1], required for the mask kind.

        Returns:
            ``(B, 3, S, S)`` ImageNet-normalised, ``S = image_size``.
        """
        pixels = to_unit(images.float())
        if self.config.kind == "mask":
            if masks is None:
                raise ValueError("masks: required by the mask-quality classifier")
            cutout = masks.float() * pixels + (1 - masks.float()) * GREY
            pixels = (
                torch.cat([pixels, cutout], dim=-1)
                if self.config.mask_input == "side_by_side"
                else cutout
            )
        size = (self.config.image_size, self.config.image_size)
        pixels = F.interpolate(
            pixels, size=size, mode="bilinear", align_corners=False, antialias=True
        )
        return (pixels - self.mean) / self.std

    def forward(self, images: Tensor, masks: Tensor | None = None) -> Tensor:
        """Logits of ``p(good)``, shape ``(B,)``; see :meth:`prepare_inputs` for the inputs."""
        features = self.avgpool(self.features(self.prepare_inputs(images, masks))).flatten(1)
        return self.head(self.head_dropout(features)).squeeze(1)

    @torch.no_grad()
    def predict_proba(self, images: Tensor, masks: Tensor | None = None) -> Tensor:
        """``p(good)`` in [0, 1], shape ``(B,)``."""
        return self(images, masks).float().sigmoid()

    def load_backbone(self, weights: str) -> None:
        """Load ImageNet weights into the backbone (the last layer is left as it is).

        Args:
            weights: a torchvision weights name (``"IMAGENET1K_V1"``, read from the
                torch hub cache, ``$TORCH_HOME/hub/checkpoints``) or a path to a
                torchvision EfficientNet-b0 state dict (``.pth`` or ``.safetensors``).

        Raises:
            FileNotFoundError: if the weights are not available locally.
        """
        state = _load_efficientnet_state(weights)
        state = {
            key.removeprefix("features."): value
            for key, value in state.items()
            if key.startswith("features.")
        }
        if not state:
            raise ValueError(
                f"{weights}: no EfficientNet-b0 'features.*' weights in the state dict"
            )
        self.features.load_state_dict(state)


def _load_efficientnet_state(weights: str) -> dict[str, Tensor]:
    if os.path.isfile(weights):
        path = weights
    else:
        from torchvision.models import EfficientNet_B0_Weights

        try:
            entry = EfficientNet_B0_Weights[weights]
        except KeyError:
            raise FileNotFoundError(
                f"weights {weights!r}: not a file and not one of {[w.name for w in EfficientNet_B0_Weights]}"
            ) from None
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(entry.url))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"EfficientNet-b0 {weights} weights not found at {path}: download {entry.url} there "
                "(or set TORCH_HOME), or pass a local state-dict path"
            )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def select_threshold(probabilities: Tensor, labels: Tensor, target_precision: float) -> float:
    """The lowest threshold ``t`` whose kept set ``{p >= t}`` reaches ``target_precision``.

    The lowest such threshold keeps the most good samples (highest recall). If no threshold
    reaches the target, the one with the highest precision is returned (ties: the lowest).

    Args:
        probabilities: ``(N,)`` scores ``p(good)``.
        labels: ``(N,)`` 1 for good, 0 for bad.
        target_precision: in (0, 1].

    Returns:
        The threshold, one of ``probabilities``.
    """
    if probabilities.numel() == 0:
        raise ValueError("select_threshold: no validation samples")
    scores, order = probabilities.detach().float().cpu().sort(descending=True)
    hits = labels.detach().float().cpu()[order].cumsum(0)
    precision = hits / torch.arange(1, scores.numel() + 1)
    # only the last position of each run of equal scores is a reachable cut
    last_of_run = torch.ones_like(scores, dtype=torch.bool)
    last_of_run[:-1] = scores[:-1] != scores[1:]
    valid = last_of_run & (precision >= target_precision)
    if valid.any():
        index = int(valid.nonzero().max())
    else:
        candidates = torch.where(last_of_run, precision, torch.full_like(precision, -1.0))
        best = candidates.max()
        index = int((candidates == best).nonzero().max())
        logger.warning(
            "no threshold reaches precision %.3f; best is %.3f", target_precision, float(best)
        )
    return float(scores[index])


def threshold_report(probabilities: Tensor, labels: Tensor, threshold: float) -> dict[str, Any]:
    """Precision, recall and kept fraction of the kept set ``{p >= threshold}``."""
    kept = probabilities >= threshold
    good = labels.bool()
    true_positives = float((kept & good).sum())
    return {
        "threshold": threshold,
        "precision": true_positives / max(float(kept.sum()), 1.0),
        "recall": true_positives / max(float(good.sum()), 1.0),
        "kept_fraction": float(kept.float().mean()),
    }
