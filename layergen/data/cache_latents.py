"""Encode layered shards (or synthetic scenes) once into latent shards for diffusion training.

``python -m layergen.data.cache_latents --shards "data/train-{000000..000009}.tar"
--out data/latents --autoencoder outputs/autoencoder --text-encoder outputs/text_encoder``

``python -m layergen.data.cache_latents --scenes 4096 --size 32 --max-foregrounds 2
--out demo_runs/latents/train --autoencoder demo_runs/ae/pretrained --text-encoder
demo_runs/text_encoder`` (synthetic scenes of a split, as ``LayeredDataModule`` draws them)

Re-running a killed command with the same arguments encodes only the shards not yet written.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from layergen.data.latents import cache_latents


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and call :func:`layergen.data.latents.cache_latents`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", help="layered shard URLs (brace pattern)")
    source.add_argument("--scenes", type=int, help="this many synthetic scenes instead")
    parser.add_argument("--size", type=int, default=32, help="scene side (--scenes)")
    parser.add_argument("--min-foregrounds", type=int, default=1, help="(--scenes)")
    parser.add_argument("--max-foregrounds", type=int, default=2, help="(--scenes)")
    parser.add_argument("--split", default="train", help="scene split (--scenes)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (--scenes)")
    parser.add_argument("--out", required=True, help="output directory for latent shards")
    parser.add_argument("--autoencoder", required=True, help="layered autoencoder directory")
    parser.add_argument("--text-encoder", required=True, help="CLIP text encoder (hub id or path)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    samples, source = None, None
    if args.scenes is not None:
        from layergen.data.shapes import ShapeScenes

        scenes = ShapeScenes(size=args.size, min_foregrounds=args.min_foregrounds,
                             max_foregrounds=args.max_foregrounds, seed=args.seed,
                             split=args.split, length=args.scenes)
        samples = (scenes[i] for i in range(len(scenes)))
        source = {"scenes": args.scenes, "size": args.size, "split": args.split, "seed": args.seed,
                  "min_foregrounds": args.min_foregrounds, "max_foregrounds": args.max_foregrounds}
    cache_latents(
        args.shards,
        args.out,
        args.autoencoder,
        args.text_encoder,
        batch_size=args.batch_size,
        samples_per_shard=args.samples_per_shard,
        device=args.device,
        samples=samples,
        source=source,
    )


if __name__ == "__main__":
    main()
