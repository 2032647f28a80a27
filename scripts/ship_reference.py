"""Ship a trained demo pipeline as the project's reference weights, with its figures.

    python scripts/ship_reference.py --run demo_runs/reference/pretrained --out weights/demo-reference \
        --steps-trained 5000 --config configs/demo/reference.yaml

Copies the exported pipeline (safetensors only), benchmarks it twice with
``python -m layergen.benchmark``'s code (DDIM and guidance from the pipeline's recipe):

- the headline figures on ``--num-samples`` held-out scenes (``benchmark.json``), written
  into the model card (``README.md``);
- the autoencoder's reconstruction figures (``autoencoder.json``);
- a small fixed set (``--check-samples`` scenes, ``check.json``) that
  ``tests/test_reference_weights.py`` re-runs to prove that the shipped files still reach
  the figures written next to them.

``reference.json`` records how the weights were made: the training config, seed, steps,
batch and the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from layergen.benchmark.cli import build_parser as benchmark_parser
from layergen.benchmark.cli import run_benchmark
from layergen.pipelines import load_pipeline
from layergen.pipelines.saving import write_model_card

WEIGHT_SUFFIXES = (".safetensors", ".json", ".txt", ".py")


def benchmark(model: Path, num_samples: int, seed: int = 0) -> dict:
    """The synthetic benchmark of ``model`` on ``num_samples`` held-out scenes."""
    args = benchmark_parser().parse_args(
        ["--model", str(model), "--num-samples", str(num_samples), "--seed", str(seed)]
    )
    return run_benchmark(args)


def copy_pipeline(run: Path, out: Path) -> None:
    """Copy the weights, configs, tokenizer files and loader module of a saved pipeline.

    Configs lose ``_name_or_path``: diffusers records where a component was loaded from,
    a path of the machine that trained it, which has no place in shipped files.
    """
    if out.exists():
        shutil.rmtree(out)
    for path in sorted(run.rglob("*")):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            target = out / path.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            if path.suffix == ".json":
                config = json.loads(target.read_text())
                if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
                    target.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="exported pipeline directory")
    parser.add_argument("--out", type=Path, required=True, help="where to ship it")
    parser.add_argument("--config", required=True, help="training config that made it")
    parser.add_argument("--steps-trained", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-scenes", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--check-samples", type=int, default=16)
    parser.add_argument("--description", default="The layergen demo model trained for longer",
                        help="what the model is: the model card's first words")
    args = parser.parse_args(argv)

    copy_pipeline(args.run, args.out)
    headline = benchmark(args.out, args.num_samples)
    check = benchmark(args.out, args.check_samples)
    autoencoder = benchmark(args.out / "autoencoder", args.num_samples)
    for name, result in (("benchmark", headline), ("check", check), ("autoencoder", autoencoder)):
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    setting = headline["setting"]
    record = {
        "config": args.config,
        "seed": args.seed,
        "steps": args.steps_trained,
        "batch_size": args.batch_size,
        "train_scenes": args.train_scenes,
        "benchmark": setting,
        "figures": headline["summary"]["all"],
        "autoencoder_figures": autoencoder["summary"]["all"],
    }
    (args.out / "reference.json").write_text(json.dumps(record, indent=2) + "\n")
    description = (
        f"{args.description}: `{args.config}`, seed {args.seed}, "
        f"{args.steps_trained} optimiser steps of batch {args.batch_size} on "
        f"{args.train_scenes} cached synthetic scenes (32 px, 1-2 foregrounds). "
        "Made with `scripts/ship_reference.py`; `reference.json` has the record."
    )
    source = (
        f"`python -m layergen.benchmark --model {args.out} --num-samples {args.num_samples}` "
        f"({setting['num_samples']} held-out scenes, DDIM {setting['steps']}, guidance "
        f"{setting['guidance']})"
    )
    write_model_card(load_pipeline(str(args.out)), args.out,
                     {"description": description, "figures": headline["summary"],
                      "figures_source": source})
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
