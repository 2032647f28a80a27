"""Data throughput on one core: synthetic scenes per second and shard samples read per second.

Each figure is given per second of wall time and per second of this process's CPU time (the
latter is the one-core figure on a shared, busy machine).

Usage::

    python bench/bench_data.py --sizes 64 256 --num 500
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from layergen.data.shapes import ShapeScenes
from layergen.data.shards import read_shards, write_shards


class _Timer:
    """Wall and CPU seconds of a ``with`` block."""

    def __enter__(self) -> _Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *args: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def rates(self, count: int) -> str:
        return f"{count / max(self.wall, 1e-9):.0f} (cpu {count / max(self.cpu, 1e-9):.0f})"


def bench(size: int, num: int, max_foregrounds: int) -> dict[str, str]:
    """Scenes/s generated, shard samples/s written and read (decoded to ``LayeredImage``)."""
    scenes = ShapeScenes(size=size, max_foregrounds=max_foregrounds, length=num)
    with _Timer() as generate:
        for i in range(num):
            scenes[i]
    with tempfile.TemporaryDirectory() as out_dir:
        with _Timer() as write:
            paths = write_shards(scenes, out_dir, shard_size=max(1, num // 4))
        with _Timer() as read:
            count = sum(1 for _ in read_shards(paths))
    return {
        "scenes/s": generate.rates(num),
        "shard write samples/s": write.rates(num),
        "shard read samples/s": read.rates(count),
    }


def main() -> None:
    """Parse arguments, run, print one line per size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--num", type=int, default=500, help="scenes per size")
    parser.add_argument("--max-foregrounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for size in args.sizes:
        figures = bench(size, args.num, args.max_foregrounds)
        print(f"{size}x{size}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
