"""The synthetic ground-truth benchmark: attribute probe, reference segmenter, metrics."""

from layergen.benchmark.probe import (
    ShapeProbe,
    load_or_train_probe,
    probe_accuracy,
    probe_data,
    train_probe,
)
from layergen.benchmark.segmenter import (
    ForegroundSegmenter,
    load_or_train_segmenter,
    segmenter_iou,
    train_segmenter,
)
from layergen.benchmark.synthetic import (
    autoencoder_metrics,
    generate_for_scenes,
    psnr,
    score_generated,
)

__all__ = [
    "ForegroundSegmenter",
    "ShapeProbe",
    "autoencoder_metrics",
    "generate_for_scenes",
    "load_or_train_probe",
    "load_or_train_segmenter",
    "probe_accuracy",
    "probe_data",
    "psnr",
    "score_generated",
    "segmenter_iou",
    "train_probe",
    "train_segmenter",
]
