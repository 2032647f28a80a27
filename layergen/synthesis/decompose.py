"""Image to layers: decompose photographs into layered PSD / ORA / PNG files (LayerDiff
sec. 3.3 pipeline applied to one image at a time; ``decompose.py`` is the entry point).

The stage chain is :meth:`~layergen.synthesis.layerdiff.LayerDiffChain.classical` by
default (no weights, any CPU); :func:`build_decompose_chain` swaps in real models by hub id
or local path, or takes the ``model.chain`` of a synthesis YAML. The layer prompts (the
caption's noun phrases, or colour names when there is no caption) name the layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from layergen import limits
from layergen.export import save_layered
from layergen.layers import LayeredImage, from_unit, hwc_to_chw, uint8_to_unit
from layergen.synthesis.backends.captioning import TransformersCaptioning
from layergen.synthesis.backends.depth import TransformersDepth
from layergen.synthesis.backends.detection import TransformersDetection
from layergen.synthesis.backends.inpainting import DiffusersInpainting
from layergen.synthesis.backends.segmentation import SamSegmentation
from layergen.synthesis.base import SynthesisChain, SynthesisRecord
from layergen.synthesis.layerdiff import LayerDiffChain

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def build_decompose_chain(
    config: str | Path | None = None,
    max_foregrounds: int = 4,
    caption_model: str | None = None,
    detection_model: str | None = None,
    sam_model: str | None = None,
    depth_model: str | None = None,
    inpainting_model: str | None = None,
    max_inpaint_saliency: float = 1.0,
) -> SynthesisChain:
    """The chain used by ``decompose.py``.

    Args:
        config: a synthesis YAML (``configs/synth/layerdiff.yaml``): its ``model.chain`` is
            instantiated and the other arguments are ignored.
        max_foregrounds: K at most.
        caption_model: image-to-text model for the global prompt (else the given caption).
        detection_model: open-vocabulary detector (else salient components).
        sam_model: SAM (else GrabCut).
        depth_model: inverse-depth model such as MiDaS / DPT (else vertical position).
        inpainting_model: diffusers inpainting pipeline (else OpenCV).
        max_inpaint_saliency: saliency-check threshold; 1 keeps every background (a user
            decomposing one photograph wants layers even when the check would fail).
    """
    if config is not None:
        return chain_from_config(config)
    backends: dict[str, Any] = {}
    if caption_model is not None:
        backends["captioning"] = TransformersCaptioning(caption_model, keep_source=True)
    if detection_model is not None:
        backends["detection"] = TransformersDetection(detection_model)
    if sam_model is not None:
        backends["segmentation"] = SamSegmentation(sam_model)
    if depth_model is not None:
        backends["depth"] = TransformersDepth(depth_model)
    if inpainting_model is not None:
        backends["inpainting"] = DiffusersInpainting(inpainting_model)
    return LayerDiffChain.classical(
        max_foregrounds=max_foregrounds, max_inpaint_saliency=max_inpaint_saliency, **backends
    )


def chain_from_config(config: str | Path) -> SynthesisChain:
    """Instantiate ``model.chain`` of a synthesis YAML (``class_path`` / ``init_args``).

    Raises:
        ValueError: naming the file when it has no ``model.chain``.
    """
    from jsonargparse import ArgumentParser

    with open(config) as handle:
        data = yaml.safe_load(handle) or {}
    spec = (data.get("model") or {}).get("chain")
    if spec is None:
        raise ValueError(f"{config}: no model.chain to build the stage chain from")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(SynthesisChain, "chain")
    namespace = parser.parse_object({"chain": spec})
    return parser.instantiate_classes(namespace).chain


def load_image(path: str | Path, max_size: int | None = None) -> torch.Tensor:
    """Read an image file as ``(3, H, W)`` in [-1, 1], shrunk so its longer side <= ``max_size``.

    Raises:
        ValueError: naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as handle:  # reads the header only
            limits.check_pixels(handle.width, handle.height, "image")
            image = handle.convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from error
    if max_size is not None and max(image.size) > max_size:
        scale = max_size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    return from_unit(hwc_to_chw(uint8_to_unit(np.asarray(image))))


