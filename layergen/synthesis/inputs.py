"""Input of the synthesis job: img2dataset-style shards or folders of captioned images.

An *input shard* is one tar file (members ``KEY.jpg|png|webp``, ``KEY.txt`` caption,
``KEY.json`` metadata, as img2dataset writes them) or a slice of ``shard_size`` images of a
folder (caption in the sidecar ``NAME.txt``). Samples are decoded one by one so that a
corrupt image becomes a rejected record (reason ``decode_error``) carrying its key, never a
lost shard. Sizes are checked against ``layergen.limits`` before the work they imply: a file
or tar member over ``MAX_MEMBER_BYTES`` is not read (the shard ends there, as on a truncated
tar); an image over ``MAX_IMAGE_PIXELS`` (by its header), a caption over ``MAX_TEXT_CHARS``
or a JSON over ``MAX_JSON_BYTES`` is a rejected record.
"""

from __future__ import annotations

import glob
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from layergen import limits
from layergen.data.codec import ShardError
from layergen.layers import from_unit, hwc_to_chw, uint8_to_unit
from layergen.synthesis.base import SynthesisRecord

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


@dataclass(frozen=True)
class InputShard:
    """One unit of work: output shard ``index`` is made from this input.

    Attributes:
        index: position in the sorted input list (names the output shard).
        url: the tar file, or the folder.
        files: for a folder slice, its image files; empty for a tar file.
    """

    index: int
    url: str
    files: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Output shard name, ``shard-{index:06d}``."""
        return f"shard-{self.index:06d}"

    def identity(self) -> dict[str, Any]:
        """What output shard ``index`` is made from, recorded in its manifest entry.

        Returns:
            ``{"url", "files", "bytes"}``: the URL, the folder slice's file names (empty for
            a tar file) and a local tar file's size (``None`` otherwise).
        """
        local_tar = not self.files and os.path.isfile(self.url)
        return {
            "url": self.url,
            "files": [os.path.basename(path) for path in self.files],
            "bytes": os.path.getsize(self.url) if local_tar else None,
        }


def list_input_shards(inputs: str | Sequence[str], shard_size: int = 1000) -> list[InputShard]:
    """Expand inputs (tar files, globs, ``{000..009}`` brace patterns, folders, webdataset
    URLs such as ``pipe:...`` or ``s3://...``, taken as they are) into shards.

    Raises:
        FileNotFoundError: naming an input that matches nothing.
    """
    import braceexpand

    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    shards: list[InputShard] = []
    for pattern in inputs:
        expanded = list(braceexpand.braceexpand(pattern))
        if "://" in pattern or pattern.startswith("pipe:"):
            shards += [InputShard(len(shards) + i, url) for i, url in enumerate(expanded)]
            continue
        paths = sorted(path for url in expanded for path in glob.glob(url))
        if not paths:
            raise FileNotFoundError(f"input {pattern!r}: no such file or folder")
        for path in paths:
            if os.path.isdir(path):
                images = sorted(
                    os.path.join(path, name)
                    for name in os.listdir(path)
                    if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
                )
                for start in range(0, len(images), shard_size):
                    shards.append(
                        InputShard(len(shards), path, tuple(images[start : start + shard_size]))
                    )
            else:
                shards.append(InputShard(len(shards), path))
    return shards


def iter_raw_samples(shard: InputShard) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {"image" | extension: bytes})`` in file order.

    Tar files are read with :class:`layergen.data.shards.TarSamples` (local paths and
    webdataset URLs such as ``pipe:``).

    Raises:
        ShardError: naming the shard and key, if a tar file is unreadable or truncated, or a
            file or member is over ``layergen.limits.MAX_MEMBER_BYTES``.
    """
    if shard.files:
        for path in shard.files:
            stem = os.path.splitext(path)[0]
            key = os.path.basename(stem).replace(".", "_")
            files = {"image": _read(path, shard, key)}
            for extension in ("txt", "json"):
                if os.path.isfile(f"{stem}.{extension}"):
                    files[extension] = _read(f"{stem}.{extension}", shard, key)
            yield key, files
        return
    from layergen.data.shards import TarSamples

    for raw in TarSamples(on_error="raise")([{"url": shard.url}]):
        files = {
            "image" if ext.lower() in IMAGE_EXTENSIONS else ext: data
            for ext, data in raw.items()
            if not ext.startswith("__")
        }
        yield raw["__key__"], files


def _read(path: str, shard: InputShard, key: str) -> bytes:
    size = os.path.getsize(path)
    if size > limits.MAX_MEMBER_BYTES:
        raise ShardError(
            "invalid_sample",
            shard.url,
            key,
            f"{os.path.basename(path)}: {size} bytes exceed layergen.limits.MAX_MEMBER_BYTES = "
            f"{limits.MAX_MEMBER_BYTES}",
        )
    with open(path, "rb") as handle:
        return handle.read(limits.MAX_MEMBER_BYTES)


def decode_record(
    key: str, files: dict[str, bytes], resolution: int | None, shard: InputShard
) -> SynthesisRecord:
    """Decode one raw sample into a record; a failure gives a rejected record with its reason.

    The image is resized so that its shorter side is ``resolution`` and centre-cropped to
    a square (``None`` keeps it as it is); ``record.image`` is ``(3, H, W)`` in [-1, 1].
    """
    caption = files.get("txt", b"").decode("utf-8", errors="replace").strip()
    too_long = len(caption) > limits.MAX_TEXT_CHARS
    source = {"key": key, "shard": shard.url}
    record = SynthesisRecord(
        key=key, image=None, caption="" if too_long else caption, source=source
    )
    try:
        if too_long:
            raise ValueError(
                f"txt: {len(caption)} characters exceed layergen.limits.MAX_TEXT_CHARS = "
                f"{limits.MAX_TEXT_CHARS}"
            )
        if "json" in files:
            source["json"] = limits.parse_json(files["json"], "json")
        if "image" not in files:
            raise ValueError("no image file")
        with Image.open(io.BytesIO(files["image"])) as image:  # reads the header only
            limits.check_pixels(image.width, image.height, "image")
            image = image.convert("RGB")
            if resolution is not None:
                image = _resize_center_crop(image, resolution)
            pixels = np.asarray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        record.reject(f"decode_error: {type(error).__name__}: {error}")
        logger.warning("skipping %s in %s: %s", key, shard.url, record.rejection)
        return record
    record.image = from_unit(hwc_to_chw(uint8_to_unit(pixels))).to(torch.float32).contiguous()
    return record


def _resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))
