"""Salient-object masks ``m`` (Text2Layer sec. III-C, "Estimation of F and m").

The paper uses the ICON salient-object detector. Two implementations share one call
signature ``backend(images (B, 3, H, W) in [-1, 1]) -> masks (B, 1, H, W) in [0, 1]``:

* :class:`ContrastSaliency` needs no weights and runs on any CPU: a colour-contrast
  saliency map (frequency-tuned contrast plus contrast to the border colours, with a
  centre prior; opencv-python-headless has no ``cv2.saliency``, which lives in contrib)
  refined with GrabCut, then feathered to a soft mask.
* :class:`TransformersSaliency` runs a segmentation / background-removal model loaded by
  hub id or local path with transformers' auto classes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from layergen.synthesis.backends._image import stack_masks, to_uint8_hwc

logger = logging.getLogger(__name__)


class SaliencyBackend(ABC):
    """Predicts a soft salient-object mask for each image."""

    version: str = "1"

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings recorded in provenance."""
        return {}

    def to(self, device: torch.device | str) -> SaliencyBackend:
        """Move models to ``device`` (no-op without models)."""
        return self

    @abstractmethod
    def __call__(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, 1, H, W)`` in [0, 1]."""


def contrast_saliency(image: np.ndarray, center_sigma: float = 0.35) -> np.ndarray:
    """Colour-contrast saliency of an ``(H, W, 3)`` uint8 RGB image -> ``(H, W)`` in [0, 1].

    The mean of two CIELAB distances — of each (blurred) pixel to the image mean
    (frequency-tuned saliency) and to the median border colour — weighted by a Gaussian
    centre prior of relative width ``center_sigma``.
    """
    height, width = image.shape[:2]
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    blurred = cv2.GaussianBlur(lab, (5, 5), 0)
    mean_contrast = np.linalg.norm(blurred - lab.reshape(-1, 3).mean(0), axis=-1)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    border_contrast = np.linalg.norm(blurred - np.median(border, axis=0), axis=-1)
    saliency = _normalise(mean_contrast) + _normalise(border_contrast)
    ys = (np.arange(height, dtype=np.float32) / max(height - 1, 1) - 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) / max(width - 1, 1) - 0.5)[None, :]
    prior = np.exp(-(ys**2 + xs**2) / (2.0 * center_sigma**2))
    return _normalise(saliency * prior)


def grabcut_refine(image: np.ndarray, saliency: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Refine a saliency map into a binary ``(H, W)`` float mask with GrabCut.

    Pixels above Otsu's threshold start as probable foreground, the top 5% as sure
    foreground, a one-pixel border as sure background, the rest as probable background. A
    map without any saliency (a flat image) gives an empty mask.
    """
    if float(saliency.max()) <= 0.0:  # a flat image: nothing is salient
        return np.zeros_like(saliency, dtype=np.float32)
    saliency_u8 = np.rint(saliency * 255).astype(np.uint8)
    otsu, _ = cv2.threshold(saliency_u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    trimap = np.full(saliency.shape, cv2.GC_PR_BGD, np.uint8)
    trimap[saliency_u8 > otsu] = cv2.GC_PR_FGD
    trimap[(saliency >= np.quantile(saliency, 0.95)) & (saliency_u8 > otsu)] = cv2.GC_FGD
    trimap[[0, -1], :] = cv2.GC_BGD
    trimap[:, [0, -1]] = cv2.GC_BGD
    binary = (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)
    if iterations > 0 and binary.any() and not binary.all():
        background_model = np.zeros((1, 65), np.float64)
        foreground_model = np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(
                np.ascontiguousarray(image[..., ::-1]),
                trimap,
                None,
                background_model,
                foreground_model,
                iterations,
                cv2.GC_INIT_WITH_MASK,
            )
        except cv2.error as error:
            logger.warning("GrabCut failed (%s); keeping the thresholded saliency map", error)
        else:
            binary = (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)
    return binary.astype(np.float32)


def clean_mask(binary: np.ndarray, min_component: float = 0.01) -> np.ndarray:
    """Drop foreground specks smaller than ``min_component`` of the image area and fill the
    holes (background regions not touching the border) of the same size."""
    area = min_component * binary.size
    cleaned = binary.astype(np.uint8)
    for value in (1, 0):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            (cleaned == value).astype(np.uint8), connectivity=8
        )
        for label in range(1, count):
            x, y, w, h, size = stats[label]
            touches_border = (
                x == 0 or y == 0 or x + w == binary.shape[1] or y + h == binary.shape[0]
            )
            if size < area and (value == 1 or not touches_border):
                cleaned[labels == label] = 1 - value
    return cleaned.astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


