"""Generated samples on disk, one file per sample, so that evaluation can resume.

Each sample ``i`` is ``<dir>/<key>.safetensors`` holding ``background (3, H, W)``,
``foregrounds (K, 3, H, W)`` and ``masks (K, 1, H, W)``, with the prompt and layer prompts in
the safetensors metadata. Files are written atomically (temporary name, then rename), so a
run killed mid-write leaves no half sample; :meth:`SampleStore.done` lists finished keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from layergen.layers import LayeredImage, LayeredImageError

SUFFIX = ".safetensors"


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
        """Read the sample ``key``.

        Raises:
            LayeredImageError: the file is unreadable or misses a field (names the file).
        """
        path = self.path(key)
        try:
            with safe_open(path, framework="pt") as f:
                tensors = {name: f.get_tensor(name) for name in ("background", "foregrounds", "masks")}
                metadata = f.metadata() or {}
            return LayeredImage(
                **tensors,
                prompt=metadata["prompt"],
                layer_prompts=json.loads(metadata["layer_prompts"]),
                metadata={"key": key},
            )
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as error:
            raise LayeredImageError(f"{path}: not a readable generated sample ({error})") from error
