"""Evaluation throughput on CPU with tiny models (samples per second).

    python bench/bench_eval.py [--num-samples 32] [--steps 2] [--threads 1]

Times the three parts of ``evaluate.py`` / the synthetic benchmark separately: generation
with a tiny per-layer pipeline, the evaluation metrics (FID features from a small injected
extractor, mask IoU against the benchmark segmenter, reference IoU) and the synthetic
benchmark's scoring (probe + segmenter + Fréchet distances). Models are random: the
figures are speed, not quality.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from torch import nn

from layergen.apps.evaluation import EvaluationSettings, generate_missing, score
from layergen.benchmark import ForegroundSegmenter, ShapeProbe, score_generated
from layergen.data.shapes import ShapeScenes, vocabulary
from layergen.metrics import FidelityMetrics
from layergen.metrics.samples import SampleStore
from layergen.models import PerLayerAutoencoder
from layergen.models.layered_unet import LayeredUNet
from layergen.models.text_encoder import build_tiny_text_encoder, load_text_encoder
from layergen.pipelines import LayeredDiffusionPipeline


def tiny_pipeline(directory: Path) -> LayeredDiffusionPipeline:
    build_tiny_text_encoder(directory, vocabulary(), hidden_size=32, num_layers=1, max_length=32)
    tokenizer, text_encoder = load_text_encoder(str(directory))
    torch.manual_seed(0)
    autoencoder = PerLayerAutoencoder(latent_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
                                      norm_num_groups=8, mid_block_add_attention=False)
    unet = LayeredUNet(
        unet_config=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                         layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         attention_head_dim=4, norm_num_groups=8),
        layer_blocks=True, prompt_enhancer_heads=2, max_layers=4,
    )
    scheduler = DDIMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    pipe = LayeredDiffusionPipeline(autoencoder=autoencoder.eval(), unet=unet.eval(), text_encoder=text_encoder,
                                    tokenizer=tokenizer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class SmallFeatures(nn.Module):
    """A random conv feature extractor standing in for Inception (no weights offline)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, 2), nn.SiLU(), nn.Conv2d(32, 64, 3, 2), nn.SiLU())
        self.num_features = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean((2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, split="test", length=args.num_samples)
    refs = [scenes[i] for i in range(len(scenes))]
    with tempfile.TemporaryDirectory() as tmp:
        pipe = tiny_pipeline(Path(tmp) / "text")
        settings = EvaluationSettings(model="tiny", num_samples=args.num_samples, steps=args.steps,
                                      guidance=3.0, batch_size=args.batch_size, clip_model=None)
        start = time.perf_counter()
        generated = generate_missing(pipe, refs, SampleStore(Path(tmp) / "samples"), settings)
        t_gen = time.perf_counter() - start
    segmenter = ForegroundSegmenter().eval()
    start = time.perf_counter()
    score(generated, refs, FidelityMetrics(feature=SmallFeatures(), image_size=64), None, segmenter.saliency,
          args.batch_size)
    t_metrics = time.perf_counter() - start
    start = time.perf_counter()
    score_generated(generated, refs, ShapeProbe(image_size=32).eval(), segmenter)
    t_bench = time.perf_counter() - start
    n = len(refs)
    print(f"evaluation throughput, {n} samples of 32x32 with 1-2 foregrounds, {args.threads} thread(s):")
    print(f"  generation ({args.steps} DDIM steps, guidance 3, batch {args.batch_size}): {n / t_gen:8.2f} samples/s")
    print(f"  metrics (FID features, mask IoU vs segmenter and reference):       {n / t_metrics:8.2f} samples/s")
    print(f"  synthetic benchmark scoring (probe, segmenter, Frechet distances):  {n / t_bench:8.2f} samples/s")


if __name__ == "__main__":
    main()
