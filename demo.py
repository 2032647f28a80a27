"""The README demo: train a tiny layered text-to-image model on CPU and use it.

    python demo.py                      # ~25 min on 2 idle cores: outputs/demo/
    python demo.py --fast               # smoke test of every step (a few minutes)

Builds a tiny text encoder, trains the demo autoencoder and diffusion model on synthetic
scenes, generates layered images for held-out prompts, edits one (a replaced foreground and a
background regenerated behind fixed foregrounds), exports PSD, OpenRaster and PNGs, writes a
contact sheet, logs to TensorBoard, and prints where everything went.
"""

from __future__ import annotations

import layergen.openmp  # noqa: F401  (first: OpenMP waiting set before torch loads)

# isort: split
import argparse
import json
from pathlib import Path

from layergen.apps.demo import run_demo
from layergen.console import configure_console

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs" / "demo"
REFERENCE = ROOT / "weights" / "demo-reference"  # the shipped reference weights
FIGURES = {"psnr_composite": "autoencoder composite PSNR (dB)", "mask_iou": "autoencoder mask IoU",
           "shape_acc": "layer shape", "color_acc": "layer colour", "size_acc": "layer size",
           "bg_family_acc": "background family", "bg_color_acc": "background colours",
           "mask_iou_segmenter": "mask IoU vs segmenter"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="outputs/demo", help="output folder")
    parser.add_argument(
        "--fast", action="store_true", help="tiny training and sampling (smoke test)"
    )
    parser.add_argument(
        "--samples", type=int, default=8, help="held-out prompts to generate and export"
    )
    parser.add_argument(
        "--eval-samples", type=int, default=64, help="held-out prompts for the colour check"
    )
    parser.add_argument("--steps", type=int, default=50, help="DDIM sampling steps")
    parser.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--benchmark-samples", type=int, default=32,
        help="held-out scenes for the synthetic benchmark at the end (0: skip; --fast skips)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse models already trained in --out"
    )
    parser.add_argument("--ae-config", default=str(CONFIGS / "ae.yaml"))
    parser.add_argument("--ldm-config", default=str(CONFIGS / "ldm.yaml"))
    return parser.parse_args(argv)


def benchmark(model: Path, num_samples: int) -> dict[str, float]:
    """``python -m layergen.benchmark --model MODEL``'s overall figures."""
    from layergen.benchmark.cli import build_parser, run_benchmark

    args = build_parser().parse_args(["--model", str(model), "--num-samples", str(num_samples)])
    return run_benchmark(args)["summary"]["all"]


def print_benchmark(pipeline: Path, autoencoder: Path, num_samples: int) -> None:
    """This run's benchmark figures beside the shipped reference weights'."""
    print(f"\nsynthetic benchmark ({num_samples} held-out scenes; python -m layergen.benchmark):",
          flush=True)
    ours = {**benchmark(autoencoder, 64), **benchmark(pipeline, num_samples)}
    reference: dict[str, float] = {}
    for name in ("benchmark.json", "autoencoder.json"):  # written by scripts/ship_reference.py
        if (REFERENCE / name).is_file():
            reference.update(json.loads((REFERENCE / name).read_text())["summary"]["all"])
    print(f"  {'figure':32s} {'this run':>9s} {'reference':>10s}")
    for key, name in FIGURES.items():
        ref = f"{reference[key]:10.3f}" if key in reference else f"{'-':>10s}"
        print(f"  {name:32s} {ours[key]:9.3f} {ref}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_console(quiet=True)
    result = run_demo(
        args.out,
        args.ae_config,
        args.ldm_config,
        fast=args.fast,
        num_samples=args.samples,
        num_eval=args.eval_samples,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        reuse=args.reuse,
    )
    colour = result.colour
    print(
        f"\nlayergen demo done in {sum(result.seconds.values()) / 60:.1f} min "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result.seconds.items())
    )
    print(f"  pipeline (diffusers format): {result.pipeline}")
    print(f"  layered samples (PSD, ORA, PNG folders): {result.out / 'samples'}")
    print(f"  edits (replaced foreground, new background): {result.out / 'edits'}")
    print(f"  contact sheet: {result.contact_sheet}")
    print(f"  TensorBoard: tensorboard --logdir {result.out}")
    print(
        f"  layer-prompt colour accuracy: {colour.accuracy:.0%} ({colour.correct}/{colour.checked} "
        f"foregrounds; chance ~9%)"
    )
    print(
        f'  generate more: python generate.py --model {result.pipeline} "<prompt>" --layers auto '
        f"--steps {args.steps} --guidance {args.guidance} --out out.psd"
    )
    if args.benchmark_samples and not args.fast:
        print_benchmark(result.pipeline, result.out / "ae" / "pretrained", args.benchmark_samples)


if __name__ == "__main__":
    main()
