"""Object masks from boxes (LayerDiff sec. 3.3: the detector's boxes prompt SAM).

Every backend is called as ``backend(images (B, 3, H, W) in [-1, 1], boxes)`` with B
tensors of boxes ``(N_b, 4)`` ``(x0, y0, x1, y1)`` in pixels, and returns B pairs
``(masks (N_b, 1, H, W) in {0, 1}, scores (N_b,))``:

* :class:`SamSegmentation`: transformers' ``SamModel`` loaded by hub id or local path; of
  SAM's three candidate masks per box the one with the highest predicted IoU is kept, and
  that IoU is the score.
* :class:`GrabCutSegmentation`: no weights; OpenCV GrabCut initialised with the box.

:func:`build_tiny_sam` writes a tiny random SAM for tests.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from layergen.synthesis.backends._image import to_uint8_hwc

logger = logging.getLogger(__name__)

DEFAULT_SAM_MODEL = "facebook/sam-vit-base"


class SegmentationBackend(ABC):
    """Segments the object inside each box."""

    version: str = "1"

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings recorded in provenance."""
        return {}

    def to(self, device: torch.device | str) -> SegmentationBackend:
        """Move models to ``device`` (no-op without models)."""
        return self

    @abstractmethod
    def __call__(self, images: Tensor, boxes: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """B images and box tensors ``(N_b, 4)`` -> B ``(masks (N_b, 1, H, W), scores (N_b,))``."""


def _empty(image: Tensor) -> tuple[Tensor, Tensor]:
    height, width = image.shape[-2:]
    return image.new_zeros(0, 1, height, width), image.new_zeros(0)


class SamSegmentation(SegmentationBackend):
    """Segment Anything with box prompts (``SamModel`` + ``SamProcessor``).

    Args:
        model_name_or_path: hub id or local directory.
        mask_threshold: logit threshold of the binary mask.
        torch_dtype: e.g. ``"float16"``; ``None`` keeps the checkpoint's dtype.
        use_safetensors: load only ``safetensors`` weights; ``False`` also accepts pickled
            ``.bin`` weights (only for a model you trust).
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_SAM_MODEL,
        mask_threshold: float = 0.0,
        torch_dtype: str | None = None,
        use_safetensors: bool = True,
    ) -> None:
        from transformers import SamModel, SamProcessor

        kwargs: dict[str, Any] = {}
        if torch_dtype is not None:
            kwargs["dtype"] = getattr(torch, torch_dtype)
        self.processor = SamProcessor.from_pretrained(model_name_or_path)
        self.model = SamModel.from_pretrained(
            model_name_or_path, use_safetensors=use_safetensors, **kwargs
        ).eval()
        self.model_name_or_path = model_name_or_path
        self.mask_threshold = mask_threshold

    def settings(self) -> dict[str, Any]:
        return {"model": str(self.model_name_or_path), "mask_threshold": self.mask_threshold}

    def to(self, device: torch.device | str) -> SamSegmentation:
        self.model.to(device)
        return self

    def __call__(self, images: Tensor, boxes: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        return [self._segment(image, box) if len(box) else _empty(image) for image, box in zip(images, boxes)]

    @torch.no_grad()
    def _segment(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        parameter = next(self.model.parameters())
        pil = Image.fromarray(to_uint8_hwc(image))
        inputs = self.processor(images=pil, input_boxes=[boxes.float().cpu().tolist()], return_tensors="pt")
        sizes = {name: inputs.pop(name) for name in ("original_sizes", "reshaped_input_sizes")}
        inputs = {
            name: value.to(parameter.device, parameter.dtype if value.is_floating_point() else value.dtype)
            for name, value in inputs.items()
        }
        outputs = self.model(**inputs, multimask_output=True)
        # pred_masks: (1, N, 3, h, w) low-resolution logits; iou_scores: (1, N, 3)
        logits = self.processor.post_process_masks(
            outputs.pred_masks.float().cpu(), sizes["original_sizes"], sizes["reshaped_input_sizes"], binarize=False
        )[0]  # (N, 3, H, W)
        iou = outputs.iou_scores[0].float().cpu()  # (N, 3)
        best = iou.argmax(dim=-1)
        chosen = logits[torch.arange(len(best)), best]  # (N, H, W)
        masks = (chosen > self.mask_threshold).to(image.dtype)[:, None]
        return masks.to(image.device), iou.max(dim=-1).values.clamp(0.0, 1.0).to(image.device)


class GrabCutSegmentation(SegmentationBackend):
    """OpenCV GrabCut initialised with each box (pixels outside it are background).

    A box that covers the whole image leaves GrabCut no background sample, and a
    degenerate result (empty mask) falls back to the box itself; both are logged. The score
    is the fraction of the box the mask fills.

    Args:
        iterations: GrabCut iterations.
        work_size: longest side the image is processed at.
    """

    def __init__(self, iterations: int = 3, work_size: int = 256) -> None:
        self.iterations = iterations
        self.work_size = work_size

    def settings(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "work_size": self.work_size}

    def __call__(self, images: Tensor, boxes: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        out = []
        for image, box in zip(images, boxes):
            if not len(box):
                out.append(_empty(image))
                continue
            rgb = to_uint8_hwc(image)
            pairs = [self._segment(rgb, b) for b in box.float().cpu().tolist()]
            masks = torch.from_numpy(np.stack([m for m, _ in pairs]))[:, None].to(image.device, image.dtype)
            out.append((masks, torch.tensor([s for _, s in pairs], dtype=image.dtype, device=image.device)))
        return out

    def _segment(self, rgb: np.ndarray, box: Sequence[float]) -> tuple[np.ndarray, float]:
        height, width = rgb.shape[:2]
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = max(int(np.ceil(box[2])), x0 + 1), max(int(np.ceil(box[3])), y0 + 1)
        box_mask = np.zeros((height, width), np.float32)
        box_mask[y0:y1, x0:x1] = 1.0
        scale = min(1.0, self.work_size / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        init = np.full(small.shape[:2], cv2.GC_BGD, np.uint8)
        init[cv2.resize(box_mask, size, interpolation=cv2.INTER_NEAREST) > 0] = cv2.GC_PR_FGD
        if (init == cv2.GC_BGD).sum() == 0 or (init == cv2.GC_PR_FGD).sum() < 2:
            logger.debug("GrabCut: box %s leaves no background or foreground sample; using the box", box)
            return box_mask, 1.0
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(small, init, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        small_mask = np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        mask = (cv2.resize(small_mask, (width, height), interpolation=cv2.INTER_NEAREST) > 0.5).astype(np.float32)
        mask *= box_mask
        if not mask.any():
            logger.debug("GrabCut: empty mask in box %s; using the box", box)
            return box_mask, 1.0
        return mask, float(mask.sum() / box_mask.sum())


def build_tiny_sam(out_dir: str | Path, image_size: int = 32) -> Path:
    """Write a tiny random SAM (model + processor) for tests; returns its directory.

    Built after ``torch.manual_seed(0)`` from configs (ViT hidden size 16, one layer,
    8-pixel patches, mask decoder width 8); runs offline in milliseconds.
    """
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    out_dir = Path(out_dir)
    torch.manual_seed(0)
    grid = image_size // 8
    config = SamConfig(
        vision_config={
            "hidden_size": 16,
            "output_channels": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
            "mlp_dim": 32,
            "global_attn_indexes": [0],
            "window_size": 2,
            "num_pos_feats": 4,
        },
        prompt_encoder_config={"hidden_size": 8, "image_size": image_size, "patch_size": 8, "mask_input_channels": 4},
        mask_decoder_config={
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "mlp_dim": 16,
            "iou_head_hidden_dim": 8,
            "iou_head_depth": 1,
        },
    )
    processor = SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
            mask_size={"longest_edge": grid * 4},
            mask_pad_size={"height": grid * 4, "width": grid * 4},
        )
    )
    SamModel(config).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
