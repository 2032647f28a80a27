"""Generated samples on disk, one file per sample, so that evaluation can resume.

Each sample ``i`` is ``<dir>/<key>.safetensors`` holding ``background (3, H, W)``,
``foregrounds (K, 3, H, W)`` and ``masks (K, 1, H, W)``, with the prompt and layer prompts in
the safetensors metadata. Files are written atomically (temporary name, then rename), so a
run killed mid-write leaves no half sample; :meth:`SampleStore.done` lists finished keys.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from layergen import limits
from layergen.layers import LayeredImage, LayeredImageError

SUFFIX = ".safetensors"
FIELDS = ("background", "foregrounds", "masks")


def sample_key(index: int) -> str:
    """File stem of sample ``index``."""
    return f"sample_{index:06d}"


class SampleStore:
    """A directory of generated ``LayeredImage`` s keyed by :func:`sample_key`."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def done(self) -> set[str]:
        """Keys of the samples already written."""
        return {p.name[: -len(SUFFIX)] for p in self.directory.glob(f"*{SUFFIX}")}

    def save(self, key: str, image: LayeredImage) -> Path:
        """Write ``image`` atomically under ``key``."""
        tensors = {
            "background": image.background.detach().float().cpu().contiguous(),
            "foregrounds": image.foregrounds.detach().float().cpu().contiguous(),
            "masks": image.masks.detach().float().cpu().contiguous(),
        }
        metadata = {"prompt": image.prompt, "layer_prompts": json.dumps(list(image.layer_prompts))}
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
        return path

    def load(self, key: str) -> LayeredImage:
        """Read the sample ``key``; shapes and prompts are checked against
        ``layergen.limits`` (``MAX_FOREGROUNDS``, ``MAX_IMAGE_PIXELS``, ``MAX_TEXT_CHARS``)
        from the file's header before any tensor is read.

        Raises:
            LayeredImageError: the file is unreadable, misses a field or is over a limit
                (names the file).
        """
        path = self.path(key)
        try:
            _check_sample(_header(path))
            with safe_open(path, framework="pt") as f:
                tensors = {name: f.get_tensor(name) for name in FIELDS}
                metadata = f.metadata() or {}
            return LayeredImage(
                **tensors,
                prompt=metadata["prompt"],
                layer_prompts=limits.parse_json(metadata["layer_prompts"], "layer_prompts"),
                metadata={"key": key},
            )
        except (OSError, KeyError, TypeError, ValueError, struct.error, SafetensorError) as error:
            raise LayeredImageError(f"{path}: not a readable generated sample ({error})") from error


def _header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (shapes, metadata), read without its data."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > limits.MAX_JSON_BYTES:
            raise ValueError(f"header over layergen.limits.MAX_JSON_BYTES = {limits.MAX_JSON_BYTES}")
        header = limits.parse_json(handle.read(length), "header")
    if not isinstance(header, dict):
        raise ValueError("header: expected a JSON object")
    return header


def _check_sample(header: dict[str, Any]) -> None:
    """Refuse a sample by its header, before its data is read: shapes that disagree, or
    ``K``, the size or the prompt over ``layergen.limits``."""
    background, foregrounds, masks = (list(header[name]["shape"]) for name in FIELDS)
    if len(background) != 3 or len(foregrounds) != 4:
        raise ValueError(
            f"expected background (3, H, W), foregrounds (K, 3, H, W), got {background}, "
            f"{foregrounds}"
        )
    k, (height, width) = foregrounds[0], background[1:]
    if k > limits.MAX_FOREGROUNDS:
        raise ValueError(
            f"foregrounds: K = {k} exceeds layergen.limits.MAX_FOREGROUNDS = "
            f"{limits.MAX_FOREGROUNDS}"
        )
    limits.check_pixels(width, height, "background", layers=k + 1)
    if foregrounds != [k, 3, height, width] or masks != [k, 1, height, width]:
        raise ValueError(f"shapes disagree: {background}, {foregrounds}, {masks}")
    prompt = (header.get("__metadata__") or {}).get("prompt", "")
    if len(prompt) > limits.MAX_TEXT_CHARS:
        raise ValueError(f"prompt: over layergen.limits.MAX_TEXT_CHARS = {limits.MAX_TEXT_CHARS}")
