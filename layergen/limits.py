"""Bounds on what the readers accept from a file, checked before any work that grows with it.

Every reader of a file from outside (layered shards, img2dataset shards and image folders,
PSD / ORA / PNG-folder imports, labels files, synthesis manifests, evaluation sample stores)
checks each count and size it reads against these limits *before* it allocates or loops over
it, and raises ``LayeredImageError`` (a ``ValueError``; ``ShardError`` in shard readers)
naming the file and the field. The limits are read at call time: a user who needs more raises one,
e.g. ``layergen.limits.MAX_IMAGE_PIXELS = 8192 * 8192``, in the main process before any
data-loader worker starts (forked workers inherit it).
"""

from __future__ import annotations

import json
import os
from typing import Any

from layergen.layers import LayeredImageError

MAX_IMAGE_PIXELS = 4096 * 4096
"""Width x height of one decoded image, layer or layer canvas."""

MAX_LAYERED_PIXELS = 8 * 4096 * 4096
"""Layers x width x height of one layered image, whose layers are decoded together."""

MAX_FOREGROUNDS = 64
"""Foreground layers ``K`` of one layered image (``L = K + 1`` layers)."""

MAX_JSON_BYTES = 8 << 20
"""One JSON or XML document: a shard's ``json`` member, a manifest, a line of a labels file."""

MAX_TEXT_CHARS = 10_000
"""One prompt, caption or layer name."""

MAX_MEMBER_BYTES = 256 << 20
"""One tar or zip member, or one input file read whole."""


def parse_json(data: bytes | str, what: str) -> Any:
    """Parse at most ``MAX_JSON_BYTES`` of UTF-8 JSON.

    Raises:
        LayeredImageError: starting with ``what`` (the file or member): too large, not
            UTF-8, invalid JSON or nested too deeply.
    """
    if len(data) > MAX_JSON_BYTES:
        raise LayeredImageError(
            f"{what}: over layergen.limits.MAX_JSON_BYTES = {MAX_JSON_BYTES} bytes"
        )
    try:
        return json.loads(data)
    except UnicodeDecodeError as error:
        raise LayeredImageError(f"{what}: not valid UTF-8 ({error})") from None
    except json.JSONDecodeError as error:
        raise LayeredImageError(f"{what}: invalid JSON ({error})") from None
    except RecursionError:
        raise LayeredImageError(f"{what}: JSON nested too deeply") from None


def read_json_file(path: str | os.PathLike) -> Any:
    """Read and parse a JSON file of at most ``MAX_JSON_BYTES`` (see :func:`parse_json`).

    Raises:
        LayeredImageError: naming the file.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        data = handle.read(MAX_JSON_BYTES + 1)  # one byte more tells a file over the limit
    return parse_json(data, os.fspath(path))


def check_layers(count: int, what: str) -> None:
    """Refuse more than ``MAX_FOREGROUNDS + 1`` layers before any of them is read.

    Raises:
        LayeredImageError: ``"{what}: {count} layers exceed ..."``.
    """
    if count > MAX_FOREGROUNDS + 1:
        raise LayeredImageError(
            f"{what}: {count} layers exceed layergen.limits.MAX_FOREGROUNDS + 1 = "
            f"{MAX_FOREGROUNDS + 1}"
        )


def check_pixels(width: int, height: int, what: str, layers: int = 1) -> None:
    """Refuse an image before it is decoded or allocated: more than ``MAX_IMAGE_PIXELS``,
    or ``layers`` of its size more than ``MAX_LAYERED_PIXELS``.

    Raises:
        LayeredImageError: ``"{what}: {width}x{height} pixels exceed ..."``.
    """
    if width * height > MAX_IMAGE_PIXELS:
        raise LayeredImageError(
            f"{what}: {width}x{height} pixels exceed layergen.limits.MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS}"
        )
    if layers * width * height > MAX_LAYERED_PIXELS:
        raise LayeredImageError(
            f"{what}: {layers} layers of {width}x{height} pixels exceed "
            f"layergen.limits.MAX_LAYERED_PIXELS = {MAX_LAYERED_PIXELS}"
        )
