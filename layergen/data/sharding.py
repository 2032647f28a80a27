"""Which shards each DDP rank and data-loader worker reads: the first stages of a pipeline.

DDP needs every rank to run the same number of training steps (a rank with more batches
waits forever in the gradient all-reduce) and every rank to run at least one evaluation
batch (a rank with none waits forever in the end-of-epoch metric synchronisation). Splitting
a shard list over ranks gives neither unless the shards divide evenly and hold equal counts.
Hence four modes:

- ``"train"``: shards shuffled (``seed``), split over ranks then workers. Even only when
  ``world_size * num_workers`` divides the number of equal-sized shards.
- ``"resample"``: every rank and worker draws shards with replacement from its own
  deterministic stream (webdataset's ``ResampledShards``, seeded by ``seed``, rank and
  worker), an endless stream that the caller cuts into epochs of a fixed number of samples
  (``DataPipeline.with_epoch``), the same on every rank. The recommended DDP training mode.
- ``"eval"``: in order; split over ranks when there are at least as many shards as ranks,
  otherwise every rank reads every shard (duplicated work, identical metrics, no stall);
  split over workers.
- ``"none"``: every shard in order, in one process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import webdataset as wds

logger = logging.getLogger(__name__)

SHARD_SPLITS = ("train", "resample", "eval", "none")


def split_by_node_if_enough(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Split shard entries over ranks if each rank gets one, else give every rank all of them."""
    shards = list(src)
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    if world_size > 1 and len(shards) < world_size:
        logger.warning(
            "%d shard(s) for %d ranks: every rank reads all of them", len(shards), world_size
        )
        yield from shards
        return
    yield from shards[rank::world_size]


def shard_stages(urls: str | list[str], split: str, seed: int = 0) -> list[Any]:
    """The shard-list stages of a webdataset ``DataPipeline`` for ``split`` (module docstring).

    Args:
        urls: brace pattern, ``pipe:`` URL or list of URLs.
        split: one of ``SHARD_SPLITS``.
        seed: shard shuffling / resampling seed (``"train"``, ``"resample"``).
    """
    if split == "train":
        return [wds.SimpleShardList(urls, seed=seed), wds.split_by_node, wds.split_by_worker]
    if split == "resample":
        return [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    if split == "eval":
        return [wds.SimpleShardList(urls), split_by_node_if_enough, wds.split_by_worker]
    if split == "none":
        return [wds.SimpleShardList(urls)]
    raise ValueError(f"split: expected one of {SHARD_SPLITS}, got {split!r}")


def samples_per_worker(samples_per_epoch: int, world_size: int, num_workers: int) -> int:
    """Samples per worker for epochs of ``samples_per_epoch / world_size`` samples per rank.

    Rounded up, so every rank runs the same number of batches.
    """
    return math.ceil(samples_per_epoch / (world_size * max(1, num_workers)))
