"""What :class:`~layergen.pipelines.LayeredDiffusionPipeline` returns, for each ``output_type``.

A layered image has two faces: the picture people look at (the composite, LayerDiff eq. 1)
and the layers themselves. ``images`` holds the composite in diffusers' formats, so code
written for any diffusers text-to-image pipeline reads it unchanged; ``layers`` holds the
``LayeredImage`` s (background, foregrounds, visible masks, prompts).

=============  ====================================================  ====================
output_type    ``images``                                            ``layers``
=============  ====================================================  ====================
``layered``    the ``LayeredImage`` s (the default)                  the same list
``pil``        PIL RGB composites                                    ``LayeredImage`` s
``np``         composites ``(N, H, W, 3)`` float32 in [0, 1]         ``LayeredImage`` s
``pt``         composites ``(N, 3, H, W)`` float32 in [0, 1] (CPU)   ``LayeredImage`` s
``latent``     the latents ``(N, L', C, h, w)`` (scaled, undecoded)  None
=============  ====================================================  ====================

``latents`` always holds the final latents; ``LayeredImage.to_pil_layers()`` gives RGBA
layers (alpha = visible mask over what the layers above leave uncovered) for any type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput
from torch import Tensor

from layergen.layers import LayeredImage, to_unit

OUTPUT_TYPES = ("layered", "pil", "np", "pt", "latent")


@dataclass
class LayeredPipelineOutput(BaseOutput):
    """Output of :class:`~layergen.pipelines.LayeredDiffusionPipeline`, ``edit`` and ``restyle``.

    Attributes:
        images: the composites in the format of ``output_type`` (the ``LayeredImage`` s for
            "layered", the latents for "latent"; see the module docstring).
        layers: one ``LayeredImage`` per image; None for ``output_type="latent"``.
        latents: the final latents ``(N, L', C, h, w)``, scaled by the autoencoder's
            ``scaling_factor``.
    """

    images: Any
    layers: list[LayeredImage] | None = None
    latents: Tensor | None = None


def composites(layers: list[LayeredImage]) -> Tensor:
    """``(N, 3, H, W)`` float32 composites in [0, 1] (LayerDiff eq. 1)."""
    return torch.stack([to_unit(image.composite()).float().clamp(0.0, 1.0) for image in layers])


def postprocess(
    layers: list[LayeredImage] | None, latents: Tensor, output_type: str
) -> LayeredPipelineOutput:
    """Pack decoded layers (None for "latent") and latents into the output of ``output_type``."""
    if output_type == "latent":
        return LayeredPipelineOutput(images=latents, layers=None, latents=latents)
    assert layers is not None
    if output_type == "layered":
        images: Any = layers
    elif output_type == "pt":
        images = composites(layers)
    elif output_type == "np":
        images = composites(layers).permute(0, 2, 3, 1).numpy()  # (N, 3, H, W) -> (N, H, W, 3)
    else:
        images = [image.composite_pil() for image in layers]
    return LayeredPipelineOutput(images=images, layers=layers, latents=latents)


__all__ = ["OUTPUT_TYPES", "LayeredPipelineOutput", "composites", "postprocess"]
