"""Quality classifiers for synthesised layered images (Text2Layer sec. III-D).

An EfficientNet-b0 whose last layer is replaced by one logit (``p(good)``); every other
layer is frozen, BatchNorm statistics included, and only the last layer is trained with a
binary cross-entropy loss. Two kinds share the code, with the paper's inputs ("For mask
quality classifier, the inputs are the original images I and their corresponding masks m.
The inputs to the inpainting quality classifier are the inpainted images."):

* ``kind="mask"`` judges the salient mask ``m`` of image ``I`` from the 4-channel input
  ``[I, m]`` (``mask_input="concat"``). The backbone's first convolution is widened from 3
  to 4 input channels (:func:`widen_first_conv`): the ImageNet RGB filters are kept and the
  mask channel's filter is the mean of the three RGB filters, so the frozen features see
  the mask as a grey-level image added to the photograph with a third of an RGB channel's
  weight (activations stay in the range the frozen BatchNorm was calibrated for, and the
  score depends on the mask without training the convolution). Classifiers trained with the
  earlier 3-channel cut-out input (``mask_input="cutout"`` / ``"side_by_side"``) are refused
  with a message to retrain.
* ``kind="inpaint"`` judges the inpainted background ``B`` alone (3 channels; objects or
  artifacts in the inpainted region, a region not cohesive with the rest).

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
MASK_INPUTS = ("concat",)
LEGACY_MASK_INPUTS = ("cutout", "side_by_side")  # 3-channel inputs of earlier versions
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the mask channel is normalised like a grey-level channel: the mean ImageNet statistics
MASK_MEAN = sum(IMAGENET_MEAN) / 3
MASK_STD = sum(IMAGENET_STD) / 3
FIRST_CONV = "features.0.0.weight"


def widen_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Widen a first-convolution weight ``(C_out, 3, k, k)`` to ``(C_out, in_channels, k, k)``.

    The RGB filters are kept as they are in channels 0-2; every extra channel gets the mean
    of the three RGB filters (a grey-level filter, a third of an RGB channel's weight).
    """
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3 or in_channels < 3:
        raise ValueError(
            f"first conv: cannot widen {weight.shape[1]} input channels to {in_channels}"
        )
    extra = weight.mean(dim=1, keepdim=True).expand(-1, in_channels - 3, -1, -1)
    return torch.cat([weight, extra], dim=1).contiguous()


class QualityClassifier(ModelMixin, ConfigMixin):
    """EfficientNet-b0 with one trainable output logit: ``p(good | input)``.

    Args:
        kind: ``"mask"`` (input: image ``I`` and mask ``m``, 4 channels) or ``"inpaint"``
            (input: background ``B``, 3 channels).
        mask_input: how the mask enters the backbone, ``"concat"`` (a 4th channel); the
            3-channel ``"cutout"`` / ``"side_by_side"`` of earlier versions raise an error
            for the mask kind (retrain). Ignored by the inpaint kind.
        image_size: square input size of the backbone.
        threshold: decision threshold on ``p(good)``.
        dropout: dropout before the last layer (as in torchvision's EfficientNet-b0).
    """

    @register_to_config
    def __init__(
        self,
        kind: str = "mask",
        mask_input: str = "concat",
        image_size: int = 224,
        threshold: float = 0.5,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        from torchvision.models import efficientnet_b0

        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if kind == "mask" and mask_input in LEGACY_MASK_INPUTS:
            raise ValueError(
                f"mask_input={mask_input!r}: this mask-quality classifier was trained with the "
                "old 3-channel cut-out input; the mask classifier now takes the image and the "
                "mask as 4 channels (Text2Layer sec. III-D). Retrain it with "
                "configs/classifier_mask.yaml"
            )
        if mask_input not in MASK_INPUTS + LEGACY_MASK_INPUTS:
            raise ValueError(f"mask_input: expected one of {MASK_INPUTS}, got {mask_input!r}")
        backbone = efficientnet_b0(weights=None)
        self.features = backbone.features
        if kind == "mask":
            rgb = self.features[0][0]
            conv = nn.Conv2d(
                4,
                rgb.out_channels,
                rgb.kernel_size,
                stride=rgb.stride,
                padding=rgb.padding,
                bias=False,
            )
            conv.weight.data.copy_(widen_first_conv(rgb.weight.data, 4))
            self.features[0][0] = conv
        self.avgpool = backbone.avgpool
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.classifier[1].in_features, 1)
        self.features.requires_grad_(False)
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        if kind == "mask":
            mean, std = mean + [MASK_MEAN], std + [MASK_STD]
        channels = len(mean)
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1), persistent=False)
        self._register_load_state_dict_pre_hook(self._check_first_conv)

    @property
    def in_channels(self) -> int:
        """Input channels of the backbone: 4 (mask kind) or 3 (inpaint kind)."""
        return self.features[0][0].in_channels

    def _check_first_conv(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        weight = state_dict.get(prefix + FIRST_CONV)
        if weight is not None and weight.ndim == 4 and weight.shape[1] != self.in_channels:
            raise RuntimeError(
                f"{prefix + FIRST_CONV}: the checkpoint's backbone takes {weight.shape[1]} input "
                f"channels, this {self.config.kind}-quality classifier {self.in_channels}. "
                + (
                    "It is a 3-channel (cut-out) mask classifier of an earlier version; the mask "
                    "classifier now takes the image and the mask as 4 channels. Retrain it with "
                    "configs/classifier_mask.yaml"
                    if self.config.kind == "mask"
                    else "Load it as the right kind or retrain it"
                )
            )

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
            masks: ``(B, 1, H, W)`` in [0, 1], required by the mask kind (ignored otherwise).

        Returns:
            ``(B, 4, S, S)`` ``[I, m]`` (mask kind) or ``(B, 3, S, S)`` ``B`` (inpaint
            kind), resized to ``S = image_size`` and normalised: RGB with the ImageNet
            statistics, the mask with their channel means (``MASK_MEAN``, ``MASK_STD``).
        """
        pixels = to_unit(images.float())
        if self.config.kind == "mask":
            if masks is None:
                raise ValueError("masks: required by the mask-quality classifier")
            if masks.shape[1] != 1 or masks.shape[-2:] != images.shape[-2:]:
                raise ValueError(
                    f"masks: expected (B, 1, {images.shape[-2]}, {images.shape[-1]}), "
                    f"got {tuple(masks.shape)}"
                )
            pixels = torch.cat([pixels, masks.float().clamp(0.0, 1.0)], dim=1)
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

        The mask kind widens the 3-channel first convolution with :func:`widen_first_conv`
        (RGB filters kept, mask filter = their mean).

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
        first = FIRST_CONV.removeprefix("features.")
        if first in state:
            state[first] = widen_first_conv(state[first], self.in_channels)
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
