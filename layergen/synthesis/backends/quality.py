"""Quality scores for synthesised samples (Text2Layer sec. III-D).

A scorer maps a batch ``(image I (B, 3, H, W), mask m (B, 1, H, W), background B
(B, 3, H, W))`` to scores ``(B,)`` in [0, 1] (higher is better) and carries the threshold
below which a sample is dropped.

* :class:`ClassifierScorer`: a trained :class:`~layergen.models.QualityClassifier` loaded
  by path (its saved threshold, unless overridden).
* :class:`MaskAreaScorer`: no weights; 1 when the mask covers between ``min_area`` and
  ``max_area`` of the image, else 0 (catches the "selection too small" condition and
  empty or all-covering masks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor


class QualityScorer(ABC):
    """Scores samples; ``threshold`` is the lowest score kept."""

    version: str = "1"
    threshold: float = 0.5

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings recorded in provenance."""
        return {"threshold": self.threshold}

    def to(self, device: torch.device | str) -> QualityScorer:
        """Move models to ``device`` (no-op without models)."""
        return self

    @abstractmethod
    def __call__(self, images: Tensor, masks: Tensor, backgrounds: Tensor | None) -> Tensor:
        """Scores ``(B,)`` in [0, 1]."""


class ClassifierScorer(QualityScorer):
    """``p(good)`` of a trained quality classifier.

    The mask kind scores the image ``I`` with its salient mask ``m`` (the classifier's
    4-channel input ``[I, m]``), the inpaint kind the inpainted background ``B`` alone.

    Args:
        model_name_or_path: directory written by ``QualityClassifier.save_pretrained``.
        threshold: overrides the threshold saved with the classifier.
        batch_size: images per forward pass.
    """

    def __init__(
        self, model_name_or_path: str, threshold: float | None = None, batch_size: int = 64
    ) -> None:
        from layergen.models.quality_classifier import QualityClassifier

        self.model = QualityClassifier.from_pretrained(model_name_or_path, use_safetensors=True).eval()
        self.model_name_or_path = model_name_or_path
        self.kind = self.model.config.kind
        self.threshold = float(self.model.config.threshold if threshold is None else threshold)
        self.batch_size = batch_size

    def settings(self) -> dict[str, Any]:
        return {
            "model": str(self.model_name_or_path),
            "kind": self.kind,
            "threshold": self.threshold,
        }

    def to(self, device: torch.device | str) -> ClassifierScorer:
        self.model.to(device)
        return self

    def __call__(self, images: Tensor, masks: Tensor, backgrounds: Tensor | None) -> Tensor:
        device = next(self.model.parameters()).device
        if self.kind == "inpaint":
            if backgrounds is None:
                raise ValueError("backgrounds: required by the inpainting-quality classifier")
            inputs, extra = backgrounds, None
        else:
            inputs, extra = images, masks
        scores = []
        for start in range(0, inputs.shape[0], self.batch_size):
            chunk = inputs[start : start + self.batch_size].to(device)
            chunk_masks = (
                None if extra is None else extra[start : start + self.batch_size].to(device)
            )
            scores.append(self.model.predict_proba(chunk, chunk_masks))
        return torch.cat(scores).to(inputs.device)


class MaskAreaScorer(QualityScorer):
    """1 if ``min_area <= mean(m) <= max_area`` else 0 (threshold 0.5).

    Args:
        min_area: smallest mask area, as a fraction of the image.
        max_area: largest mask area, as a fraction of the image.
    """

    def __init__(self, min_area: float = 0.02, max_area: float = 0.95) -> None:
        self.min_area = min_area
        self.max_area = max_area
        self.threshold = 0.5

    def settings(self) -> dict[str, Any]:
        return {"min_area": self.min_area, "max_area": self.max_area, "threshold": self.threshold}

    def __call__(self, images: Tensor, masks: Tensor, backgrounds: Tensor | None) -> Tensor:
        area = masks.float().mean(dim=(1, 2, 3))
        return ((area >= self.min_area) & (area <= self.max_area)).float()
