"""Encoding and decoding of one layered image as WebDataset members (the shard format).

One sample per key. Members (``{key}.{name}``):
    ``composite.png``   RGB composite (for viewing; readers derive the composite from layers)
    ``image.png``       optional RGB source photograph (written by the synthesis jobs, absent
                        for synthetic scenes): the target of the auxiliary composite head and
                        the FID reference (Text2Layer IV-B, V-B), ``LayeredImage.image``
    ``background.png``  RGB background
    ``fg_{i}.png``      RGB foreground i (i = 0..K-1, back to front); or RGBA, as
                        LayerDiffuse and Qwen-Image-Layered emit layers (see below)
    ``mask_{i}.png``    visible mask of foreground i: 8-bit ``"L"`` or 16-bit ``"I;16"``;
                        optional when ``fg_{i}.png`` is RGBA
    ``json``            ``{"prompt", "layer_prompts", "K", "mask_bits", "source", "scores",
                        "depth", "metadata"}`` (UTF-8)

All PNGs are lossless; a write/read round trip is bit-exact on the quantised values. Masks
are quantised on their cumulative sums (``q_i = round(s C_i) - round(s C_{i-1})`` with
``C_i = m_1 + ... + m_i``, ``s = 2^bits - 1``), so the decoded masks still sum to <= 1 and
each is within one level of the original.

An RGBA ``fg_{i}.png`` without a ``mask_{i}.png``: its alpha ``a_i`` is the layer's straight
alpha under "normal" blending (alpha = mask), so its visible mask is what the layers above
leave uncovered of it, ``m_i = a_i (1 - sum_{j > i} m_j)``: the alpha itself for one
foreground or layers that do not overlap. With a ``mask_{i}.png`` the mask file wins and the
alpha is ignored (the writers here write RGB foregrounds and mask files).

Bad members (a corrupt or truncated image, a missing member, a mask of the wrong mode or
size, non-UTF-8 text, an image over PIL's decompression-bomb limit, invalid values) raise
``ShardError`` naming the shard, the key and the member. Sizes read from a member are checked
against ``layergen.limits`` before any work that grows with them: ``K`` against
``max_foregrounds`` (default ``MAX_FOREGROUNDS``) before the members are looked up, the
JSON's size and each prompt's length, and each image's width and height, read from its
header, against ``MAX_IMAGE_PIXELS`` and the background's size before it is decoded.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image

from layergen import limits
from layergen.layers import (
    LayeredImage,
    LayeredImageError,
    chw_to_hwc,
    from_unit,
    hwc_to_chw,
    normalize_masks,
    to_unit,
    uint8_to_unit,
    unit_to_uint8,
)


class ShardError(LayeredImageError):
    """A bad shard member; the message names the shard and the key.

    Attributes:
        reason: one of ``layergen.data.skips.SKIP_REASONS``.
        shard: shard URL.
        key: sample key ("" when unknown).
    """

    def __init__(self, reason: str, shard: str, key: str, detail: str) -> None:
        super().__init__(f"shard {shard}, key {key or '?'}: {detail}")
        self.reason, self.shard, self.key, self.detail = reason, shard, key, detail


# ----------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------


def png_bytes(array: np.ndarray) -> bytes:
    """A PNG file of a ``(H, W)`` or ``(H, W, C)`` uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def quantize_masks(masks: torch.Tensor, bits: int = 8) -> np.ndarray:
    """Quantise visible masks on their cumulative sums so the quantised sum stays <= 1.

    Args:
        masks: ``(K, 1, H, W)`` in [0, 1], ``sum_i m_i <= 1``.
        bits: 8 or 16.

    Returns:
        ``(K, H, W)`` uint8 or uint16.
    """
    if bits not in (8, 16):
        raise ValueError(f"mask_bits: expected 8 or 16, got {bits}")
    scale = 2**bits - 1
    cumulative = masks[:, 0].double().clamp(0, 1).cumsum(0).clamp(max=1.0).numpy()
    levels = np.rint(cumulative * scale).astype(np.int64)
    q = np.diff(levels, axis=0, prepend=0)
    return q.astype(np.uint8 if bits == 8 else np.uint16)


