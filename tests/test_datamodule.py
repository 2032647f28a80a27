"""Tests of LayeredDataModule and the layer-wise transforms."""

from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import webdataset as wds
from torchvision.transforms.v2 import functional as TF

from layergen.data.codec import encode_sample
from layergen.data.datamodule import LayeredDataModule, SkipReport
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import write_shards
from layergen.data.transforms import LayeredTransform, horizontal_flip, resize_center_crop
from layergen.layers import LayeredBatch, LayeredImage, LayeredImageError


def _synthetic(**kwargs) -> LayeredDataModule:
    options = dict(
        image_size=32, max_foregrounds=3, num_train=12, num_val=6, num_test=5, batch_size=4
    )
    options.update(kwargs)
    return LayeredDataModule(**options)


def test_synthetic_batches_are_padded_to_max_foregrounds_plus_one():
    dm = _synthetic(min_foregrounds=1, max_foregrounds=3)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == 12
    for batch in batches:
        assert isinstance(batch, LayeredBatch)
        assert batch.images.shape[1:] == (4, 3, 32, 32) and batch.masks.shape[1:] == (4, 1, 32, 32)
        for valid, k in zip(batch.layer_valid, batch.num_foregrounds):
            assert valid.tolist() == [True] * (k + 1) + [False] * (3 - k)
    # Even a batch whose samples all have K = 1 is padded to L = max_foregrounds + 1.
    dm = _synthetic(min_foregrounds=1, max_foregrounds=1)
    assert next(iter(dm.val_dataloader())).images.shape[1] == 2


def test_synthetic_splits_are_cached_distinct_and_ordered():
    dm = _synthetic()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) == 12 and len(dm.datasets["val"]) == 6
    assert dm.datasets["train"].samples[0] is dm.datasets["train"][0]  # cached, not re-rendered
    prompts = {
        split: {s.prompt for s in dm.datasets[split].samples} for split in ("train", "val", "test")
    }
    assert not prompts["train"] & prompts["val"] and not prompts["val"] & prompts["test"]
    first = [b.prompts for b in dm.val_dataloader()]
    assert first == [b.prompts for b in dm.val_dataloader()]
    expected = [
        ShapeScenes(size=32, max_foregrounds=3, split="val", length=6)[i].prompt for i in range(6)
    ]
    assert sum(first, []) == expected
    predict = [m["split"] for b in dm.predict_dataloader() for m in b.metadata]
    assert predict == ["test"] * 5
    train_orders = {
        tuple(m["index"] for b in dm.train_dataloader() for m in b.metadata) for _ in range(3)
    }
    assert len(train_orders) > 1  # shuffled


def test_random_flip_mirrors_layers_and_prompts():
    torch.manual_seed(0)
    dm = _synthetic(random_flip=True, num_train=16)
    dm.setup("fit")
    flipped = [s for s in (dm.datasets["train"][i] for i in range(16)) if s.metadata.get("flipped")]
    assert 0 < len(flipped) < 16
    sample = flipped[0]
    original = ShapeScenes(size=32, max_foregrounds=3, length=16)[sample.metadata["index"]]
    assert torch.equal(sample.masks, original.masks.flip(-1))
    assert torch.equal(sample.background, original.background.flip(-1))
    swap = {"left": "right", "right": "left"}
    words = [swap.get(w, w) for w in original.prompt.split()]
    assert sample.prompt == " ".join(words)
    for fg, fg0 in zip(sample.metadata["foregrounds"], original.metadata["foregrounds"]):
        assert fg["position"] == " ".join(swap.get(w, w) for w in fg0["position"].split())
    assert torch.equal(horizontal_flip(sample).masks, original.masks)


def test_resize_and_crop_are_identical_for_every_layer():
    g = torch.Generator().manual_seed(0)
    alphas = torch.rand(2, 1, 40, 60, generator=g)
    sample = LayeredImage(
        background=torch.rand(3, 40, 60, generator=g) * 2 - 1,
        foregrounds=torch.rand(2, 3, 40, 60, generator=g) * 2 - 1,
        masks=alphas / 2,
    )
    out = resize_center_crop(sample, 32).validate()
    assert out.size == (32, 32)

    def reference(x):
        return TF.center_crop(TF.resize(x, [32], antialias=True), [32, 32])

    assert torch.allclose(out.masks, reference(sample.masks), atol=1e-6)
    assert torch.allclose(out.foregrounds[1], reference(sample.foregrounds[1]), atol=1e-6)
    assert torch.allclose(out.background, reference(sample.background).clamp(-1, 1), atol=1e-6)
    assert resize_center_crop(out, 32) is out
    photo = replace(sample, image=torch.rand(3, 40, 60, generator=g) * 2 - 1)
    out = resize_center_crop(photo, 32)
    assert torch.allclose(out.image, reference(photo.image).clamp(-1, 1), atol=1e-6)
    assert torch.equal(horizontal_flip(out).image, out.image.flip(-1))
    assert LayeredTransform(32)(sample).size == (32, 32)


