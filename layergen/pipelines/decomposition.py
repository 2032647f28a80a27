"""Image to layers with a composite-conditioned pipeline (``pipe.decompose``, issue 19).

:class:`PipelineDecomposer` wraps a pipeline as the decomposer ``decompose.py --model`` and
the decomposition benchmark call: ``(image (3, H, W) in [-1, 1], caption, num_layers) ->
LayeredImage``. A picture of another size than the model's is resized to it (bilinear,
antialiased) and the layers are resized back, so the result is the input's size.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from layergen.data.transforms import resize
from layergen.layers import LayeredImage


class PipelineDecomposer:
    """A pipeline's ``decompose`` as a decomposer.

    Args:
        pipe: anything with ``decompose(image, num_layers=..., [prompt=...], ...)`` returning a
            ``LayeredPipelineOutput``, a ``LayeredImage`` or a sequence of them.
        use_caption: pass the caption as the global prompt (else decompose from pixels alone).
        layer_prompts: layer prompts for every image (None: the pipeline's default).
        seed: each call starts its noise from this seed (reproducible per image).
        **call_kwargs: more ``decompose`` arguments (``num_inference_steps``, ...).

    Raises:
        TypeError: when the pipeline has no ``decompose`` method.
    """

    def __init__(
        self,
        pipe: Any,
        use_caption: bool = True,
        layer_prompts: Sequence[str] | str | None = None,
        seed: int = 0,
        **call_kwargs: Any,
    ) -> None:
        if not callable(getattr(pipe, "decompose", None)):
            raise TypeError(f"{type(pipe).__name__} has no decompose method: the pipeline cannot "
                            "decompose images into layers")
        self.pipe = pipe
        self.use_caption = use_caption
        self.layer_prompts = layer_prompts
        self.seed = seed
        self.call_kwargs = call_kwargs
        self.parameters = inspect.signature(pipe.decompose).parameters

    def __call__(
        self, image: Tensor, caption: str = "", num_layers: int | None = None, **extra: Any
    ) -> LayeredImage:
        """Decompose ``image`` ``(3, H, W)`` in [-1, 1] into a ``LayeredImage`` of its size;
        ``extra`` goes to ``decompose`` (e.g. ``layer_boxes``)."""
        size = tuple(image.shape[-2:])
        side = getattr(self.pipe, "default_size", None)
        if side is not None and size != (side, side):
            image = F.interpolate(image[None], size=(side, side), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(-1.0, 1.0)
        kwargs = {**self.call_kwargs, **extra}
        if self.use_caption and "prompt" in self.parameters:
            kwargs["prompt"] = caption
        if self.layer_prompts is not None:
            kwargs["layer_prompts"] = self.layer_prompts
        if "generator" in self.parameters or any(p.kind is p.VAR_KEYWORD for p in self.parameters.values()):
            kwargs.setdefault("generator", torch.Generator().manual_seed(self.seed))
        out = self.pipe.decompose(image, num_layers=num_layers, **kwargs)
        out = getattr(out, "images", out)
        if isinstance(out, Sequence) and out and isinstance(out[0], LayeredImage):
            out = out[0]
        if not isinstance(out, LayeredImage):
            raise TypeError(f"decompose returned {type(out).__name__}, expected a LayeredImage")
        if caption and not out.prompt:
            out.prompt = caption
        return resize(out, size) if out.size != size else out


__all__ = ["PipelineDecomposer"]