def encode_sample(sample: LayeredImage, key: str, mask_bits: int = 8) -> dict[str, Any]:
    """Encode a layered image as webdataset members (PNG layers, JSON metadata).

    Args:
        sample: a valid layered image.
        key: sample key (no dots).
        mask_bits: 8 (mode "L") or 16 (mode "I;16").

    Returns:
        ``{"__key__": key, "composite.png": bytes, "background.png": ..., "fg_{i}.png": ...,
        "mask_{i}.png": ..., "json": bytes}``, plus ``"image.png"`` if ``sample.image`` is set.
    """
    if "." in key.rsplit("/", 1)[-1]:
        raise ValueError(f"key: must not contain dots, got {key!r}")
    sample.validate()
    meta = dict(sample.metadata)
    for name in ("key", "shard"):
        meta.pop(name, None)
    k = sample.num_foregrounds
    record = {
        "prompt": sample.prompt,
        "layer_prompts": list(sample.layer_prompts),
        "K": k,
        "mask_bits": mask_bits,
        "source": meta.pop("source", ""),
        "scores": meta.pop("scores", {}),
        "depth": meta.pop("depth", list(range(1, k + 1))),
        "metadata": meta,
    }
    out: dict[str, Any] = {"__key__": key}
    out["composite.png"] = png_bytes(unit_to_uint8(chw_to_hwc(to_unit(sample.composite()))))
    if sample.image is not None:
        out["image.png"] = png_bytes(unit_to_uint8(chw_to_hwc(to_unit(sample.image))))
    out["background.png"] = png_bytes(unit_to_uint8(chw_to_hwc(to_unit(sample.background))))
    for i, fg in enumerate(sample.foregrounds):
        out[f"fg_{i}.png"] = png_bytes(unit_to_uint8(chw_to_hwc(to_unit(fg))))
    for i, mask in enumerate(quantize_masks(sample.masks, mask_bits)):
        out[f"mask_{i}.png"] = png_bytes(mask)
    out["json"] = json.dumps(record, ensure_ascii=False).encode("utf-8")
    return out


# ----------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------