@pytest.fixture
def shard_dir(tmp_path):
    write_shards(ShapeScenes(size=48, max_foregrounds=2, length=12), tmp_path, shard_size=3)
    return tmp_path


def test_shards_are_resized_and_each_worker_reads_distinct_samples(shard_dir):
    urls = str(shard_dir / "shard-{000000..000003}.tar")
    dm = LayeredDataModule(
        train_shards=urls,
        val_shards=[urls.replace("{000000..000003}", "000000")],
        test_shards=f"pipe:cat {shard_dir / 'shard-000001.tar'}",
        image_size=32,
        batch_size=4,
        num_workers=2,
        shuffle_buffer=6,
    )
    dm.setup("fit")
    keys = [m["key"] for b in dm.train_dataloader() for m in b.metadata]
    assert sorted(keys) == [f"{i:09d}" for i in range(12)]  # each sample exactly once
    batch = next(iter(dm.val_dataloader()))
    assert batch.images.shape[1:] == (3, 3, 32, 32)
    assert torch.allclose(batch.masks.sum(1), torch.ones(1), atol=1e-5)
    assert [m["key"] for b in dm.test_dataloader() for m in b.metadata] == [
        "000000003",
        "000000004",
        "000000005",
    ]


def test_too_many_foregrounds_raises_or_is_counted(shard_dir):
    scenes = ShapeScenes(size=32, min_foregrounds=3, max_foregrounds=3, length=1)
    with wds.TarWriter(str(shard_dir / "big-000000.tar")) as sink:
        sink.write(encode_sample(scenes[0], "three"))
    urls = str(shard_dir / "big-000000.tar")
    dm = LayeredDataModule(train_shards=urls, image_size=32, max_foregrounds=2, batch_size=2)
    with pytest.raises(LayeredImageError, match="key three: 3 foregrounds exceed"):
        next(iter(dm.train_dataloader()))
    dm = LayeredDataModule(train_shards=urls, image_size=32, max_foregrounds=2, on_error="skip")
    assert list(dm.train_dataloader()) == []
    assert dm.skip_counters["train"].counts()["too_many_layers"] == 1


def test_skips_in_workers_reach_the_main_process_and_are_logged(shard_dir):
    for i in range(2):  # corrupt one member in two shards
        scenes = ShapeScenes(size=32, length=2, seed=i)
        with wds.TarWriter(str(shard_dir / f"mixed-{i:06d}.tar")) as sink:
            sink.write(encode_sample(scenes[0], f"ok{i}"))
            members = encode_sample(scenes[1], f"bad{i}")
            members["background.png"] = b"broken"
            sink.write(members)
    urls = str(shard_dir / "mixed-{000000..000001}.tar")

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            return (batch.images.mean() - self.weight) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = LayeredDataModule(
        train_shards=urls,
        image_size=32,
        batch_size=1,
        num_workers=2,
        on_error="skip",
        shuffle_buffer=0,
    )
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SkipReport()],
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.callback_metrics["train/skipped_corrupt_image"].item() == 2
    assert trainer.callback_metrics["train/skipped_truncated_tar"].item() == 0
    assert dm.skip_counters["train"].total() == 0  # reset after the report


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_error"):
        LayeredDataModule(on_error="ignore")
    with pytest.raises(ValueError, match="max_foregrounds"):
        LayeredDataModule(min_foregrounds=3, max_foregrounds=2)


def test_splits_without_shards_are_empty_when_other_splits_have_shards(shard_dir):
    urls = str(shard_dir / "shard-000000.tar")
    dm = LayeredDataModule(train_shards=urls, image_size=32)
    assert dm.val_dataloader() == [] and dm.test_dataloader() == []
    assert len(next(iter(dm.train_dataloader()))) == 3
    with pytest.raises(ValueError, match="train_shards"):
        LayeredDataModule(val_shards=urls).train_dataloader()


def test_train_py_reports_skips_without_extra_configuration():
    from layergen.cli import cli_main

    config = Path(__file__).resolve().parents[1] / "configs" / "demo" / "ae.yaml"
    cli = cli_main(["--config", str(config), "--trainer.logger", "false"], run=False)
    assert sum(isinstance(c, SkipReport) for c in cli.trainer.callbacks) == 1
