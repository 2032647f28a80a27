"""Open-vocabulary boxes for the layer phrases (LayerDiff sec. 3.3: DetCLIP or another
open-vocabulary detector; the box's phrase becomes the layer prompt).

Every backend is called as ``backend(images (B, 3, H, W) in [-1, 1], phrases, saliency)``
with B lists of phrases and the ``(B, 1, H, W)`` salient masks in [0, 1], and returns B
lists of :class:`Detection` (at most one box per phrase, the best):

* :class:`TransformersDetection`: ``AutoModelForZeroShotObjectDetection`` (OWLv2, OWL-ViT,
  Grounding DINO) loaded by hub id or local path.
* :class:`SaliencyComponentDetection`: no weights; the connected components of the
  thresholded salient mask, largest first, named by the phrases in order and, past the
  last phrase, by their mean colour ("the red object").

:func:`build_tiny_detector` and :func:`build_tiny_grounding_dino` write tiny random OWLv2 and
Grounding DINO detectors for tests.
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from layergen.synthesis.backends._image import to_uint8_hwc

DEFAULT_DETECTION_MODEL = "google/owlv2-base-patch16-ensemble"

# Named colours for the layer prompts of unnamed salient components (RGB).
COLOR_NAMES = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "red": (200, 30, 30),
    "orange": (240, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 200),
    "purple": (130, 50, 160),
    "pink": (240, 130, 180),
    "brown": (120, 75, 40),
}


@dataclass
class Detection:
    """One detected object.

    Attributes:
        phrase: the layer phrase the box belongs to.
        box: ``(x0, y0, x1, y1)`` in pixels of the input image.
        score: detector confidence in [0, 1].
    """

    phrase: str
    box: tuple[float, float, float, float]
    score: float


class DetectionBackend(ABC):
    """Locates the objects named by the layer phrases."""

    version: str = "1"

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings recorded in provenance."""
        return {}

    def to(self, device: torch.device | str) -> DetectionBackend:
        """Move models to ``device`` (no-op without models)."""
        return self

    @abstractmethod
    def __call__(self, images: Tensor, phrases: Sequence[Sequence[str]], saliency: Tensor) -> list[list[Detection]]:
        """B images, phrase lists and ``(B, 1, H, W)`` salient masks -> B detection lists."""


def best_per_phrase(detections: Sequence[Detection]) -> list[Detection]:
    """The highest-scoring detection of each phrase, in order of first appearance of the phrase."""
    best: dict[str, Detection] = {}
    for detection in detections:
        if detection.phrase not in best or detection.score > best[detection.phrase].score:
            best[detection.phrase] = detection
    return list(best.values())


class TransformersDetection(DetectionBackend):
    """An open-vocabulary detector from transformers (OWLv2 by default, or Grounding DINO).

    Args:
        model_name_or_path: hub id or local directory.
        box_threshold: minimum box confidence.
        text_threshold: minimum phrase-token confidence (Grounding DINO only).
        torch_dtype: e.g. ``"float16"``; ``None`` keeps the checkpoint's dtype.
        use_safetensors: load only ``safetensors`` weights; ``False`` also accepts pickled
            ``.bin`` weights (only for a model you trust).
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_DETECTION_MODEL,
        box_threshold: float = 0.2,
        text_threshold: float = 0.25,
        torch_dtype: str | None = None,
        use_safetensors: bool = True,
    ) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        kwargs: dict[str, Any] = {}
        if torch_dtype is not None:
            kwargs["dtype"] = getattr(torch, torch_dtype)
        self.processor = AutoProcessor.from_pretrained(model_name_or_path)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(
            model_name_or_path, use_safetensors=use_safetensors, **kwargs
        ).eval()
        self.grounding = "grounding" in self.model.config.model_type
        self.model_name_or_path = model_name_or_path
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold

    def settings(self) -> dict[str, Any]:
        return {
            "model": str(self.model_name_or_path),
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
        }

    def to(self, device: torch.device | str) -> TransformersDetection:
        self.model.to(device)
        return self

    def __call__(self, images: Tensor, phrases: Sequence[Sequence[str]], saliency: Tensor) -> list[list[Detection]]:
        return [self._detect(image, list(names)) if names else [] for image, names in zip(images, phrases)]

    @torch.no_grad()
    def _detect(self, image: Tensor, phrases: list[str]) -> list[Detection]:
        height, width = image.shape[-2:]
        pil = Image.fromarray(to_uint8_hwc(image))
        parameter = next(self.model.parameters())
        if self.grounding:  # Grounding DINO reads one string, phrases ended by "."
            inputs = self.processor(images=pil, text=" ".join(f"{p}." for p in phrases), return_tensors="pt")
        else:
            inputs = self.processor(images=pil, text=[phrases], return_tensors="pt", padding=True, truncation=True)
        inputs = {
            name: value.to(parameter.device, parameter.dtype if value.is_floating_point() else value.dtype)
            for name, value in inputs.items()
        }
        outputs = self.model(**inputs)
        if self.grounding:
            result = self.processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=self.box_threshold,
                text_threshold=self.text_threshold,
                target_sizes=[(height, width)],
            )[0]
            labels = [_match_phrase(str(label), phrases) for label in result["text_labels"]]
        else:
            result = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.box_threshold, target_sizes=[(height, width)], text_labels=[phrases]
            )[0]
            labels = list(result["text_labels"])
        detections = [
            Detection(phrase=label, box=_clip_box(box.tolist(), height, width), score=float(score))
            for label, box, score in zip(labels, result["boxes"].float().cpu(), result["scores"].float().cpu())
            if label is not None
        ]
        return best_per_phrase(detections)


def _match_phrase(label: str, phrases: Sequence[str]) -> str | None:
    """The phrase a Grounding DINO label (a span of the text) belongs to."""
    label = label.strip().lower()
    for phrase in phrases:
        if label == phrase.lower():
            return phrase
    for phrase in phrases:
        if label and (label in phrase.lower() or phrase.lower() in label):
            return phrase
    return None


def _clip_box(box: Sequence[float], height: int, width: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    return (x0, y0, x1, y1)


def color_name(rgb: Sequence[float]) -> str:
    """The nearest entry of :data:`COLOR_NAMES` to an RGB colour in [0, 255]."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(COLOR_NAMES, key=lambda name: float(np.sum((rgb - np.asarray(COLOR_NAMES[name])) ** 2)))


