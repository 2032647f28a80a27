"""CLIP score of composites vs prompts and of each layer vs its layer prompt.

Text2Layer V-B: the cosine similarity of CLIP image and text embeddings (ViT-L/14);
LayerDiff 4.2 reports the same score (RN50). We follow torchmetrics' ``CLIPScore``
definition, ``100 * max(cos(E_I, E_T), 0)``, and its preprocessing (uint8 images through
the model's processor), per sample, so that scores can be broken down by layer count
(torchmetrics averages over a batch; tested to agree with it per pair). The model loads
with transformers' ``from_pretrained`` by hub id or local path; offline, a missing model
gives one :class:`MissingWeightsError`.

Per-layer scores (LayerDiff's layer prompts): the background layer is scored as it is;
a foreground layer ``i`` is shown as a viewer would see it alone, ``m_i F_i + (1 - m_i) g``
on a neutral grey ``g``.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from layergen.layers import LayeredImage, to_unit
from layergen.metrics.fid import MissingWeightsError

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
LAYER_BACKDROP = 0.0  # neutral grey in [-1, 1]


def layer_views(image: LayeredImage, backdrop: float = LAYER_BACKDROP) -> Tensor:
    """Each layer as seen alone: ``(L, 3, H, W)`` in [-1, 1].

    Index 0 is the background ``B``; index ``i >= 1`` is ``m_i F_i + (1 - m_i) * backdrop``.
    """
    masks = image.masks
    foregrounds = masks * image.foregrounds + (1.0 - masks) * backdrop
    return torch.cat([image.background[None], foregrounds])


class CLIPScorer:
    """Per-sample CLIP score with a transformers ``CLIPModel``.

    Args:
        model_name_or_path: hub id or local directory holding a ``CLIPModel`` and its
            processor (``save_pretrained`` layout).
        device: where to run the model.
        local_files_only: never reach the network (``HF_HUB_OFFLINE=1`` does the same).
        use_safetensors: load only ``safetensors`` weights; ``False`` also accepts pickled
            ``.bin`` weights (only for a model you trust).
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = DEFAULT_CLIP_MODEL,
        device: torch.device | str = "cpu",
        local_files_only: bool = False,
        use_safetensors: bool = True,
    ) -> None:
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(
                model_name_or_path, local_files_only=local_files_only,
                use_safetensors=use_safetensors).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(
                model_name_or_path, local_files_only=local_files_only)
        except (OSError, ValueError) as error:  # not found / offline / invalid id
            raise MissingWeightsError(
                f"CLIP score needs the CLIP model '{model_name_or_path}' and it is not "
                f"available locally ({error.__class__.__name__}). On a machine with internet "
                f"access run `huggingface-cli download {DEFAULT_CLIP_MODEL} --local-dir "
                f"clip-vit-large-patch14`, copy the folder here and pass it with --clip-model."
            ) from error
        self.device = torch.device(device)
        self.max_length = self.model.config.text_config.max_position_embeddings

    @staticmethod
    def _pooled(output: Tensor | object) -> Tensor:
        # transformers >= 5 returns a model output holding the projected embeddings.
        return output if isinstance(output, Tensor) else output.pooler_output

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` in [-1, 1] -> L2-normalised ``(N, D)``.

        The images reach the processor as uint8, as in torchmetrics' ``CLIPScore`` (its
        resize of uint8 and of float images differs by up to ~0.01).
        """
        levels = torch.round(to_unit(images.float()).clamp(0, 1) * 255.0).to(torch.uint8)
        pixels = self.processor(images=list(levels.cpu()), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device)
        embeddings = self._pooled(self.model.get_image_features(pixel_values=pixels))
        return torch.nn.functional.normalize(embeddings.float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> Tensor:
        """``N`` strings -> L2-normalised ``(N, D)``."""
        tokens = self.processor(
            text=list(texts), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        embeddings = self._pooled(self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        ))
        return torch.nn.functional.normalize(embeddings.float(), dim=-1).cpu()

    def score(self, images: Tensor, texts: list[str]) -> Tensor:
        """CLIP score ``100 * max(cos, 0)`` of each image with its text.

        Args:
            images: ``(N, 3, H, W)`` in [-1, 1].
            texts: ``N`` strings.

        Returns:
            ``(N,)`` scores in [0, 100].
        """
        if len(texts) != images.shape[0]:
            raise ValueError(f"texts: expected {images.shape[0]} strings, got {len(texts)}")
        cosine = (self.image_embeddings(images) * self.text_embeddings(texts)).sum(-1)
        return 100.0 * cosine.clamp(min=0.0)

    def layer_scores(self, images: list[LayeredImage]) -> list[Tensor]:
        """Per-layer CLIP score of every layer vs its layer prompt: one ``(L_n,)`` per image."""
        views = [layer_views(image) for image in images]
        prompts = [p for image in images for p in image.layer_prompts]
        flat = self.score(torch.cat(views), prompts)
        return list(flat.split([len(v) for v in views]))
