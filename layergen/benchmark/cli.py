"""``python -m layergen.benchmark``: run the synthetic ground-truth benchmark, print one table.

    python -m layergen.benchmark --model DIR            # pipeline dir, .ckpt or autoencoder dir
    python -m layergen.benchmark --model ground-truth   # the oracle row (scores the scenes)
    python -m layergen.benchmark --train-only           # train and cache the probe and segmenter

The probe and segmenter are trained on the first use for a given resolution and number of
foregrounds and cached (``--cache-dir``, default ``~/.cache/layergen/benchmark``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from layergen.benchmark.probe import (
    DEFAULT_CACHE_DIR,
    load_or_train_probe,
    probe_accuracy,
    probe_data,
)
from layergen.benchmark.segmenter import load_or_train_segmenter, segmenter_data, segmenter_iou
from layergen.benchmark.synthetic import (
    AUTOENCODER_COLUMNS,
    GENERATOR_COLUMNS,
    autoencoder_metrics,
    generate_for_scenes,
    score_generated,
)
from layergen.data.shapes import ShapeScenes
from layergen.metrics.breakdown import markdown_table

logger = logging.getLogger(__name__)
GROUND_TRUTH = "ground-truth"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m layergen.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="pipeline directory, diffusion .ckpt, autoencoder "
                        f"directory, or '{GROUND_TRUTH}'")
    parser.add_argument("--autoencoder", help="autoencoder directory or .ckpt (with a diffusion .ckpt)")
    parser.add_argument("--size", type=int, default=None, help="scene side (default: the model's, else 32)")
    parser.add_argument("--min-foregrounds", type=int, default=1)
    parser.add_argument("--max-foregrounds", type=int, default=None,
                        help="default: the model's fixed K, else 2")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (generators; default: the pipeline's recipe)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="guidance scale (generators; default: the pipeline's recipe)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--retrain", action="store_true", help="retrain the probe and segmenter")
    parser.add_argument("--train-only", action="store_true",
                        help="train/cache the probe and segmenter and report their held-out scores")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def _model_kind(model: str) -> str:
    path = Path(model)
    if model == GROUND_TRUTH:
        return GROUND_TRUTH
    if model.endswith(".ckpt") or (path / "model_index.json").is_file():
        return "generator"
    if (path / "config.json").is_file():
        return "autoencoder"
    raise FileNotFoundError(f"--model {model}: neither a pipeline directory (model_index.json), "
                            "a .ckpt, nor an autoencoder directory (config.json)")


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; returns ``{"kind", "summary", ...}``."""
    kind = _model_kind(args.model)
    model: Any = None
    size, max_fg, min_fg = args.size, args.max_foregrounds, args.min_foregrounds
    if kind == "autoencoder":
        from layergen.models import load_autoencoder

        model = load_autoencoder(args.model)
        fixed = model.fixed_num_layers
        max_fg = max_fg or (fixed - 1 if fixed else 2)
    elif kind == "generator":
        from layergen.pipelines import load_pipeline

        model = load_pipeline(args.model, autoencoder=args.autoencoder)
        model.set_progress_bar_config(disable=True)
        size = size or model.default_size
        if model.fixed_num_layers:
            max_fg = min_fg = model.fixed_num_layers - 1
    size, max_fg = size or 32, max_fg or 2
    min_fg = min(min_fg, max_fg)
    scenes = ShapeScenes(size=size, min_foregrounds=min_fg, max_foregrounds=max_fg,
                         seed=args.seed, split="test", length=args.num_samples)
    references = [scenes[i] for i in range(len(scenes))]
    setting = {"size": size, "min_foregrounds": min_fg, "max_foregrounds": max_fg,
               "num_samples": args.num_samples}
    if kind == "autoencoder":
        summary = autoencoder_metrics(model, references, args.batch_size)
        return {"kind": kind, "setting": setting, "columns": list(AUTOENCODER_COLUMNS), "summary": summary}
    probe = load_or_train_probe(size, max(max_fg, 2), args.seed, args.cache_dir, args.retrain)
    segmenter = load_or_train_segmenter(size, max(max_fg, 2), args.seed, args.cache_dir, args.retrain)
    consistency, composite_only = None, False
    if kind == GROUND_TRUTH:
        generated = references
    else:
        recipe = model.resolve_recipe(args.steps, args.guidance)
        steps, guidance = recipe["num_inference_steps"], recipe["guidance_scale"]
        generated, consistency = generate_for_scenes(model, references, steps, guidance,
                                                     args.seed, args.batch_size)
        setting.update(steps=steps, guidance=guidance)
        composite_only = model.autoencoder.composite_only
    summary = score_generated(generated, references, probe, segmenter, consistency, composite_only)
    return {"kind": kind, "setting": setting, "columns": list(GENERATOR_COLUMNS), "summary": summary}


def train_only(args: argparse.Namespace) -> str:
    """Train (or load) the probe and segmenter and report held-out accuracy / IoU."""
    size, max_fg = args.size or 32, args.max_foregrounds or 2
    probe = load_or_train_probe(size, max_fg, args.seed, args.cache_dir, args.retrain)
    segmenter = load_or_train_segmenter(size, max_fg, args.seed, args.cache_dir, args.retrain)
    held_out = ShapeScenes(size=size, min_foregrounds=1, max_foregrounds=max_fg, seed=args.seed,
                           split="val", length=args.num_samples)
    scores = probe_accuracy(probe, probe_data(held_out, size))
    scores["segmenter_iou"] = segmenter_iou(segmenter, *segmenter_data(held_out))
    return markdown_table({"held-out": scores}, list(scores), row_label="split")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.train_only:
        print(train_only(args))
        return 0
    if not args.model:
        build_parser().error("--model is required (or --train-only)")
    result = run_benchmark(args)
    print(f"synthetic benchmark: {args.model} ({result['kind']}; {result['setting']})")
    print(markdown_table(result["summary"], result["columns"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
