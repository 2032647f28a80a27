"""Generate or edit one layered image and write it to a file (the logic of ``generate.py``;
the pipeline comes from :func:`layergen.pipelines.load_pipeline`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layergen.export import load_layered, save_layered
from layergen.layers import LayeredImage
from layergen.pipelines.layered_diffusion import LayeredDiffusionPipeline

logger = logging.getLogger(__name__)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _manifest(model: str, seed: int, steps: int, guidance: float, **extra: Any) -> dict[str, Any]:
    return {"model": model, "seed": seed, "steps": steps, "guidance": guidance, **extra}


def generate_to_file(
    pipe: LayeredDiffusionPipeline,
    prompt: str,
    out: str | Path,
    layer_prompts: Sequence[str] | str | None = None,
    num_layers: int | None = None,
    negative_prompt: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    model_name: str = "",
    layer_boxes: Sequence[Sequence[float] | None] | None = None,
) -> tuple[LayeredImage, Path]:
    """Generate one layered image and save it (``.psd``, ``.ora`` or a PNG folder).

    ``steps`` and ``guidance`` default to the pipeline's recipe; the manifest records the
    values used (and the ``layer_boxes``, box-conditioned pipelines).
    """
    image = pipe(
        prompt,
        layer_prompts=layer_prompts,
        num_layers=num_layers,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=_generator(seed),
        height=height,
        width=width,
        layer_boxes=layer_boxes,
    ).images[0]
    boxes = {} if layer_boxes is None else {"layer_boxes": [None if b is None else list(b) for b in layer_boxes]}
    manifest = _manifest(
        model_name,
        seed,
        image.metadata["steps"],
        image.metadata["guidance"],
        negative_prompt=negative_prompt,
        **boxes,
    )
    return image, save_layered(image, out, manifest)


def edit_to_file(
    pipe: LayeredDiffusionPipeline,
    source: str | Path,
    out: str | Path,
    keep: Sequence[int] | None = None,
    layer_prompts: Sequence[str] | None = None,
    prompt: str | None = None,
    restyle: int | None = None,
    strength: float | None = None,
    negative_prompt: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    model_name: str = "",
    layer_boxes: Sequence[Sequence[float] | None] | None = None,
) -> tuple[LayeredImage, Path]:
    """Edit a layered file: regenerate the layers not in ``keep``, or restyle one layer.

    Args:
        source: input ``.psd``, ``.ora`` or layer-PNG folder.
        keep: layers kept bit-identical (``edit``); exclusive with ``restyle``.
        layer_prompts: new layer prompts (``edit``: all L; ``restyle``: one, the layer's).
        restyle: index of the layer to restyle with ``strength``.
        layer_boxes: where the regenerated layers go (``edit``, box-conditioned pipelines).
        strength, steps, guidance: default to the pipeline's recipe.
    """
    if (keep is None) == (restyle is None):
        raise ValueError("edit: give exactly one of --keep or --restyle")
    image = load_layered(source)
    common = dict(
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=_generator(seed),
    )
    if restyle is not None and layer_boxes is not None:
        raise ValueError("--boxes place regenerated layers (--keep); a restyled layer keeps its place")
    if restyle is not None:
        if layer_prompts is not None and len(layer_prompts) != 1:
            raise ValueError("--restyle takes one layer prompt (the restyled layer's)")
        new_prompt = layer_prompts[0] if layer_prompts else None
        result = pipe.restyle(image, restyle, new_prompt, strength=strength, **common).images[0]
        extra = {
            "source": str(source),
            "restyle": restyle,
            "strength": result.metadata["edit"]["strength"],
        }
    else:
        result = pipe.edit(image, keep, layer_prompts=layer_prompts, layer_boxes=layer_boxes, **common).images[0]
        extra = {"source": str(source), "keep": sorted(keep)}
    steps, guidance = result.metadata["steps"], result.metadata["guidance"]
    manifest = _manifest(model_name, seed, steps, guidance, edit=extra)
    return result, save_layered(result, out, manifest)
