"""Sampling time of the layered pipeline vs diffusers' StableDiffusionPipeline.

Same UNet2DConditionModel config, same scheduler (DDIM), same step count and guidance, latent
output (no decoding) so that the denoising loops are compared. The layered pipeline runs
with L = 1..4 per-layer latents (LayerDiff layout, goal <= 1.1 x L) and with the joint
Text2Layer latent (L' = 1, plain UNet, goal <= 1.1). Times are per image, in CPU seconds of
this process (one torch thread: robust on a shared machine) and wall seconds.

Usage::

    python bench/bench_pipeline.py --steps 20 --size 32 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from layergen.data.shapes import vocabulary
from layergen.models import JointAutoencoder, PerLayerAutoencoder
from layergen.models.layered_unet import LayeredUNet
from layergen.models.text_encoder import build_tiny_text_encoder, load_text_encoder
from layergen.pipelines import LayeredDiffusionPipeline

PROMPT = (
    "a large red star on the left and a small blue circle in the center on a green plain background"
)
FOREGROUNDS = ["a large red star", "a small blue circle", "a small green heart"]


def unet_config(latent_size: int, widths: tuple[int, ...]) -> dict:
    """The demo UNet (cross-attention at every level), latent channels 4, text width 32."""
    return {
        "sample_size": latent_size,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": widths,
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D",) * len(widths),
        "up_block_types": ("CrossAttnUpBlock2D",) * len(widths),
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` (cpu seconds, wall seconds) after one warm-up call."""
    fn()
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=32, help="image side (f = 4 latents)")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    latent = args.size // 4
    config = unet_config(latent, tuple(args.widths))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, text_encoder = load_text_encoder(build_tiny_text_encoder(tmp, vocabulary()))
    ae_args = dict(
        latent_channels=4, block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4
    )
    torch.manual_seed(0)
    base = UNet2DConditionModel(**config).eval()
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=4,
    )
    scheduler = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False
    )
    sd = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=base,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    layered = LayeredDiffusionPipeline(
        autoencoder=PerLayerAutoencoder(**ae_args).eval(),
        unet=LayeredUNet.from_unet(base, max_layers=4, prompt_enhancer_heads=4).eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
    )
    joint = LayeredDiffusionPipeline(
        autoencoder=JointAutoencoder(num_foregrounds=1, **ae_args).eval(),
        unet=LayeredUNet.from_unet(base, layer_blocks=False).eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
    )
    for pipe in (sd, layered, joint):
        pipe.set_progress_bar_config(disable=True)
    common = dict(
        num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="latent"
    )
    size = dict(height=args.size, width=args.size)

    def run_sd() -> object:
        return sd(PROMPT, generator=torch.Generator().manual_seed(0), **size, **common)

    sd_cpu, sd_wall = timed(run_sd, args.repeats)
    print(
        f"UNet widths {args.widths}, {args.size}x{args.size} images ({latent}x{latent} latents), "
        f"{args.steps} DDIM steps, guidance {args.guidance}, {args.threads} thread(s)"
    )
    print(f"StableDiffusionPipeline: {sd_cpu:.3f} cpu s ({sd_wall:.3f} wall s) per image")
    print(f"{'layout':<22}{'L':>3}{'cpu s':>9}{'wall s':>9}{'ratio':>8}{'ratio / L':>11}")

    def report(name: str, num_layers: int, pipe: LayeredDiffusionPipeline, layer_prompts) -> None:
        def run() -> object:
            return pipe(
                PROMPT,
                layer_prompts=layer_prompts,
                generator=torch.Generator().manual_seed(0),
                **size,
                **common,
            )

        cpu, wall = timed(run, args.repeats)
        ratio = cpu / sd_cpu
        print(
            f"{name:<22}{num_layers:>3}{cpu:>9.3f}{wall:>9.3f}{ratio:>8.2f}{ratio / num_layers:>11.2f}"
        )

    report("joint (Text2Layer)", 1, joint, None)
    for k in range(1, 4):
        report("per-layer (LayerDiff)", k + 1, layered, ["the background", *FOREGROUNDS[:k]])


if __name__ == "__main__":
    main()