class ContrastSaliency(SaliencyBackend):
    """Colour-contrast saliency refined with GrabCut; no weights, CPU only.

    Args:
        work_size: longest side the image is resized to before the analysis.
        grabcut_iterations: GrabCut iterations (0 keeps Otsu-thresholded saliency).
        feather: Gaussian sigma in work-size pixels that softens the mask edge.
        center_sigma: relative width of the centre prior.
        min_component: specks and holes smaller than this share of the image are removed.
    """

    version = "2"

    def __init__(
        self,
        work_size: int = 256,
        grabcut_iterations: int = 3,
        feather: float = 1.0,
        center_sigma: float = 0.35,
        min_component: float = 0.01,
    ) -> None:
        self.work_size = work_size
        self.grabcut_iterations = grabcut_iterations
        self.feather = feather
        self.center_sigma = center_sigma
        self.min_component = min_component

    def settings(self) -> dict[str, Any]:
        return {
            "work_size": self.work_size,
            "grabcut_iterations": self.grabcut_iterations,
            "feather": self.feather,
            "center_sigma": self.center_sigma,
            "min_component": self.min_component,
        }

    def __call__(self, images: Tensor) -> Tensor:
        return stack_masks([self._mask(to_uint8_hwc(image)) for image in images], like=images)

    def _mask(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        small = cv2.resize(
            image,
            (max(1, round(width * scale)), max(1, round(height * scale))),
            interpolation=cv2.INTER_AREA,
        )
        binary = grabcut_refine(
            small, contrast_saliency(small, self.center_sigma), self.grabcut_iterations
        )
        if self.min_component > 0:
            binary = clean_mask(binary, self.min_component)
        if self.feather > 0:
            binary = cv2.GaussianBlur(binary, (0, 0), self.feather)
        mask = cv2.resize(binary, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(mask, 0.0, 1.0)


class TransformersSaliency(SaliencyBackend):
    """A transformers segmentation / background-removal model as the salient-object detector.

    Loaded by hub id or local path: ``AutoModelForSemanticSegmentation`` by default, or
    ``AutoModelForImageSegmentation`` with ``trust_remote_code=True`` for background-removal
    models that ship their own code (e.g. RMBG, BiRefNet; enable only for code you trust).
    Logits with one channel are read through a sigmoid; with several channels the mask is
    ``1 - softmax[background_index]``.

    Args:
        model_name_or_path: hub id or local directory.
        image_size: square input size of the model.
        mean, std: input normalisation of ``[0, 1]`` pixels.
        background_index: class index of "background" for multi-class models.
        trust_remote_code: allow the model's own code (off by default).
        torch_dtype: e.g. ``"float16"``; ``None`` keeps the checkpoint's dtype.
        use_safetensors: load only ``safetensors`` weights; ``False`` also accepts pickled
            ``.bin`` weights (only for a model you trust).
    """

    def __init__(
        self,
        model_name_or_path: str,
        image_size: int = 1024,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        background_index: int = 0,
        trust_remote_code: bool = False,
        torch_dtype: str | None = None,
        use_safetensors: bool = True,
    ) -> None:
        from transformers import AutoModelForImageSegmentation, AutoModelForSemanticSegmentation

        auto = (
            AutoModelForImageSegmentation if trust_remote_code else AutoModelForSemanticSegmentation
        )
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if torch_dtype is not None:
            kwargs["dtype"] = getattr(torch, torch_dtype)
        self.model = auto.from_pretrained(
            model_name_or_path, use_safetensors=use_safetensors, **kwargs
        ).eval()
        self.model_name_or_path = model_name_or_path
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.background_index = background_index

    def settings(self) -> dict[str, Any]:
        return {"model": str(self.model_name_or_path), "image_size": self.image_size}

    def to(self, device: torch.device | str) -> TransformersSaliency:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        parameter = next(self.model.parameters())
        height, width = images.shape[-2:]
        pixels = F.interpolate(
            (images.float() + 1) / 2, size=(self.image_size, self.image_size), mode="bilinear"
        )
        pixels = (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)
        output = self.model(pixel_values=pixels.to(device=parameter.device, dtype=parameter.dtype))
        logits = output.logits if hasattr(output, "logits") else output[0]
        if isinstance(logits, (list, tuple)):
            logits = logits[-1]
        logits = logits.float()
        if logits.shape[1] == 1:
            masks = logits.sigmoid()
        else:
            masks = (
                1.0 - logits.softmax(dim=1)[:, self.background_index : self.background_index + 1]
            )
        masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        return masks.clamp(0.0, 1.0).to(device=images.device, dtype=images.dtype)


def build_tiny_saliency(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random SegFormer (2 classes, widths (8, 16)) for tests; returns ``out_dir``.

    Built after ``torch.manual_seed(seed)`` and saved with ``save_pretrained``; load it by
    path with :class:`TransformersSaliency`.
    """
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=2,
        id2label={0: "background", 1: "salient"},
        label2id={"background": 0, "salient": 1},
    )
    model = SegformerForSemanticSegmentation(config)
    model.save_pretrained(out_dir)
    return Path(out_dir)
