"""The JSON manifest written beside exported layered images.

A manifest records what produced a layered image (global prompt, layer prompts, seed, model,
steps, guidance, ...) so that an exported file can be reproduced or edited later.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from layergen import limits
from layergen.layers import LayeredImage, LayeredImageError

MANIFEST_VERSION = 1


def _jsonable(value: Any) -> Any:
    """Convert tensors, paths and tuples into JSON-serialisable values."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def build_manifest(image: LayeredImage, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Manifest of one layered image.

    Args:
        image: the layered image (its prompt, layer prompts and metadata are recorded).
        manifest: extra fields (seed, model, steps, guidance, ...); they override the image's
            metadata entries of the same name.

    Returns:
        A JSON-serialisable dict with at least ``prompt``, ``layer_prompts``,
        ``num_layers``, ``size`` and ``layergen_manifest_version``.
    """
    height, width = image.size
    out: dict[str, Any] = {
        "layergen_manifest_version": MANIFEST_VERSION,
        "prompt": image.prompt,
        "layer_prompts": list(image.layer_prompts),
        "num_layers": image.num_layers,
        "size": [height, width],
    }
    out.update(_jsonable(dict(image.metadata)))
    out.update(_jsonable(dict(manifest or {})))
    return out


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    """Write a manifest as indented JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(_jsonable(manifest), indent=2, sort_keys=False) + "\n")
    return path


def check_text(text: str, what: str) -> str:
    """A prompt or layer name of at most ``layergen.limits.MAX_TEXT_CHARS`` characters.

    Raises:
        LayeredImageError: ``what`` names the file and field.
    """
    if len(text) > limits.MAX_TEXT_CHARS:
        raise LayeredImageError(
            f"{what}: {len(text)} characters exceed layergen.limits.MAX_TEXT_CHARS = "
            f"{limits.MAX_TEXT_CHARS}"
        )
    return text


def check_manifest(data: Any, what: str) -> dict[str, Any]:
    """A manifest: a JSON object whose prompt and layer prompts are within ``layergen.limits``.

    Raises:
        LayeredImageError: ``what`` names the file.
    """
    if not isinstance(data, dict):
        raise LayeredImageError(
            f"{what}: a manifest must be a JSON object, got {type(data).__name__}"
        )
    check_text(str(data.get("prompt", "")), f"{what}: prompt")
    prompts = data.get("layer_prompts")
    if isinstance(prompts, list):
        limits.check_layers(len(prompts), f"{what}: layer_prompts")
        for i, prompt in enumerate(prompts):
            check_text(str(prompt), f"{what}: layer_prompts[{i}]")
    return data


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest of at most ``layergen.limits.MAX_JSON_BYTES``.

    Raises:
        LayeredImageError: naming the file when it is over a limit or not a JSON object.
    """
    return check_manifest(limits.read_json_file(path), str(path))


def apply_manifest(image: LayeredImage, manifest: dict[str, Any]) -> LayeredImage:
    """Restore prompt, layer prompts and metadata recorded in a manifest onto ``image``."""
    layer_prompts = manifest.get("layer_prompts")
    if isinstance(layer_prompts, list) and len(layer_prompts) == image.num_layers:
        image.layer_prompts = [str(p) for p in layer_prompts]
    image.prompt = str(manifest.get("prompt", image.prompt))
    image.metadata = {
        k: v
        for k, v in manifest.items()
        if k not in ("prompt", "layer_prompts", "num_layers", "size", "layergen_manifest_version")
    }
    return image
