"""Image conditions of :class:`~layergen.pipelines.LayeredDiffusionPipeline` (issue 19).

A UNet built with ``composite_condition`` also sees the latent of a composite image, so
``pipe(prompt, image=picture)`` and ``pipe.decompose(picture)`` turn an existing picture into
layers; one built with ``box_condition`` takes a box per layer, ``layer_boxes`` (``(x0, y0,
x1, y1)`` in [0, 1] of the image's width and height; None for a layer without one). Classifier-
free guidance applies to the text: both halves of a guided batch see the same image and boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor

from layergen.layers import LayeredImage, from_unit, hwc_to_chw, uint8_to_unit
from layergen.pipelines.inputs import LayerPromptsArg
from layergen.pipelines.outputs import LayeredPipelineOutput, postprocess

ImageArg = PIL.Image.Image | np.ndarray | Tensor | LayeredImage | None
BoxesArg = Sequence[Sequence[float] | None] | Tensor | None


def image_to_tensor(image: PIL.Image.Image | np.ndarray | Tensor | LayeredImage) -> Tensor:
    """A picture as ``(B, 3, H, W)`` in [-1, 1].

    Accepts a PIL image (RGB, or RGBA composited over black), a uint8 ``(H, W, 3)`` array, a
    tensor ``(3, H, W)`` / ``(B, 3, H, W)`` in [-1, 1], or a ``LayeredImage`` (its composite).
    """
    if isinstance(image, LayeredImage):
        return image.composite()[None]
    if isinstance(image, PIL.Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: expected a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
        return from_unit(hwc_to_chw(uint8_to_unit(image)))[None]
    if not isinstance(image, Tensor):
        raise TypeError(f"image: expected a PIL image, array, tensor or LayeredImage, got {type(image).__name__}")
    image = image[None] if image.ndim == 3 else image
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    return image.float()


def paste_visible_pixels(layered: LayeredImage, picture: Tensor, threshold: float = 1 / 255) -> LayeredImage:
    """Each layer takes ``picture``'s pixels wherever it is visible (visible mask >
    ``threshold``), so the layers re-composite to the picture; hidden parts (a background
    behind its foregrounds) keep the generated colours.

    Args:
        layered: a decomposition of ``picture``.
        picture: ``(3, H, W)`` in [-1, 1], the size of ``layered``.
    """
    picture = picture.to(layered.background)
    visible = layered.layer_masks() > threshold  # (L, 1, H, W): background first
    layers = torch.where(visible, picture[None], layered.layer_images())
    return replace(layered, background=layers[0], foregrounds=layers[1:])


class LayeredImageConditionsMixin:
    """Encodes the ``image`` and ``layer_boxes`` of a call into the UNet's condition inputs."""

    def prepare_image_conditions(
        self,
        image: ImageArg,
        layer_boxes: BoxesArg,
        num_images: int,
        num_layers: int,
        height: int,
        width: int,
    ) -> dict[str, Tensor]:
        """The UNet's ``composite_latents`` ``(N, C, h, w)`` and ``layer_boxes`` ``(N, L, 4)``
        for ``N`` images of ``L`` layers (only those given).

        Raises:
            ValueError: ``image`` or ``layer_boxes`` given to a UNet without that condition,
                an image of another size than ``height x width``, or boxes of the wrong shape.
        """
        conditions: dict[str, Tensor] = {}
        device, dtype = self._execution_device, self.unet.dtype
        if image is not None:
            if not self.unet.config.get("composite_condition", False):
                raise ValueError("image: this pipeline's UNet is not composite-conditioned (train one "
                                 "with composite_condition: true, docs/decomposition.md)")
            pixels = image_to_tensor(image)
            if tuple(pixels.shape[-2:]) != (height, width):
                raise ValueError(f"image: size {tuple(pixels.shape[-2:])}, expected ({height}, {width})")
            if pixels.shape[0] not in (1, num_images):
                raise ValueError(f"image: {pixels.shape[0]} images for {num_images} outputs")
            ae = self.autoencoder
            composite = pixels.to(device, ae.dtype)[:, None]  # (B, 1, 3, H, W)
            ones = torch.ones_like(composite[:, :, :1])
            latents = ae.encode(composite, ones).latent_dist.mode()[:, 0] * ae.config.scaling_factor
            conditions["composite_latents"] = latents.to(dtype).expand(num_images, -1, -1, -1)
        if layer_boxes is not None:
            if not self.unet.config.get("box_condition", False):
                raise ValueError("layer_boxes: this pipeline's UNet is not box-conditioned (train one "
                                 "with box_condition: true)")
            conditions["layer_boxes"] = boxes_to_tensor(layer_boxes, num_images, num_layers).to(device)
        return conditions


    @torch.no_grad()
    def decompose(
        self,
        image: ImageArg,
        num_layers: int | None = None,
        prompt: str = "",
        layer_prompts: LayerPromptsArg = None,
        layer_boxes: BoxesArg = None,
        keep_pixels: bool = True,
        num_candidates: int = 1,
        output_type: str = "layered",
        return_dict: bool = True,
        **kwargs: Any,
    ) -> LayeredPipelineOutput | tuple[Any, list[LayeredImage] | None]:
        """Decompose a picture into ``num_layers`` layers (background + foregrounds).

        The composite-conditioned UNet generates layers whose composite reproduces ``image``;
        ``prompt`` / ``layer_prompts`` (optional, ``"auto"``: the prompt's noun phrases) and
        ``layer_boxes`` steer what goes in which layer. ``num_candidates`` decompositions are
        drawn (one batch) and the one whose decoded composite is closest to the picture (mean
        absolute error) is kept. With ``keep_pixels`` each layer then takes the picture's own
        pixels wherever it is visible (:func:`paste_visible_pixels`), so the layers
        re-composite to the picture and only hidden parts are generated. Other arguments as in
        ``__call__``.

        Raises:
            ValueError: the UNet was not trained with ``composite_condition``; more than one
                candidate for a batch of prompts or several images per prompt.
        """
        if layer_prompts is None and num_layers is None:
            num_layers = 3
        if num_candidates < 1:
            raise ValueError(f"num_candidates: must be at least 1, got {num_candidates}")
        if num_candidates > 1 and (not isinstance(prompt, str) or kwargs.get("num_images_per_prompt", 1) != 1):
            raise ValueError("num_candidates: give one prompt and one image per prompt")
        if num_candidates > 1:
            kwargs["num_images_per_prompt"] = num_candidates
        out = self(prompt, layer_prompts, num_layers, image=image, layer_boxes=layer_boxes,
                   output_type="layered" if output_type != "latent" else "latent", **kwargs)
        if output_type == "latent":
            return out if return_dict else (out.images, out.layers)
        layers, latents = out.layers, out.latents
        pixels = image_to_tensor(image).to(layers[0].background)
        if num_candidates > 1:
            errors = torch.stack([(c.composite() - pixels[0]).abs().mean() for c in layers])
            best = int(errors.argmin())
            layers, latents = [layers[best]], latents[best : best + 1]
        if keep_pixels:
            pixels = pixels.expand(len(layers), -1, -1, -1)
            layers = [paste_visible_pixels(layered, p) for layered, p in zip(layers, pixels)]
        out = postprocess(layers, latents, output_type)
        return out if return_dict else (out.images, out.layers)


