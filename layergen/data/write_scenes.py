"""Write synthetic layered scenes to WebDataset shards (resumable).

Example::

    python -m layergen.data.write_scenes --out data/shapes/train --num 10000 --size 64 \\
        --max-foregrounds 3 --split train --shard-size 1000
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from layergen.data.shapes import SPLITS, ShapeScenes
from layergen.data.shards import write_shards

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num", type=int, required=True, help="number of scenes")
    parser.add_argument("--size", type=int, default=64, help="side in pixels (32..512)")
    parser.add_argument("--min-foregrounds", type=int, default=1)
    parser.add_argument("--max-foregrounds", type=int, default=2)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=1000, help="scenes per shard")
    parser.add_argument("--prefix", default="shard", help="shard file prefix")
    parser.add_argument("--mask-bits", type=int, choices=(8, 16), default=8)
    parser.add_argument("--no-resume", action="store_true", help="rewrite existing shards")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Write the shards; returns their paths."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scenes = ShapeScenes(
        size=args.size,
        min_foregrounds=args.min_foregrounds,
        max_foregrounds=args.max_foregrounds,
        seed=args.seed,
        split=args.split,
        length=args.num,
    )
    paths = write_shards(
        scenes,
        args.out,
        shard_size=args.shard_size,
        prefix=args.prefix,
        mask_bits=args.mask_bits,
        resume=not args.no_resume,
    )
    log.info("%d scenes in %d shards: %s", len(scenes), len(paths), ", ".join(paths))
    return paths


if __name__ == "__main__":
    main()
