"""Encode layered shards once into latent shards for diffusion training.

``python -m layergen.data.cache_latents --shards "data/train-{000000..000009}.tar"
--out data/latents --autoencoder outputs/autoencoder --text-encoder outputs/text_encoder``
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from layergen.data.latents import cache_latents


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and call :func:`layergen.data.latents.cache_latents`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="layered shard URLs (brace pattern)")
    parser.add_argument("--out", required=True, help="output directory for latent shards")
    parser.add_argument("--autoencoder", required=True, help="layered autoencoder directory")
    parser.add_argument("--text-encoder", required=True, help="CLIP text encoder (hub id or path)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cache_latents(
        args.shards,
        args.out,
        args.autoencoder,
        args.text_encoder,
        batch_size=args.batch_size,
        samples_per_shard=args.samples_per_shard,
        device=args.device,
    )


if __name__ == "__main__":
    main()
