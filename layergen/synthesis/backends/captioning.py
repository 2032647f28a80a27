"""Global prompts (captions) for the LayerDiff-mode synthesis (LayerDiff sec. 3.3).

The paper captions every image with InstructBLIP. Every backend is called as
``backend(images (B, 3, H, W) in [-1, 1], captions)`` with the source captions (``""``
when the input has none) and returns B captions:

* :class:`SourceCaption` keeps the source caption (img2dataset alt text, sidecar .txt).
* :class:`TransformersCaptioning` runs an image-to-text model (BLIP, BLIP-2, InstructBLIP,
  ...) loaded by hub id or local path with transformers' auto classes.

:func:`build_tiny_captioner` writes a tiny random BLIP captioner for tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from layergen.synthesis.backends._image import to_uint8_hwc

DEFAULT_CAPTIONING_MODEL = "Salesforce/instructblip-flan-t5-xl"
DEFAULT_CAPTIONING_PROMPT = "Write a short description for the image."


class CaptioningBackend(ABC):
    """Produces the global prompt of each image."""

    version: str = "1"

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings recorded in provenance."""
        return {}

    def to(self, device: torch.device | str) -> CaptioningBackend:
        """Move models to ``device`` (no-op without models)."""
        return self

    @abstractmethod
    def __call__(self, images: Tensor, captions: Sequence[str]) -> list[str]:
        """``(B, 3, H, W)`` in [-1, 1] and B source captions -> B captions."""


class SourceCaption(CaptioningBackend):
    """Keeps the caption that came with the image (whitespace normalised)."""

    def __call__(self, images: Tensor, captions: Sequence[str]) -> list[str]:
        return [" ".join(caption.split()) for caption in captions]


class TransformersCaptioning(CaptioningBackend):
    """An image-to-text model (``AutoModelForImageTextToText`` + ``AutoProcessor``).

    Args:
        model_name_or_path: hub id or local directory (InstructBLIP as in the paper by default).
        prompt: instruction for instruction-following captioners; ``None`` for plain
            captioners such as BLIP.
        max_new_tokens: caption length limit.
        num_beams: beam-search width.
        keep_source: keep a non-empty source caption and caption only images without one.
        torch_dtype: e.g. ``"float16"``; ``None`` keeps the checkpoint's dtype.
        use_safetensors: load only ``safetensors`` weights; ``False`` also accepts pickled
            ``.bin`` weights (only for a model you trust).
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_CAPTIONING_MODEL,
        prompt: str | None = DEFAULT_CAPTIONING_PROMPT,
        max_new_tokens: int = 40,
        num_beams: int = 1,
        keep_source: bool = False,
        torch_dtype: str | None = None,
        use_safetensors: bool = True,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kwargs: dict[str, Any] = {}
        if torch_dtype is not None:
            kwargs["dtype"] = getattr(torch, torch_dtype)
        self.processor = AutoProcessor.from_pretrained(model_name_or_path)
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_name_or_path, use_safetensors=use_safetensors, **kwargs
        ).eval()
        self.model_name_or_path = model_name_or_path
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.keep_source = keep_source

    def settings(self) -> dict[str, Any]:
        return {
            "model": str(self.model_name_or_path),
            "prompt": self.prompt,
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "keep_source": self.keep_source,
        }

    def to(self, device: torch.device | str) -> TransformersCaptioning:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor, captions: Sequence[str]) -> list[str]:
        todo = [i for i, caption in enumerate(captions) if not (self.keep_source and caption.strip())]
        out = [" ".join(caption.split()) for caption in captions]
        if not todo:
            return out
        pil = [Image.fromarray(to_uint8_hwc(images[i])) for i in todo]
        kwargs: dict[str, Any] = {"images": pil, "return_tensors": "pt"}
        if self.prompt is not None:
            kwargs["text"] = [self.prompt] * len(pil)
        inputs = self.processor(**kwargs)
        parameter = next(self.model.parameters())
        inputs = {
            name: value.to(parameter.device, parameter.dtype if value.is_floating_point() else value.dtype)
            for name, value in inputs.items()
        }
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                  do_sample=False)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        for i, text in zip(todo, texts):
            text = text.strip()
            if self.prompt and text.startswith(self.prompt):
                text = text[len(self.prompt) :].strip()
            out[i] = " ".join(text.split())
        return out


def build_tiny_captioner(out_dir: str | Path, image_size: int = 32) -> Path:
    """Write a tiny random BLIP captioner (model + processor) for tests; returns its directory.

    Built after ``torch.manual_seed(0)`` from configs (hidden size 16, one layer) with a
    character-level BERT vocabulary, so it runs offline in milliseconds. Its captions are
    random letters.
    """
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *"abcdefghijklmnopqrstuvwxyz"]
    vocab_file = out_dir / "vocab.txt"
    vocab_file.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]")
    torch.manual_seed(0)
    text = {
        "vocab_size": len(words),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "encoder_hidden_size": 16,
        "max_position_embeddings": 32,
        "bos_token_id": words.index("[DEC]"),
        "pad_token_id": 0,
        "sep_token_id": words.index("[SEP]"),
        "eos_token_id": words.index("[SEP]"),
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": 8,
    }
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tokenizer
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
