"""Relative depth maps for ordering the layers (LayerDiff appendix A.2: MiDaS).

**Convention: every backend returns depth normalised per image to [0, 1] with larger =
farther** (0 the nearest pixel, 1 the farthest). MiDaS, DPT and Depth Anything predict
relative *inverse* depth (disparity, larger = nearer); :class:`TransformersDepth` flips it
(``inverse_depth=True``). Models that predict metric depth (ZoeDepth, ...) take
``inverse_depth=False``.

Every backend is called as ``backend(images (B, 3, H, W) in [-1, 1]) -> (B, 1, H, W)``:

* :class:`TransformersDepth`: ``AutoModelForDepthEstimation`` by hub id or local path.
* :class:`VerticalDepth`: no weights; lower in the picture = nearer (a ground-plane prior:
  ``depth = 1 - y / (H - 1)``).

:func:`build_tiny_depth` writes a tiny random DPT for tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from layergen.synthesis.backends._image import to_uint8_hwc

DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"


class DepthBackend(ABC):
    """Predicts a relative depth map, larger = farther, in [0, 1]."""

    version: str = "1"

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings recorded in provenance."""
        return {}

    def to(self, device: torch.device | str) -> DepthBackend:
        """Move models to ``device`` (no-op without models)."""
        return self

    @abstractmethod
    def __call__(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, 1, H, W)`` depth in [0, 1], larger = farther."""


def normalize_depth(depth: Tensor) -> Tensor:
    """Min-max normalise each map of ``(B, 1, H, W)`` to [0, 1] (constant maps -> 0)."""
    flat = depth.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    scale = (high - low).clamp_min(1e-8)
    return ((depth - low.view(-1, 1, 1, 1)) / scale.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


class TransformersDepth(DepthBackend):
    """A monocular depth model from transformers (MiDaS / DPT by default).

    Args:
        model_name_or_path: hub id or local directory.
        inverse_depth: the model predicts inverse depth (MiDaS, DPT, Depth Anything); the
            output is flipped so that larger = farther.
        torch_dtype: e.g. ``"float16"``; ``None`` keeps the checkpoint's dtype.
        use_safetensors: load only ``safetensors`` weights; ``False`` also accepts pickled
            ``.bin`` weights (only for a model you trust).
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_DEPTH_MODEL,
        inverse_depth: bool = True,
        torch_dtype: str | None = None,
        use_safetensors: bool = True,
    ) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        kwargs: dict[str, Any] = {}
        if torch_dtype is not None:
            kwargs["dtype"] = getattr(torch, torch_dtype)
        self.processor = AutoImageProcessor.from_pretrained(model_name_or_path)
        self.model = AutoModelForDepthEstimation.from_pretrained(
            model_name_or_path, use_safetensors=use_safetensors, **kwargs
        ).eval()
        self.model_name_or_path = model_name_or_path
        self.inverse_depth = inverse_depth

    def settings(self) -> dict[str, Any]:
        return {"model": str(self.model_name_or_path), "inverse_depth": self.inverse_depth,
                "convention": "larger=farther"}

    def to(self, device: torch.device | str) -> TransformersDepth:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        parameter = next(self.model.parameters())
        pil = [Image.fromarray(to_uint8_hwc(image)) for image in images]
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
        outputs = self.model(pixel_values=pixels.to(parameter.device, parameter.dtype))
        results = self.processor.post_process_depth_estimation(outputs, target_sizes=[(height, width)] * len(pil))
        predicted = torch.stack([r["predicted_depth"].float() for r in results])[:, None]  # (B, 1, H, W)
        depth = normalize_depth(predicted)
        if self.inverse_depth:
            depth = 1.0 - depth
        return depth.to(device=images.device, dtype=images.dtype)


class VerticalDepth(DepthBackend):
    """Ground-plane prior without weights: ``depth(y) = 1 - y / (H - 1)`` (bottom row nearest)."""

    def settings(self) -> dict[str, Any]:
        return {"convention": "larger=farther"}

    def __call__(self, images: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        rows = torch.linspace(1.0, 0.0, height, device=images.device, dtype=images.dtype)
        return rows.view(1, 1, height, 1).expand(batch, 1, height, width).clone()


def build_tiny_depth(out_dir: str | Path, image_size: int = 32) -> Path:
    """Write a tiny random DPT depth model (model + image processor) for tests.

    Built after ``torch.manual_seed(0)`` from configs (ViT hidden size 16, two layers,
    8-pixel patches, fusion width 8); runs offline in milliseconds. Returns its directory.
    """
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    out_dir = Path(out_dir)
    torch.manual_seed(0)
    config = DPTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=image_size,
        patch_size=8,
        backbone_out_indices=[0, 1],
        neck_hidden_sizes=[8, 16],
        reassemble_factors=[2, 1],
        fusion_hidden_size=8,
        head_in_index=-1,
        readout_type="project",
    )
    DPTForDepthEstimation(config).save_pretrained(out_dir)
    processor = DPTImageProcessor(size={"height": image_size, "width": image_size}, keep_aspect_ratio=False)
    processor.save_pretrained(out_dir)
    return out_dir
