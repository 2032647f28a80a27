"""The synthetic ground-truth benchmark: autoencoder and generator metrics on shape scenes.

Held-out synthetic scenes (``ShapeScenes(split="test")``) come with exact layers, masks and
attributes, so layered models can be scored without human labels or downloads:

* an **autoencoder** (Text2Layer V-E) reconstructs each scene: composite PSNR (of the decoded
  layers, and of the auxiliary composite head when it has one), background and foreground
  PSNR, and mask IoU (at 0.5) and MAE of each foreground mask;
* a **generator** is prompted with each scene's prompt and layer prompts: layer-prompt
  adherence (the attribute probe reads shape, colour and size off each generated layer),
  background adherence (family and colours), mask IoU against the segmenter's mask of the
  generated composite (Text2Layer's IoU against ICON), composite consistency (joint
  autoencoders: the decoded composite vs the composite of the decoded layers, PSNR) and a
  Fréchet distance in the probe's feature space (foreground layers and composites).

A composite-only model (the text-to-image baseline, ``CompositeAutoencoder``) is scored on
its composite alone: composite PSNR, and the composite Fréchet distance; its layer metrics
are left out (reported as n/a).

Every metric is broken down by layer count. PSNR is computed on [0, 1] images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from layergen.benchmark.probe import ShapeProbe, background_input, foreground_input
from layergen.benchmark.segmenter import ForegroundSegmenter
from layergen.layers import LayeredBatch, LayeredImage, composite_layers, to_unit
from layergen.metrics.breakdown import Breakdown
from layergen.metrics.fid import fidelity_from_features
from layergen.metrics.mask_iou import foreground_union, mask_iou
from layergen.models.autoencoder_interface import LayeredAutoencoderInterface

logger = logging.getLogger(__name__)

MAX_PSNR = 100.0
AUTOENCODER_COLUMNS = (
    "num_samples", "psnr_composite", "psnr_composite_head", "psnr_background",
    "psnr_foreground", "mask_iou", "mask_mae",
)
GENERATOR_COLUMNS = (
    "num_samples", "layer_adherence", "shape_acc", "color_acc", "size_acc", "bg_family_acc",
    "bg_color_acc", "mask_iou_segmenter", "consistency_psnr", "fd_layers", "fd_composite",
)


def psnr(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """PSNR in dB of ``(N, C, H, W)`` images in [-1, 1], compared in [0, 1].

    Args:
        weight: optional ``(N, 1, H, W)`` pixel weights (a mask): the MSE is their weighted
            mean.

    Returns:
        ``(N,)``, capped at 100 dB.
    """
    err = (to_unit(pred.float()) - to_unit(target.float())).pow(2)
    if weight is None:
        mse = err.flatten(1).mean(1)
    else:
        weight = weight.float().expand_as(err)
        mse = (err * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1e-8)
    return (10.0 * torch.log10(1.0 / mse.clamp(min=10 ** (-MAX_PSNR / 10)))).clamp(max=MAX_PSNR)


# ----------------------------------------------------------------------------------------
# Autoencoders
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def autoencoder_metrics(
    autoencoder: LayeredAutoencoderInterface, scenes: Sequence[LayeredImage], batch_size: int = 16
) -> dict[str, dict[str, float]]:
    """Reconstruction metrics of a layered autoencoder on ground-truth scenes.

    Scenes are collated (padded) to the autoencoder's fixed L when it has one, encoded
    (posterior mode) and decoded; only valid layers are scored. A composite-only
    autoencoder gets ``psnr_composite`` alone.
    """
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    fixed, composite_only = autoencoder.fixed_num_layers, autoencoder.composite_only
    breakdown = Breakdown()
    for start in range(0, len(scenes), batch_size):
        chunk = list(scenes[start:start + batch_size])
        batch = LayeredBatch.collate(chunk, num_layers=fixed).to(device)
        num_layers = batch.images.shape[1]
        latents = autoencoder.encode(batch.images, batch.masks, batch.layer_valid).latent_dist.mode()
        out = autoencoder.decode(latents, num_layers=num_layers)
        images, masks = out.images.float().clamp(-1, 1).cpu(), out.masks.float().cpu()
        target = batch.to("cpu")
        # padded layers (fewer foregrounds than L) are not part of the scene
        masks = masks * target.layer_valid[:, :, None, None, None].to(masks.dtype)
        composite = composite_layers(images, masks[:, 1:])  # (B, 3, H, W)
        for b, sample in enumerate(chunk):
            n, k = sample.num_layers, sample.num_foregrounds
            breakdown.count(n)
            truth = sample.composite()[None]
            breakdown.add("psnr_composite", psnr(composite[b:b + 1], truth), n)
            if composite_only:
                continue
            if out.composite is not None and autoencoder.has_composite_head:
                head = out.composite[b:b + 1].float().clamp(-1, 1).cpu()
                breakdown.add("psnr_composite_head", psnr(head, truth), n)
            breakdown.add("psnr_background", psnr(images[b, :1], target.images[b, :1]), n)
            gt_masks = target.masks[b, 1:k + 1]
            breakdown.add("psnr_foreground", psnr(images[b, 1:k + 1], target.images[b, 1:k + 1], gt_masks), n)
            breakdown.add("mask_iou", mask_iou(masks[b, 1:k + 1], gt_masks), n)
            breakdown.add("mask_mae", (masks[b, 1:k + 1] - gt_masks).abs().flatten(1).mean(1), n)
    return breakdown.summary()


# ----------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------


def _probe_features(probe: ShapeProbe, inputs: Tensor) -> Tensor:
    with torch.no_grad():
        return probe(inputs.to(probe.device)).features.double().cpu()


def _frechet_by_group(
    probe: ShapeProbe, groups: list[str], sets: dict[str, tuple[list[Tensor], list[Tensor]]]
) -> dict[str, dict[str, float]]:
    """Fréchet distance in the probe's feature space, overall and per layer count.

    ``sets`` maps a metric name to per-sample generated and reference probe inputs.
    """
    result: dict[str, dict[str, float]] = {}
    for name, (gen, ref) in sets.items():
        gen_f = [_probe_features(probe, x) for x in gen]
        ref_f = [_probe_features(probe, x) for x in ref]
        for group in ["all", *sorted(set(groups))]:
            keep = [i for i, g in enumerate(groups) if group in ("all", g)]
            g = torch.cat([gen_f[i] for i in keep])
            r = torch.cat([ref_f[i] for i in keep])
            if min(len(g), len(r)) >= 2:
                result.setdefault(group, {})[name] = fidelity_from_features(r, g)["fid"]
    return result


def score_generated(
    generated: Sequence[LayeredImage],
    references: Sequence[LayeredImage],
    probe: ShapeProbe,
    segmenter: ForegroundSegmenter,
    consistency: Sequence[float] | None = None,
    composite_only: bool = False,
) -> dict[str, dict[str, float]]:
    """Score generated layered images against the scenes whose prompts produced them.

    Args:
        generated: one ``LayeredImage`` per reference, with the same number of layers.
        references: the ground-truth scenes (their metadata holds the attributes).
        probe: the attribute probe.
        segmenter: the reference-mask segmenter.
        consistency: optional per-sample composite-consistency PSNR (joint autoencoders).
        composite_only: score the composites alone (``fd_composite``), for a text-to-image
            model whose layers are only its composite; the layer metrics are left out.
    """
    if len(generated) != len(references):
        raise ValueError(f"generated: expected {len(references)} images, got {len(generated)}")
    size = probe.config.image_size
    breakdown = Breakdown()
    gen_layers, ref_layers, gen_comp, ref_comp, groups = [], [], [], [], []
    for index, (image, ref) in enumerate(zip(generated, references)):
        n = ref.num_layers
        if image.num_layers != n:
            raise ValueError(f"generated[{index}]: {image.num_layers} layers, the prompt has {n}")
        breakdown.count(n)
        groups.append(str(n))
        composite = image.composite()[None]
        gen_comp.append(background_input(composite, size))
        ref_comp.append(background_input(ref.composite()[None], size))
        if composite_only:
            continue
        truth = ref.metadata["foregrounds"]
        predicted = probe.predict_foregrounds(image)
        for attribute in ("shape", "color", "size"):
            hits = [float(p[attribute] == t[attribute]) for p, t in zip(predicted, truth)]
            breakdown.add(f"{attribute}_acc", hits, n)
        breakdown.add("layer_adherence", [float(all(p[a] == t[a] for a in ("shape", "color", "size")))
                                          for p, t in zip(predicted, truth)], n)
        bg_truth = ref.metadata["background"]
        bg_pred = probe.predict_backgrounds(image.background[None], [len(bg_truth["colors"])])[0]
        breakdown.add("bg_family_acc", float(bg_pred["family"] == bg_truth["family"]), n)
        breakdown.add("bg_color_acc", float(bg_pred["colors"] == sorted(bg_truth["colors"])), n)
        breakdown.add("mask_iou_segmenter", mask_iou(foreground_union(image)[None],
                                                     segmenter.saliency(composite)), n)
        if consistency is not None:
            breakdown.add("consistency_psnr", consistency[index], n)
        gen_layers.append(foreground_input(image.foregrounds, image.masks, size))
        ref_layers.append(foreground_input(ref.foregrounds, ref.masks, size))
    sets = {"fd_composite": (gen_comp, ref_comp)}
    if not composite_only:
        sets["fd_layers"] = (gen_layers, ref_layers)
    fd = _frechet_by_group(probe, groups, sets)
    breakdown.merge(fd)
    return breakdown.summary()


@torch.no_grad()
def generate_for_scenes(
    pipe, scenes: Sequence[LayeredImage], num_inference_steps: int | None = None,
    guidance_scale: float | None = None, seed: int = 0, batch_size: int = 8,
) -> tuple[list[LayeredImage], list[float] | None]:
    """Generate one layered image per scene from its prompt and layer prompts.

    Unset ``num_inference_steps`` / ``guidance_scale``: the pipeline's recipe.

    Sample ``i`` uses the generator seeded ``seed + i`` so results do not depend on the
    batch size. For autoencoders with a composite head (joint), also returns the per-sample
    PSNR between the decoded composite and the composite of the decoded layers.
    """
    autoencoder = pipe.autoencoder
    composite_head = autoencoder.has_composite_head
    images: list[LayeredImage] = []
    consistency: list[float] | None = [] if composite_head else None
    for start in range(0, len(scenes), batch_size):
        chunk = list(scenes[start:start + batch_size])
        prompts = [s.prompt for s in chunk]
        layer_prompts = [list(s.layer_prompts) for s in chunk]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        latents = pipe(prompt=prompts, layer_prompts=layer_prompts, num_inference_steps=num_inference_steps,
                       guidance_scale=guidance_scale, generator=generators, output_type="latent").latents
        decoded = pipe.decode_latents(latents, prompts, layer_prompts)
        images += decoded
        if consistency is not None:
            z = latents / autoencoder.config.scaling_factor
            for b, image in enumerate(decoded):
                latent_layers = autoencoder.latent_num_layers(image.num_layers)
                head = autoencoder.decode(z[b:b + 1, :latent_layers], num_layers=image.num_layers).composite
                consistency.append(float(psnr(head.float().clamp(-1, 1).cpu(), image.composite()[None])))
    return images, consistency
