"""Training of the quality classifiers (Text2Layer sec. III-D).

Only the last layer of the EfficientNet-b0 is trained, with a binary cross-entropy loss;
the frozen backbone stays in eval mode (see :class:`~layergen.models.QualityClassifier`).
At the end of each validation epoch the decision threshold is chosen on the validation
labels for ``target_precision`` and stored in the model's config, so that
``export_pretrained`` saves it with the weights.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_precision,
    binary_recall,
)

from layergen.models.quality_classifier import QualityClassifier, select_threshold

logger = logging.getLogger(__name__)


class QualityClassifierModule(pl.LightningModule):
    """Trains the last layer of a :class:`QualityClassifier` from good/bad labels.

    Batches are dicts ``{"images": (B, 3, H, W) [-1, 1], "masks": (B, 1, H, W) [0, 1],
    "labels": (B,) 1 good / 0 bad}`` (:class:`~layergen.data.labels.QualityLabelsDataModule`).
    The mask kind classifies the 4-channel ``[image I, mask m]`` (paper: "the inputs are
    the original images I and their corresponding masks m"), the inpaint kind the
    background ``B`` alone (``"images"``; ``"masks"`` unused).

    Args:
        kind: ``"mask"`` or ``"inpaint"``.
        mask_input: ``"concat"``: the mask is the 4th input channel (mask kind only).
        image_size: classifier input side.
        weights: ImageNet weights of the backbone, a torchvision weights name (from the
            local torch hub cache) or a state-dict path; ``None`` for random (tests). The
            mask kind widens the first convolution to 4 channels (RGB filters kept, the
            mask filter their mean; :func:`~layergen.models.quality_classifier.widen_first_conv`).
        learning_rate: AdamW learning rate of the last layer.
        weight_decay: AdamW weight decay.
        target_precision: precision of the kept ("good") set the threshold is chosen for.
    """

    def __init__(
        self,
        kind: str = "mask",
        mask_input: str = "concat",
        image_size: int = 224,
        weights: str | None = "IMAGENET1K_V1",
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        target_precision: float = 0.9,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = QualityClassifier(kind=kind, mask_input=mask_input, image_size=image_size)
        if weights is not None:
            self.model.load_backbone(weights)
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.trainable_parameters(),
            lr=self.hparams.learning_rate,
            weight_decay=self.hparams.weight_decay,
        )

    def _logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits ``(B,)``: of ``[I, m]`` (mask kind) or of ``B`` (inpaint kind)."""
        masks = batch["masks"] if self.model.config.kind == "mask" else None
        return self.model(batch["images"], masks)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self._logits(batch)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self._logits(batch).float()
        labels = batch["labels"].float()
        self.log(
            "val/loss",
            F.binary_cross_entropy_with_logits(logits, labels),
            batch_size=logits.shape[0],
            sync_dist=True,
        )
        self._val_scores.append(logits.sigmoid().detach())
        self._val_labels.append(labels.detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val_scores:
            return
        scores = self.all_gather(torch.cat(self._val_scores)).reshape(-1)
        labels = self.all_gather(torch.cat(self._val_labels)).reshape(-1).long()
        self._val_scores.clear()
        self._val_labels.clear()
        threshold = select_threshold(scores, labels, self.hparams.target_precision)
        self.model.register_to_config(threshold=threshold)
        metrics = {
            "val/threshold": threshold,
            "val/accuracy": binary_accuracy(scores, labels, threshold=threshold),
            "val/precision": binary_precision(scores, labels, threshold=threshold),
            "val/recall": binary_recall(scores, labels, threshold=threshold),
            "val/auroc": binary_auroc(scores, labels),
        }
        self.log_dict(
            {name: torch.as_tensor(value, dtype=torch.float32) for name, value in metrics.items()}
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["threshold"] = float(self.model.config.threshold)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "threshold" in checkpoint:
            self.model.register_to_config(threshold=checkpoint["threshold"])

    def export_pretrained(self, directory: str | os.PathLike) -> None:
        """Save the classifier (safetensors + config.json with the threshold) to ``directory``."""
        self.model.save_pretrained(directory)