class SaliencyComponentDetection(DetectionBackend):
    """Boxes of the connected components of the salient mask; no weights, any CPU.

    Components of ``saliency > threshold`` smaller than ``min_area`` (fraction of the image)
    are ignored; the rest, largest first, take the phrases in order; components past the
    last phrase are named by their mean colour ("the red object"). Scores are the mean
    saliency inside each component.

    Args:
        threshold: saliency threshold of the binary mask.
        min_area: smallest component kept, as a fraction of the image area.
        max_objects: most components returned per image.
    """

    def __init__(self, threshold: float = 0.5, min_area: float = 0.01, max_objects: int = 4) -> None:
        self.threshold = threshold
        self.min_area = min_area
        self.max_objects = max_objects

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "min_area": self.min_area, "max_objects": self.max_objects}

    def __call__(self, images: Tensor, phrases: Sequence[Sequence[str]], saliency: Tensor) -> list[list[Detection]]:
        return [self._detect(image, list(names), mask[0]) for image, names, mask in zip(images, phrases, saliency)]

    def _detect(self, image: Tensor, phrases: list[str], saliency: Tensor) -> list[Detection]:
        soft = saliency.detach().float().cpu().numpy()
        binary = (soft > self.threshold).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        min_pixels = self.min_area * binary.size
        components = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_pixels]
        components.sort(key=lambda i: -stats[i, cv2.CC_STAT_AREA])
        rgb = to_uint8_hwc(image)
        detections = []
        for rank, i in enumerate(components[: self.max_objects]):
            x, y, w, h = (int(v) for v in stats[i, :4])
            inside = labels == i
            phrase = phrases[rank] if rank < len(phrases) else f"the {color_name(rgb[inside].mean(0))} object"
            detections.append(Detection(phrase=phrase, box=(x, y, x + w, y + h), score=float(soft[inside].mean())))
        return best_per_phrase(detections)


def build_tiny_detector(out_dir: str | Path, image_size: int = 32) -> Path:
    """Write a tiny random OWLv2 detector (model + processor) for tests; returns its directory.

    Built after ``torch.manual_seed(0)`` from configs (hidden size 16, one layer, 8-pixel
    patches) with a character-level CLIP tokenizer; runs offline in milliseconds.
    """
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    out_dir = Path(out_dir)
    characters = list(string.ascii_lowercase + string.digits + "-'.,")
    vocab = {c: i for i, c in enumerate(characters)}
    vocab.update({f"{c}</w>": len(characters) + i for i, c in enumerate(characters)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": 8,
    }
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16))
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tokenizer
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_grounding_dino(out_dir: str | Path, image_size: int = 32) -> Path:
    """Write a tiny random Grounding DINO (model + processor) for tests; returns its directory.

    Built after ``torch.manual_seed(0)`` from configs: a two-stage Swin backbone of width 8,
    a one-layer BERT of width 32 with a character-level WordPiece vocabulary, ``d_model``
    32 (GroupNorm needs 32 channels), 10 queries, two decoder layers.
    """
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    letters = string.ascii_lowercase + string.digits
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *letters, *(f"##{c}" for c in letters)]
    vocab_file = out_dir / "vocab.txt"
    vocab_file.write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    backbone = SwinConfig(
        image_size=image_size,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=2,
        out_features=["stage1", "stage2"],
    )
    text = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        num_feature_levels=2,
        max_text_len=32,
        encoder_n_points=2,
        decoder_n_points=2,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
    )
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size}),
        tokenizer=BertTokenizer(str(vocab_file)),
    )
    GroundingDinoForObjectDetection(config).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