def decompose_image(chain: SynthesisChain, image: torch.Tensor, caption: str = "", key: str = "image") -> LayeredImage:
    """Run ``chain`` on one image and return its layered image (image to layers).

    Args:
        chain: e.g. :func:`build_decompose_chain`.
        image: ``(3, H, W)`` in [-1, 1].
        caption: the global prompt (its noun phrases name the layers).
        key: the sample key recorded in the metadata and named in errors.

    Raises:
        ValueError: naming ``key`` and the reason when a stage rejects the image.
    """
    (record,) = chain([SynthesisRecord(key=key, image=image, caption=caption)])
    if not record.kept:
        raise ValueError(f"{key}: no layers ({record.rejection})")
    layered = record.to_layered_image()
    layered.metadata["negative_prompt"] = record.extras.get("negative_prompt", "")
    return layered.validate()


def decompose_files(
    chain: SynthesisChain | Callable[[torch.Tensor, str], LayeredImage],
    inputs: Sequence[str | Path],
    outputs: Sequence[str | Path],
    captions: Sequence[str] | None = None,
    max_size: int | None = 1024,
) -> dict[str, int]:
    """Decompose image files into layered files (``.psd``, ``.ora`` or a PNG folder each).

    An image that cannot be read or that the chain rejects is logged and counted, and the
    others go on; the layer prompts name the layers of the written files.

    Args:
        chain: the stage chain, or a learned decomposer ``(image (3, H, W) in [-1, 1],
            caption) -> LayeredImage`` (:class:`~layergen.pipelines.decomposition.PipelineDecomposer`).
        inputs: image files.
        outputs: one output path per input; its suffix picks the format
            (:func:`layergen.export.save_layered`).
        captions: one global prompt per input (``""`` for none); a ``.txt`` file beside an
            image is used when ``None``.
        max_size: longest side the images are shrunk to before the analysis.

    Returns:
        ``{"written": n, "skipped": m}``.
    """
    if len(inputs) != len(outputs) or (captions is not None and len(captions) != len(inputs)):
        raise ValueError("inputs, outputs and captions must have the same length")
    counts = {"written": 0, "skipped": 0}
    for i, (source, target) in enumerate(zip(inputs, outputs)):
        source = Path(source)
        try:
            caption = captions[i] if captions is not None else _sidecar_caption(source)
            image = load_image(source, max_size)
            if isinstance(chain, SynthesisChain):
                layered = decompose_image(chain, image, caption, key=str(source))
            else:
                layered = chain(image, caption)
        except ValueError as error:
            logger.warning("skipped %s", error)
            counts["skipped"] += 1
            continue
        save_layered(layered, target, manifest={"source": str(source)})
        logger.info("%s -> %s: %s", source, target, ", ".join(layered.layer_prompts))
        counts["written"] += 1
    return counts


def _sidecar_caption(path: Path) -> str:
    """The caption in ``path`` with a ``.txt`` suffix, or ``""``.

    Raises:
        ValueError: naming the file when it is over ``layergen.limits.MAX_TEXT_CHARS``.
    """
    text = path.with_suffix(".txt")
    if not text.is_file():
        return ""
    with open(text, encoding="utf-8", errors="replace") as handle:
        caption = handle.read(limits.MAX_TEXT_CHARS + 1).strip()
    if len(caption) > limits.MAX_TEXT_CHARS:
        raise ValueError(
            f"{text}: caption over layergen.limits.MAX_TEXT_CHARS = {limits.MAX_TEXT_CHARS}"
        )
    return caption


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def plan_outputs(
    source: str | Path, out: str | Path | None, file_format: str = "psd"
) -> tuple[list[Path], list[Path]]:
    """Inputs and outputs for ``decompose.py``: one image or every image of a folder.

    Args:
        source: an image file or a folder of images.
        out: the output file (one image; its suffix picks the format) or folder (folder
            mode: ``<out>/<stem>.<format>``, or ``<out>/<stem>/`` for ``"png"``); ``None``
            writes beside the input.
        file_format: ``"psd"``, ``"ora"`` or ``"png"`` (a folder of layer PNGs).

    Raises:
        ValueError: for a missing input, an empty folder or an unknown format.
    """
    if file_format not in ("psd", "ora", "png"):
        raise ValueError(f"format: expected psd, ora or png, got {file_format!r}")
    source = Path(source)
    suffix = "" if file_format == "png" else f".{file_format}"
    if source.is_dir():
        inputs = list_images(source)
        if not inputs:
            raise ValueError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        folder = Path(out) if out is not None else source / "layers"
        return inputs, [folder / f"{p.stem}{suffix}" for p in inputs]
    if not source.is_file():
        raise ValueError(f"{source}: no such image file or folder")
    if out is None:
        out = source.with_name(f"{source.stem}_layers{suffix}")
    return [source], [Path(out)]
