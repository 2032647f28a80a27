"""Shard division over DDP ranks and workers: equal epochs, no rank without data."""

from __future__ import annotations

import pytest

from layergen.data.datamodule import LayeredDataModule
from layergen.data.shapes import ShapeScenes
from layergen.data.sharding import samples_per_worker, shard_stages
from layergen.data.shards import layered_pipeline, write_shards


@pytest.fixture
def shards(tmp_path):
    scenes = ShapeScenes(size=32, max_foregrounds=2, length=12)
    write_shards([scenes[i] for i in range(12)], tmp_path, shard_size=4)  # 3 shards
    return tmp_path


def _keys_on_rank(monkeypatch, rank, world_size, urls, **kwargs):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    return [s.metadata["key"] for s in layered_pipeline(urls, **kwargs)]


def test_eval_split_divides_enough_shards_and_replicates_too_few(shards, monkeypatch):
    urls = str(shards / "shard-{000000..000002}.tar")
    per_rank = [_keys_on_rank(monkeypatch, r, 3, urls, split="eval") for r in range(3)]
    assert all(len(keys) == 4 for keys in per_rank)
    assert sorted(sum(per_rank, [])) == [f"{i:09d}" for i in range(12)]
    # 3 shards for 4 ranks: a rank without data would stall DDP; every rank reads all
    per_rank = [_keys_on_rank(monkeypatch, r, 4, urls, split="eval") for r in range(4)]
    assert all(keys == [f"{i:09d}" for i in range(12)] for keys in per_rank)


def test_resampled_epochs_have_equal_length_on_every_rank(shards, monkeypatch):
    urls = str(shards / "shard-{000000..000002}.tar")
    per_worker = samples_per_worker(10, world_size=2, num_workers=1)
    assert per_worker == 5
    per_rank = [
        _keys_on_rank(monkeypatch, r, 2, urls, split="resample", samples_per_worker=per_worker)
        for r in range(2)
    ]
    assert [len(keys) for keys in per_rank] == [5, 5]
    assert per_rank[0] != per_rank[1]  # each rank draws its own shards
    again = _keys_on_rank(monkeypatch, 0, 2, urls, split="resample", samples_per_worker=5)
    assert again == per_rank[0]  # deterministic: a resumed run reads the same stream
    with pytest.raises(ValueError, match="samples_per_worker"):
        layered_pipeline(urls, split="resample")
    with pytest.raises(ValueError, match="split"):
        shard_stages(urls, "by_node")


def test_datamodule_resamples_training_shards_into_equal_epochs(shards, monkeypatch):
    urls = str(shards / "shard-{000000..000002}.tar")
    lengths = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = LayeredDataModule(
            train_shards=urls, image_size=32, batch_size=3, train_samples_per_epoch=14
        )
        dm.trainer = type("Trainer", (), {"world_size": 2})()  # only world_size is read
        lengths.append([len(batch) for batch in dm.train_dataloader()])
    assert lengths == [[3, 3, 1], [3, 3, 1]]  # 7 samples per rank, in batches of 3