def open_image(
    data: bytes, name: str, shard: str, key: str, size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an image fully; errors name the shard, key and member.

    Its header's width and height are checked first, against ``limits.MAX_IMAGE_PIXELS`` and
    the expected ``size`` (width, height) when given, so that an oversized image is never
    decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exn:
        raise ShardError("decompression_bomb", shard, key, f"{name}: {exn}") from exn
    except Exception as exn:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        raise ShardError(
            "corrupt_image", shard, key, f"{name}: cannot decode image: {exn}"
        ) from exn
    try:
        limits.check_pixels(image.width, image.height, name)
    except LayeredImageError as exn:
        raise ShardError("decompression_bomb", shard, key, str(exn)) from None
    if size is not None and image.size != size:
        raise ShardError(
            "bad_mask" if name.startswith("mask_") else "bad_image",
            shard,
            key,
            f"{name}: size {image.width}x{image.height} differs from the background's "
            f"{size[0]}x{size[1]}",
        )
    try:
        image.load()
    except Exception as exn:
        raise ShardError(
            "corrupt_image", shard, key, f"{name}: cannot decode image: {exn}"
        ) from exn
    return image


def decode_text(data: bytes, name: str, shard: str, key: str) -> str:
    """Decode strict UTF-8; errors name the shard, key and member."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exn:
        raise ShardError("bad_text", shard, key, f"{name}: not valid UTF-8 ({exn})") from exn


def decode_json(data: bytes, name: str, shard: str, key: str) -> dict[str, Any]:
    """Decode a UTF-8 JSON object of at most ``limits.MAX_JSON_BYTES``; errors name the
    shard, key and member."""
    text = decode_text(data, name, shard, key)
    try:
        value = limits.parse_json(text, name)
    except LayeredImageError as exn:
        raise ShardError("bad_text", shard, key, str(exn)) from None
    if not isinstance(value, dict):
        raise ShardError("bad_text", shard, key, f"{name}: expected a JSON object")
    return value


def check_text(text: Any, name: str, shard: str, key: str) -> str:
    """A string of at most ``limits.MAX_TEXT_CHARS``; errors name the shard, key and field."""
    if not isinstance(text, str):
        raise ShardError("invalid_sample", shard, key, f"{name} must be a string")
    if len(text) > limits.MAX_TEXT_CHARS:
        raise ShardError(
            "invalid_sample",
            shard,
            key,
            f"{name}: {len(text)} characters exceed layergen.limits.MAX_TEXT_CHARS = "
            f"{limits.MAX_TEXT_CHARS}",
        )
    return text


def _rgb(
    sample: dict[str, Any], name: str, shard: str, key: str, size: tuple[int, int] | None = None
) -> np.ndarray:
    """An RGB member, of ``size`` (width, height) when given."""
    image = open_image(sample[name], name, shard, key, size)
    if image.mode != "RGB":
        raise ShardError("bad_image", shard, key, f"{name}: expected mode RGB, got {image.mode}")
    return np.asarray(image)


def _foreground(
    sample: dict[str, Any], i: int, shard: str, key: str, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """``fg_{i}.png`` as ``(H, W, 3)`` RGB and, for an RGBA member, its ``(H, W)`` alpha."""
    name = f"fg_{i}.png"
    image = open_image(sample[name], name, shard, key, size)
    if image.mode == "RGBA":
        array = np.asarray(image)
        return array[..., :3], array[..., 3]
    if image.mode != "RGB":
        raise ShardError(
            "bad_image", shard, key, f"{name}: expected mode RGB or RGBA, got {image.mode}"
        )
    return np.asarray(image), None


def _visible_masks(
    masks: list[torch.Tensor | None], alphas: list[np.ndarray | None]
) -> torch.Tensor:
    """``(K, 1, H, W)`` visible masks: the mask files, and for layers without one their
    alpha times what the layers above leave uncovered (see the module docstring)."""
    out: list[torch.Tensor] = list(masks)  # type: ignore[arg-type]
    covered = None
    for i in reversed(range(len(out))):
        if out[i] is None:
            alpha = uint8_to_unit(alphas[i])
            out[i] = alpha if covered is None else alpha * (1.0 - covered).clamp_min(0.0)
        covered = out[i] if covered is None else covered + out[i]
    return torch.stack(out)[:, None]


def _mask(
    sample: dict[str, Any], name: str, bits: int, shard: str, key: str, size: tuple[int, int]
) -> np.ndarray:
    image = open_image(sample[name], name, shard, key, size)
    expected = ("L",) if bits == 8 else ("I;16", "I")
    if image.mode not in expected:
        raise ShardError(
            "bad_mask",
            shard,
            key,
            f"{name}: expected a {bits}-bit mask (mode {' or '.join(expected)}), got {image.mode}",
        )
    array = np.asarray(image)
    return array if bits == 8 else array.astype(np.uint16)


def decode_sample(
    sample: dict[str, Any],
    shard: str = "",
    mask_sum_tolerance: float = 1e-3,
    max_foregrounds: int | None = None,
) -> LayeredImage:
    """Decode webdataset members (see the module docstring) into a validated ``LayeredImage``.

    Args:
        sample: ``{"__key__", "background.png", "fg_{i}.png", "mask_{i}.png", "json", ...}``
            and optionally ``"image.png"``.
        shard: shard URL for messages (default: ``sample["__url__"]``).
        mask_sum_tolerance: accepted excess of the mask sum over 1 beyond quantisation.
        max_foregrounds: a larger ``K`` is an error (``"too_many_layers"``), raised before
            any member is looked at (default ``layergen.limits.MAX_FOREGROUNDS``).

    Returns:
        A ``LayeredImage`` (RGB in [-1, 1], masks in [0, 1]) whose metadata holds the JSON's
        metadata plus ``source``, ``scores``, ``depth``, ``key`` and ``shard``.

    Raises:
        ShardError: naming the shard and key.
    """
    key = str(sample.get("__key__", ""))
    shard = shard or str(sample.get("__url__", ""))
    if "json" not in sample:
        raise ShardError("missing_member", shard, key, "missing member json")
    record = decode_json(sample["json"], "json", shard, key)
    k, bits = record.get("K"), record.get("mask_bits", 8)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ShardError("invalid_sample", shard, key, f"json: K must be an int >= 1, got {k!r}")
    limit = limits.MAX_FOREGROUNDS if max_foregrounds is None else max_foregrounds
    if k > limit:
        raise ShardError(
            "too_many_layers",
            shard,
            key,
            f"{k} foregrounds exceed max_foregrounds = {limit} (json K)",
        )
    if bits not in (8, 16):
        raise ShardError(
            "invalid_sample", shard, key, f"json: mask_bits must be 8 or 16, got {bits!r}"
        )
    needed = ["background.png"] + [f"fg_{i}.png" for i in range(k)]
    missing = [name for name in needed if name not in sample]
    if missing:
        raise ShardError("missing_member", shard, key, f"missing member(s) {', '.join(missing)}")
    prompt = check_text(record.get("prompt", ""), "json: prompt", shard, key)
    layer_prompts = record.get("layer_prompts")
    if not (isinstance(layer_prompts, list) and len(layer_prompts) == k + 1):
        raise ShardError(
            "invalid_sample", shard, key, f"json: layer_prompts must be K + 1 = {k + 1} strings"
        )
    for i, text in enumerate(layer_prompts):
        check_text(text, f"json: layer_prompts[{i}]", shard, key)
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ShardError("invalid_sample", shard, key, "json: metadata must be an object")

    background = _rgb(sample, "background.png", shard, key)
    height, width = background.shape[:2]
    try:
        limits.check_pixels(width, height, "background.png", layers=k + 1)
    except LayeredImageError as exn:
        raise ShardError("too_many_layers", shard, key, str(exn)) from None
    foregrounds, masks, alphas = [], [], []
    for i in range(k):
        rgb, alpha = _foreground(sample, i, shard, key, (width, height))
        foregrounds.append(rgb)
        if f"mask_{i}.png" in sample:  # the mask file wins over an alpha channel
            mask = _mask(sample, f"mask_{i}.png", bits, shard, key, (width, height))
            masks.append(uint8_to_unit(mask))
            alphas.append(None)
        elif alpha is not None:
            masks.append(None)
            alphas.append(alpha)
        else:
            raise ShardError(
                "missing_member",
                shard,
                key,
                f"missing member(s) mask_{i}.png (fg_{i}.png is RGB, without an alpha)",
            )
    image = None
    if "image.png" in sample:
        image = _rgb(sample, "image.png", shard, key, (width, height))

    metadata = dict(metadata)
    metadata.update(
        source=record.get("source", ""),
        scores=record.get("scores", {}),
        depth=record.get("depth", list(range(1, k + 1))),
        key=key,
        shard=shard,
    )
    # Decoded PNG values are finite and in range by construction; what remains to check is
    # that the visible masks sum to <= 1 (up to quantisation).
    mask_tensor = _visible_masks(masks, alphas)  # (K, 1, H, W)
    total = float(mask_tensor.sum(0).max())
    if total > 1.0 + mask_sum_tolerance + k * 0.5 / (2**bits - 1):
        raise ShardError(
            "invalid_sample",
            shard,
            key,
            f"masks: the sum of the foreground masks must be <= 1, got up to {total:.4g}",
        )
    layered = LayeredImage(
        background=from_unit(hwc_to_chw(uint8_to_unit(background))),
        foregrounds=from_unit(uint8_to_unit(np.stack(foregrounds)).permute(0, 3, 1, 2)),
        masks=normalize_masks(mask_tensor) if total > 1.0 else mask_tensor,
        prompt=prompt,
        layer_prompts=layer_prompts,
        metadata=metadata,
        image=from_unit(hwc_to_chw(uint8_to_unit(image))) if image is not None else None,
    )
    return layered
