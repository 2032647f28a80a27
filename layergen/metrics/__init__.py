"""Evaluation metrics: FID/KID, CLIP score, mask IoU, breakdown by layer count."""

from layergen.metrics.breakdown import Breakdown, layer_group, markdown_table
from layergen.metrics.clip_score import DEFAULT_CLIP_MODEL, CLIPScorer, layer_views
from layergen.metrics.fid import (
    INCEPTION_WEIGHTS_URL,
    FidelityMetrics,
    InceptionFeatures,
    MissingWeightsError,
    PrecomputedFeatures,
    clean_resize,
    fidelity_from_features,
)
from layergen.metrics.mask_iou import (
    IOU_THRESHOLD,
    SalientMaskFn,
    foreground_union,
    layer_mask_ious,
    mask_iou,
)

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "INCEPTION_WEIGHTS_URL",
    "IOU_THRESHOLD",
    "Breakdown",
    "CLIPScorer",
    "FidelityMetrics",
    "InceptionFeatures",
    "MissingWeightsError",
    "PrecomputedFeatures",
    "SalientMaskFn",
    "clean_resize",
    "fidelity_from_features",
    "foreground_union",
    "layer_group",
    "layer_mask_ious",
    "layer_views",
    "markdown_table",
    "mask_iou",
]