def boxes_to_tensor(layer_boxes: BoxesArg, num_images: int, num_layers: int) -> Tensor:
    """``L`` boxes (each ``(x0, y0, x1, y1)`` in [0, 1] or None), ``(L, 4)`` or ``(N, L, 4)``
    -> ``(N, L, 4)`` float, NaN for layers without a box.

    Raises:
        ValueError: a box with other than 4 numbers, outside [0, 1] or with ``x1 < x0`` or
            ``y1 < y0``, or more boxes than layers.
    """
    if isinstance(layer_boxes, Tensor):
        boxes = layer_boxes.float()
    else:
        rows: list[Any] = []
        for i, box in enumerate(layer_boxes):
            if box is not None and len(box) != 4:
                raise ValueError(f"layer_boxes[{i}]: expected (x0, y0, x1, y1), got {box!r}")
            rows.append([float("nan")] * 4 if box is None else [float(v) for v in box])
        boxes = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    boxes = boxes[None] if boxes.ndim == 2 else boxes
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[1] > num_layers:
        raise ValueError(f"layer_boxes: expected at most {num_layers} boxes of 4 numbers, "
                         f"got shape {tuple(boxes.shape)}")
    given = ~boxes.isnan().any(dim=-1)
    values = boxes[given]
    if len(values) and (
        (values < 0).any() or (values > 1).any()
        or (values[:, 2] < values[:, 0]).any() or (values[:, 3] < values[:, 1]).any()
    ):
        raise ValueError("layer_boxes: each box is (x0, y0, x1, y1) in [0, 1] with x0 <= x1, y0 <= y1")
    pad = torch.full((boxes.shape[0], num_layers - boxes.shape[1], 4), float("nan"))
    boxes = torch.cat([boxes, pad], dim=1)
    if boxes.shape[0] not in (1, num_images):
        raise ValueError(f"layer_boxes: boxes for {boxes.shape[0]} images, the call makes {num_images}")
    return boxes.expand(num_images, -1, -1)
