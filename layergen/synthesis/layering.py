"""From object masks to layers (LayerDiff sec. 3.3 and appendix A.2).

1. Keep an object mask only if it overlaps the salient mask by more than 10 %
   (``overlap = sum(m * s) / sum(m)``, the share of the object that is salient), which
   removes floor / wall / sky masks that slipped through the background-word filter.
2. Depth order: each layer's depth is the mean depth inside its mask; layers are stacked
   from deeper to shallower. **Depth convention: larger = farther** (the depth backends
   flip MiDaS' inverse depth), so the layer with the larger depth value goes behind.
3. Visible masks: a nearer layer occludes the ones behind it,
   ``m_i = a_i * prod_{j > i} (1 - a_j)`` (:func:`layergen.layers.visible_masks`), so
   binary masks become disjoint; the background's mask is the complement ``1 - sum_i m_i``.
4. Foreground images ``F_i = I`` inside the 5x5-dilated visible mask, 0 elsewhere (sec.
   4.1); the dilated union of the masks is the region the background is inpainted in.
5. The background is inpainted with an empty prompt and the foreground phrases as the
   negative prompt (``B = I`` outside the foreground masks); a saliency check of the
   inpainted region rejects backgrounds in which the inpainting model painted an object
   back.

The functions work on one image; the stages at the end of the module apply them to
records (:class:`~layergen.synthesis.base.SynthesisRecord`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from layergen.layers import BACKGROUND_PROMPT, visible_masks
from layergen.synthesis.backends.inpainting import InpaintingBackend
from layergen.synthesis.backends.saliency import SaliencyBackend
from layergen.synthesis.base import BackendStage, SynthesisRecord, SynthesisStage, grouped
from layergen.synthesis.text2layer import dilate_mask, extract_foreground

OVERLAP_THRESHOLD = 0.1
FOREGROUND_DILATION = 5


def saliency_overlap(masks: Tensor, saliency: Tensor) -> Tensor:
    """Share of each object mask that is salient, ``sum(m * s) / sum(m)`` (appendix A.2).

    Args:
        masks: ``(N, 1, H, W)`` object masks in [0, 1].
        saliency: ``(1, H, W)`` salient mask in [0, 1].

    Returns:
        ``(N,)`` in [0, 1]; 0 for empty masks.
    """
    area = masks.flatten(1).sum(dim=1)
    shared = (masks * saliency[None]).flatten(1).sum(dim=1)
    return torch.where(area > 0, shared / area.clamp_min(1e-8), torch.zeros_like(area))


def mask_depths(masks: Tensor, depth: Tensor) -> Tensor:
    """Mean depth inside each mask (appendix A.2), larger = farther.

    Args:
        masks: ``(N, 1, H, W)`` in [0, 1].
        depth: ``(1, H, W)`` depth map.

    Returns:
        ``(N,)``; the mean depth of the whole image for empty masks.
    """
    area = masks.flatten(1).sum(dim=1)
    total = (masks * depth[None]).flatten(1).sum(dim=1)
    return torch.where(area > 0, total / area.clamp_min(1e-8), depth.mean().expand_as(area))


def depth_order(depths: Tensor) -> Tensor:
    """Indices that stack layers from deeper to shallower: ``(N,)`` depths -> ``(N,)`` long.

    With larger = farther the largest depth comes first (index 0 is the back-most
    foreground, drawn right above the background); ties keep their input order.
    """
    return torch.sort(depths, descending=True, stable=True).indices


def occlude(masks: Tensor) -> Tensor:
    """Visible masks of object masks stacked back to front (LayerDiff eq. 1 inputs).

    ``m_i = a_i * prod_{j > i} (1 - a_j)``: binary masks become disjoint (the nearer object
    keeps the shared pixels) and soft masks sum to at most 1.

    Args:
        masks: ``(K, 1, H, W)`` in [0, 1], back to front.

    Returns:
        ``(K, 1, H, W)`` in [0, 1].
    """
    return visible_masks(masks)


def extract_layers(image: Tensor, masks: Tensor, kernel_size: int = FOREGROUND_DILATION) -> Tensor:
    """Foreground images through the dilated visible masks (LayerDiff sec. 4.1).

    ``F_i = I`` where ``dilate(m_i) > 0`` and 0 elsewhere; only ``m_i`` (undilated) enters
    the composite, so the dilation guards the edges against too tight masks.

    Args:
        image: ``(3, H, W)`` in [-1, 1].
        masks: ``(K, 1, H, W)`` visible masks in [0, 1].
        kernel_size: side of the square dilation kernel (paper: 5).

    Returns:
        ``(K, 3, H, W)`` in [-1, 1].
    """
    dilated = dilate_mask(masks, kernel_size, threshold=0.0)
    return extract_foreground(image.expand(len(masks), -1, -1, -1), dilated, threshold=0.5)


def inpaint_region(masks: Tensor, kernel_size: int) -> Tensor:
    """The region to inpaint: the union of the masks, dilated. ``(K, 1, H, W)`` -> ``(1, H, W)`` in {0, 1}."""
    union = masks.amax(dim=0, keepdim=True)
    return dilate_mask(union, kernel_size, threshold=0.0)[0]


def negative_prompt(phrases: Sequence[str]) -> str:
    """The inpainting negative prompt: the foreground phrases joined (appendix A.2)."""
    return ", ".join(phrase for phrase in phrases if phrase)


def region_saliency(saliency: Tensor, regions: Tensor) -> Tensor:
    """Mean saliency inside each region: ``(B, 1, H, W)`` x ``(B, 1, H, W)`` -> ``(B,)`` (0 if empty)."""
    area = regions.flatten(1).sum(dim=1)
    total = (saliency * regions).flatten(1).sum(dim=1)
    return torch.where(area > 0, total / area.clamp_min(1e-8), torch.zeros_like(area))


class LayerSelectionStage(SynthesisStage):
    """Keeps the object masks that overlap the salient mask by more than ``threshold``.

    Reads ``extras["object_masks"]`` ``(N, 1, H, W)``, ``extras["phrases_detected"]``,
    ``extras["object_scores"]`` and ``extras["saliency"]``; keeps at most
    ``max_foregrounds`` masks (the most salient) and rejects records left with none.

    Args:
        threshold: minimum overlap, exclusive (paper: 10 %).
        max_foregrounds: K at most.
    """

    name = "layer_selection"

    def __init__(self, threshold: float = OVERLAP_THRESHOLD, max_foregrounds: int = 4) -> None:
        if max_foregrounds < 1:
            raise ValueError(f"max_foregrounds: expected >= 1, got {max_foregrounds}")
        self.threshold = threshold
        self.max_foregrounds = max_foregrounds

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "max_foregrounds": self.max_foregrounds}

    def process(self, records: list[SynthesisRecord]) -> None:
        for record in records:
            masks = record.extras["object_masks"]
            overlap = saliency_overlap(masks, record.extras["saliency"])
            keep = [
                i
                for i in torch.argsort(overlap, descending=True, stable=True).tolist()
                if overlap[i] > self.threshold
            ]
            keep = sorted(keep[: self.max_foregrounds])
            record.extras["object_masks"] = masks[keep]
            record.extras["saliency_overlap"] = overlap[keep]
            record.extras["phrases_detected"] = [record.extras["phrases_detected"][i] for i in keep]
            record.extras["object_scores"] = {
                name: values[keep] for name, values in record.extras["object_scores"].items()
            }
            if not keep:
                record.reject(
                    f"no_salient_object: no mask overlaps the salient mask by more than {self.threshold}"
                )


class LayeringStage(SynthesisStage):
    """Depth order, visible masks, foreground images and the inpainting region.

    Reads the selected ``extras["object_masks"]`` and ``extras["depth"]`` ``(1, H, W)``;
    fills ``masks``, ``foregrounds``, ``inpaint_mask`` and ``layer_prompts`` (background
    first, then the detected phrases back to front) and, per layer ``i = 1..K``, the scores
    ``layer{i}/depth``, ``layer{i}/saliency_overlap`` and the detector / segmenter scores.
    Layers whose visible area falls under ``min_layer_area`` (fully occluded duplicates) are
    dropped.

    Args:
        foreground_dilation: dilation kernel of the foreground images (paper: 5).
        inpaint_dilation: dilation kernel of the inpainted region.
        min_layer_area: smallest visible area kept, as a fraction of the image.
    """

    name = "layering"

    def __init__(
        self,
        foreground_dilation: int = FOREGROUND_DILATION,
        inpaint_dilation: int = 15,
        min_layer_area: float = 0.001,
    ) -> None:
        self.foreground_dilation = foreground_dilation
        self.inpaint_dilation = inpaint_dilation
        self.min_layer_area = min_layer_area

    def settings(self) -> dict[str, Any]:
        return {
            "foreground_dilation": self.foreground_dilation,
            "inpaint_dilation": self.inpaint_dilation,
            "min_layer_area": self.min_layer_area,
            "depth_convention": "larger=farther; layers stacked deeper to shallower",
        }

    def process(self, records: list[SynthesisRecord]) -> None:
        for record in records:
            masks = record.extras["object_masks"]
            depths = mask_depths(masks, record.extras["depth"])
            order = depth_order(depths)
            visible = occlude(masks[order])
            area = visible.flatten(1).mean(dim=1)
            keep = order[area >= self.min_layer_area].tolist()
            if not keep:
                record.reject("no_visible_layer: every layer is smaller than min_layer_area")
                continue
            visible = occlude(masks[keep])
            phrases = [record.extras["phrases_detected"][i] for i in keep]
            record.masks = visible
            record.foregrounds = extract_layers(record.image, visible, self.foreground_dilation)
            record.inpaint_mask = inpaint_region(visible, self.inpaint_dilation)
            record.layer_prompts = [BACKGROUND_PROMPT, *phrases]
            values = {"depth": depths, "saliency_overlap": record.extras["saliency_overlap"]}
            values.update(record.extras["object_scores"])
            for position, index in enumerate(keep, start=1):
                for name, value in values.items():
                    record.scores[f"layer{position}/{name}"] = float(value[index])


class BackgroundInpaintingStage(BackendStage):
    """``B``: the image inpainted under ``inpaint_mask`` (appendix A.2).

    The prompt is empty and the negative prompt is the foreground layer prompts joined
    with ", " (stored as ``extras["negative_prompt"]``); backends without text
    conditioning (the classical ones) ignore both. The model
    fills the dilated region (no object edge left as context), but only the pixels under
    the foreground masks are kept: elsewhere the background is visible in the composite,
    so ``B = I`` there and the composite reproduces the photograph.

    Args:
        backend: the inpainting backend.
        prompt: the inpainting prompt (paper: empty).
    """

    name = "inpainting"

    def __init__(self, backend: InpaintingBackend, prompt: str = "") -> None:
        super().__init__(backend)
        self.prompt = prompt

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "prompt": self.prompt,
            "negative_prompt": "foreground layer prompts",
        }

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            images = torch.stack([record.image for record in group])
            holes = torch.stack([record.inpaint_mask for record in group])
            negatives = [negative_prompt(record.layer_prompts[1:]) for record in group]
            for record, negative in zip(group, negatives):
                record.extras["negative_prompt"] = negative
            backgrounds = self.backend(
                images, holes, [self.prompt] * len(group), negative_prompts=negatives
            )
            for record, background in zip(group, backgrounds):
                covered = record.masks.sum(dim=0) > 0  # (1, H, W)
                record.background = torch.where(
                    covered, background.to(record.image.dtype), record.image
                )


class InpaintSaliencyCheckStage(BackendStage):
    """Rejects backgrounds in which an object was painted back (appendix A.2).

    The saliency backend runs on ``B``; the mean saliency inside the inpainted region is
    stored as ``scores["inpaint_saliency"]`` and the record is rejected above ``max_saliency``.

    Args:
        backend: the salient-object detector (paper: ICON).
        max_saliency: largest mean saliency of the inpainted region accepted.
    """

    name = "inpaint_check"

    def __init__(self, backend: SaliencyBackend, max_saliency: float = 0.5) -> None:
        super().__init__(backend)
        self.max_saliency = max_saliency

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "max_saliency": self.max_saliency}

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            backgrounds = torch.stack([record.background for record in group])
            regions = torch.stack([record.inpaint_mask for record in group])
            scores = region_saliency(self.backend(backgrounds), regions)
            for record, score in zip(group, scores.tolist()):
                record.scores["inpaint_saliency"] = score
                if score > self.max_saliency:
                    record.reject(f"inpaint_salient: {score:.4f} > {self.max_saliency:.4f}")
