"""Background inpainting ``B`` (Text2Layer sec. III-C, "Estimation of B").

The region under the dilated mask ``m~`` is filled; the paper uses Stable Diffusion 2
inpainting with an empty prompt. Every backend is called as
``backend(images (B, 3, H, W) in [-1, 1], masks (B, 1, H, W) in {0, 1}, prompts)`` and
returns ``(B, 3, H, W)`` in [-1, 1] equal to the input outside the mask.

* :class:`OpenCVInpainting`: ``cv2.inpaint`` (Telea or Navier-Stokes); no weights, CPU.
* :class:`DiffusersInpainting`: diffusers ``StableDiffusionInpaintPipeline`` loaded by hub
  id or local path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from layergen.synthesis.backends._image import from_uint8_hwc, mask_to_uint8, to_uint8_hwc

DEFAULT_INPAINTING_MODEL = "stabilityai/stable-diffusion-2-inpainting"


class InpaintingBackend(ABC):
    """Fills the masked region of each image."""

    version: str = "1"

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings recorded in provenance."""
        return {}

    def to(self, device: torch.device | str) -> InpaintingBackend:
        """Move models to ``device`` (no-op without models)."""
        return self

    @abstractmethod
    def __call__(
        self,
        images: Tensor,
        masks: Tensor,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
    ) -> Tensor:
        """Inpaint ``images`` ``(B, 3, H, W)`` where ``masks`` ``(B, 1, H, W)`` is 1.

        ``prompts`` and ``negative_prompts`` (one per image) are ignored by backends
        without text conditioning.
        """


class OpenCVInpainting(InpaintingBackend):
    """``cv2.inpaint`` at up to ``work_size`` pixels (longest side), pasted back at full size.

    Args:
        radius: neighbourhood radius in work-size pixels.
        method: ``"telea"`` or ``"ns"`` (Navier-Stokes).
        work_size: longest side the image is processed at (large holes are slow).
    """

    def __init__(self, radius: int = 5, method: str = "telea", work_size: int = 256) -> None:
        methods = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
        if method not in methods:
            raise ValueError(f"method: expected one of {sorted(methods)}, got {method!r}")
        self.radius = radius
        self.method = method
        self.flag = methods[method]
        self.work_size = work_size

    def settings(self) -> dict[str, Any]:
        return {"radius": self.radius, "method": self.method, "work_size": self.work_size}

    def __call__(
        self,
        images: Tensor,
        masks: Tensor,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
    ) -> Tensor:
        outputs = [
            from_uint8_hwc(self._inpaint(to_uint8_hwc(i), mask_to_uint8(m)), like=i)
            for i, m in zip(images, masks)
        ]
        return paste_unmasked(torch.stack(outputs), images, masks)

    def _inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        height, width = mask.shape
        if not mask.any():
            return image
        scale = min(1.0, self.work_size / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        small_mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        filled = cv2.inpaint(small, small_mask, self.radius, self.flag)
        return cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR)


class DiffusersInpainting(InpaintingBackend):
    """diffusers ``StableDiffusionInpaintPipeline`` (Text2Layer: SD 2 inpainting, empty prompt).

    Args:
        model_name_or_path: hub id or local directory of the pipeline.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance weight.
        resolution: square size the pipeline runs at (a multiple of the VAE's factor).
        torch_dtype: e.g. ``"float16"``; ``None`` keeps float32.
        seed: seed of the per-batch generator (reproducible outputs).
        use_safetensors: load only ``safetensors`` weights; ``False`` also accepts pickled
            ``.bin`` weights (only for a model you trust).
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_INPAINTING_MODEL,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        resolution: int = 512,
        torch_dtype: str | None = None,
        seed: int = 0,
        use_safetensors: bool = True,
    ) -> None:
        from diffusers import StableDiffusionInpaintPipeline

        kwargs: dict[str, Any] = {}
        if torch_dtype is not None:
            kwargs["torch_dtype"] = getattr(torch, torch_dtype)
        self.pipeline = StableDiffusionInpaintPipeline.from_pretrained(
            model_name_or_path, use_safetensors=use_safetensors, **kwargs
        )
        self.pipeline.set_progress_bar_config(disable=True)
        if getattr(self.pipeline, "safety_checker", None) is not None:
            self.pipeline.safety_checker = None
        self.model_name_or_path = model_name_or_path
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.resolution = resolution
        self.seed = seed

    def settings(self) -> dict[str, Any]:
        return {
            "model": str(self.model_name_or_path),
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "resolution": self.resolution,
        }

    def to(self, device: torch.device | str) -> DiffusersInpainting:
        self.pipeline.to(device)
        return self

    def __call__(
        self,
        images: Tensor,
        masks: Tensor,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
    ) -> Tensor:
        height, width = images.shape[-2:]
        size = (self.resolution, self.resolution)
        pixels = F.interpolate(
            (images.float() + 1) / 2, size=size, mode="bilinear", align_corners=False
        )
        holes = (F.interpolate(masks.float(), size=size, mode="nearest") > 0.5).float()
        generator = torch.Generator(device=self.pipeline.device).manual_seed(self.seed)
        output = self.pipeline(
            prompt=list(prompts),
            negative_prompt=None if negative_prompts is None else list(negative_prompts),
            image=pixels,
            mask_image=holes,
            height=self.resolution,
            width=self.resolution,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=generator,
            output_type="pt",
        ).images
        filled = F.interpolate(
            output.float().to(images.device),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )
        return paste_unmasked(filled * 2 - 1, images, masks)


def paste_unmasked(filled: Tensor, images: Tensor, masks: Tensor) -> Tensor:
    """``B = m~ * filled + (1 - m~) * I``: keep the source outside the inpainted region."""
    holes = (masks > 0.5).to(images.dtype)
    return (holes * filled.to(images.dtype) + (1 - holes) * images).clamp(-1.0, 1.0)


def build_tiny_inpainting(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``StableDiffusionInpaintPipeline`` for tests; returns ``out_dir``.

    The real architecture with tiny configs (UNet channels (8, 16) with 9 input channels,
    VAE channels (8, 16), a 2-layer CLIP text encoder of width 8, DDIM scheduler), built
    after ``torch.manual_seed(seed)`` and saved with ``save_pretrained``: load it by path
    with :class:`DiffusersInpainting` (VAE factor 2, so any even resolution works).
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    from layergen.models.text_encoder import build_tiny_text_encoder

    out_dir = Path(out_dir)
    build_tiny_text_encoder(
        out_dir, vocabulary=["background"], hidden_size=8, num_layers=2, seed=seed
    )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=9,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    pipeline = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=CLIPTextModel.from_pretrained(out_dir / "text_encoder", use_safetensors=True),
        tokenizer=CLIPTokenizer.from_pretrained(out_dir / "tokenizer"),
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out_dir)
    return out_dir
