"""Evaluate a layered generator: FID/KID, CLIP score and mask IoU, broken down by layer count.

    python evaluate.py --model DIR --data synthetic --num-samples 256 --out eval/run1 \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth --clip-model clip-vit-large-patch14
    python evaluate.py --ckpt diffusion.ckpt [--autoencoder AE_DIR_OR_CKPT] --data test_shards/ ...
    python evaluate.py --synthetic-benchmark --model DIR     # the ground-truth benchmark table

Re-running with the same --out resumes: samples already written are not generated again.
"""

from __future__ import annotations

import layergen.openmp  # noqa: F401  (first: OpenMP waiting set before torch loads)

# isort: split
import argparse
import sys

from layergen.console import configure_console
from layergen.metrics.clip_score import DEFAULT_CLIP_MODEL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="pipeline directory or hub id (LayeredDiffusionPipeline)")
    source.add_argument("--ckpt", help="LayeredDiffusionModule Lightning checkpoint")
    parser.add_argument("--autoencoder", help="with --ckpt: autoencoder directory or .ckpt "
                        "(default: the one recorded in the checkpoint)")
    parser.add_argument("--data", default="synthetic", help="'synthetic' or test shards (dir / pattern)")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: the pipeline's recipe)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: the pipeline's recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="eval", help="output directory (samples, reports)")
    parser.add_argument("--size", type=int, default=None, help="synthetic scene side (default: the model's)")
    parser.add_argument("--min-foregrounds", type=int, default=1)
    parser.add_argument("--max-foregrounds", type=int, default=3)
    parser.add_argument("--inception-weights", help="torch-fidelity Inception-v3 .pth for FID")
    parser.add_argument("--no-fid", action="store_true", help="skip FID/KID")
    parser.add_argument("--kid", action="store_true", help="also compute KID")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="CLIP hub id or local path")
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP scores")
    parser.add_argument("--saliency", default="contrast",
                        help="reference masks for IoU: 'contrast', 'segmenter', a model id/path, or 'none'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--synthetic-benchmark", action="store_true",
                        help="run `python -m layergen.benchmark` on --model / --ckpt instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console()
    if not (args.model or args.ckpt):
        build_parser().error("one of --model or --ckpt is required")
    if args.synthetic_benchmark:
        from layergen.benchmark.cli import main as benchmark_main

        forwarded = ["--model", args.model or args.ckpt, "--num-samples", str(args.num_samples),
                     "--seed", str(args.seed)]
        for flag, value in (("--steps", args.steps), ("--guidance", args.guidance)):
            if value is not None:
                forwarded += [flag, str(value)]
        if args.autoencoder:
            forwarded += ["--autoencoder", args.autoencoder]
        return benchmark_main(forwarded)

    from layergen.apps.evaluation import evaluate_model
    from layergen.metrics import MissingWeightsError

    try:
        result = evaluate_model(args)
    except MissingWeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result["paths"]["markdown"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
