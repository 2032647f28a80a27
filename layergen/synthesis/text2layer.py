"""Text2Layer-mode dataset construction: one photograph -> a two-layer image (F, B, m).

Text2Layer sec. III-C/D: ``I ~ m F + (1 - m) B`` (eq. 1) with

1. ``m``: a salient-object mask of ``I``;
2. ``F = I`` where ``m > 0.1`` (threshold configurable), 0 elsewhere;
3. mask quality: drop samples whose mask scores below its threshold;
4. ``m~``: the binarised mask dilated, to cover the errors of ``m``;
5. ``B``: ``I`` inpainted under ``m~`` with an empty prompt;
6. inpainting quality: drop samples whose background scores below its threshold.

The mask check runs before inpainting so that the expensive inpainting is spent only on
samples that can still be kept.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from layergen.synthesis.backends.inpainting import InpaintingBackend
from layergen.synthesis.backends.quality import QualityScorer
from layergen.synthesis.backends.saliency import SaliencyBackend
from layergen.synthesis.base import (
    BackendStage,
    SynthesisChain,
    SynthesisRecord,
    SynthesisStage,
    grouped,
)

MASK_THRESHOLD = 0.1


def extract_foreground(images: Tensor, masks: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """``F = I`` where ``m > threshold``, 0 elsewhere (Text2Layer sec. III-C).

    Args:
        images: ``(..., 3, H, W)`` in [-1, 1].
        masks: ``(..., 1, H, W)`` in [0, 1].
    """
    return torch.where(masks > threshold, images, torch.zeros_like(images))


def dilate_mask(masks: Tensor, kernel_size: int, threshold: float = MASK_THRESHOLD) -> Tensor:
    """``m~``: the binarised mask ``m > threshold`` dilated by a square ``kernel_size`` kernel.

    Grey-scale dilation with a flat square structuring element is a max filter, computed
    with ``max_pool2d`` (same result as ``kornia.morphology.dilation``, much faster).

    Args:
        masks: ``(B, 1, H, W)`` in [0, 1].

    Returns:
        ``(B, 1, H, W)`` in {0, 1}.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected a positive odd number, got {kernel_size}")
    binary = (masks > threshold).to(masks.dtype)
    return F.max_pool2d(binary, kernel_size, stride=1, padding=kernel_size // 2)


class SalientMaskStage(BackendStage):
    """Predicts ``m`` with a :class:`SaliencyBackend`; fills ``record.masks`` ``(1, 1, H, W)``."""

    name = "saliency"

    def __init__(self, backend: SaliencyBackend) -> None:
        super().__init__(backend)

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            masks = self.backend(torch.stack([record.image for record in group]))
            for record, mask in zip(group, masks):
                record.masks = mask[None]


class ForegroundStage(SynthesisStage):
    """``F = I`` where ``m > threshold``; drops records whose mask is empty (``empty_mask``)."""

    name = "foreground"

    def __init__(self, threshold: float = MASK_THRESHOLD) -> None:
        self.threshold = threshold

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    def process(self, records: list[SynthesisRecord]) -> None:
        for record in records:
            if not bool((record.masks > self.threshold).any()):
                record.reject(f"empty_mask: no pixel with m > {self.threshold}")
                continue
            record.foregrounds = extract_foreground(
                record.image[None], record.masks, self.threshold
            )


class DilationStage(SynthesisStage):
    """``m~`` = dilated ``m > threshold``; fills ``record.inpaint_mask`` ``(1, H, W)``."""

    name = "dilation"

    def __init__(self, kernel_size: int = 15, threshold: float = MASK_THRESHOLD) -> None:
        self.kernel_size = kernel_size
        self.threshold = threshold

    def settings(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "threshold": self.threshold}

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            dilated = dilate_mask(
                torch.cat([record.masks for record in group]), self.kernel_size, self.threshold
            )
            for record, mask in zip(group, dilated):
                record.inpaint_mask = mask


class InpaintStage(BackendStage):
    """``B``: ``I`` inpainted under ``m~`` with ``prompt`` (empty in the paper)."""

    name = "inpainting"

    def __init__(self, backend: InpaintingBackend, prompt: str = "") -> None:
        super().__init__(backend)
        self.prompt = prompt

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "prompt": self.prompt}

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            images = torch.stack([record.image for record in group])
            holes = torch.stack([record.inpaint_mask for record in group])
            backgrounds = self.backend(images, holes, [self.prompt] * len(group))
            for record, background in zip(group, backgrounds):
                record.background = background


class QualityStage(SynthesisStage):
    """Scores each record with a :class:`QualityScorer` and drops it below the threshold.

    The score is stored as ``record.scores[name]``; the rejection reason reads
    ``"{name}: {score} < {threshold}"``.

    Args:
        name: ``"mask_quality"`` or ``"inpaint_quality"`` (the score's name).
        scorer: the scorer.
    """

    def __init__(self, name: str, scorer: QualityScorer) -> None:
        self.name = name
        self.scorer = scorer

    def settings(self) -> dict[str, Any]:
        return {
            "scorer": type(self.scorer).__name__,
            "scorer_version": self.scorer.version,
            **self.scorer.settings(),
        }

    def to(self, device: torch.device | str) -> QualityStage:
        self.scorer = self.scorer.to(device)
        return self

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            images = torch.stack([record.image for record in group])
            masks = torch.cat([record.masks for record in group])
            backgrounds = None
            if all(record.background is not None for record in group):
                backgrounds = torch.stack([record.background for record in group])
            scores = self.scorer(images, masks, backgrounds)
            for record, score in zip(group, scores.tolist()):
                record.scores[self.name] = score
                if score < self.scorer.threshold:
                    record.reject(f"{self.name}: {score:.4f} < {self.scorer.threshold:.4f}")


class Text2LayerChain(SynthesisChain):
    """The Text2Layer stage chain (module docstring), configured by typed arguments.

    Args:
        saliency: salient-mask backend.
        inpainting: inpainting backend.
        mask_threshold: ``m`` threshold for ``F`` and for the dilated region (paper: 0.1).
        dilation_kernel: side of the square dilation kernel in pixels.
        inpaint_prompt: prompt of the inpainting model (paper: empty).
        mask_quality: scorer of the mask, ``None`` to keep every mask.
        inpaint_quality: scorer of the background, ``None`` to keep every background.
    """

    def __init__(
        self,
        saliency: SaliencyBackend,
        inpainting: InpaintingBackend,
        mask_threshold: float = MASK_THRESHOLD,
        dilation_kernel: int = 15,
        inpaint_prompt: str = "",
        mask_quality: QualityScorer | None = None,
        inpaint_quality: QualityScorer | None = None,
    ) -> None:
        stages: list[SynthesisStage] = [SalientMaskStage(saliency), ForegroundStage(mask_threshold)]
        if mask_quality is not None:
            stages.append(QualityStage("mask_quality", mask_quality))
        stages += [
            DilationStage(dilation_kernel, mask_threshold),
            InpaintStage(inpainting, inpaint_prompt),
        ]
        if inpaint_quality is not None:
            stages.append(QualityStage("inpaint_quality", inpaint_quality))
        super().__init__(stages)
