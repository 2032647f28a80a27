"""``LayeredDataModule``: batches of layered images from synthetic scenes or WebDataset shards.

Synthetic path (no shard URLs for any split): each split's ``ShapeScenes`` are generated
once at ``setup`` and cached in memory (generating scenes inside the training loop costs as
much as a training step). The cache holds float32 backgrounds and masks and keeps each flat
foreground colour as an expanded view: about ``(3 + K) * 4 * H * W`` bytes per scene, ~80 kB
at 64x64 with K = 2. Lightning adds a ``DistributedSampler`` under DDP, so ranks see
distinct scenes. When shards are given for some split, a split without shards has no data
(its loader is empty and Lightning skips that loop); training then needs ``train_shards``.

Shard path: a webdataset pipeline (``layergen.data.shards.layered_pipeline``). Training
shards are split over DDP ranks and data-loader workers, or, with
``train_samples_per_epoch``, resampled by every rank and worker into epochs of equal length
(the safe choice under DDP); validation and test shards are split over ranks when there are
enough of them and over workers (``layergen.data.sharding``).
Samples go through a shuffle buffer (train), are decoded, resized and centre-cropped to
``image_size`` with the same resize/crop/flip applied to every layer.

Batches are always ``LayeredBatch``es padded to ``L = max_foregrounds + 1`` layers. A sample
with more foregrounds is an error naming its key, or a counted skip with
``on_error="skip"``; skips are counted per split in ``skip_counters`` (shared with the
workers) and reported by the ``SkipReport`` callback (below): add it to the trainer's callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from layergen.data.shapes import ShapeScenes
from layergen.data.sharding import samples_per_worker
from layergen.data.shards import ON_ERROR, layered_pipeline
from layergen.data.skips import SkipCounter
from layergen.data.transforms import LayeredTransform
from layergen.layers import LayeredBatch, LayeredImage, LayeredImageError

log = logging.getLogger(__name__)

STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}


def _compact(sample: LayeredImage) -> LayeredImage:
    """Keep a synthetic scene's flat foreground colours as expanded ``(K, 3, 1, 1)`` views."""
    flat = sample.foregrounds[:, :, :1, :1].clone()
    return replace(sample, foregrounds=flat.expand_as(sample.foregrounds))


class CachedDataset(Dataset):
    """A list of ``LayeredImage``s kept in memory, with an optional per-item transform."""

    def __init__(self, samples: Sequence[LayeredImage], transform: LayeredTransform | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> LayeredImage:
        sample = self.samples[index]
        return self.transform(sample) if self.transform is not None else sample


class LayeredCollate:
    """``collate_fn`` padding every batch to ``num_layers`` layers (``LayeredBatch.collate``)."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers

    def __call__(self, samples: Sequence[LayeredImage]) -> LayeredBatch:
        for s in samples:
            if s.num_layers > self.num_layers:
                raise LayeredImageError(
                    f"sample {s.metadata.get('key', s.metadata.get('index', '?'))}: "
                    f"{s.num_foregrounds} foregrounds exceed max_foregrounds = "
                    f"{self.num_layers - 1}"
                )
        return LayeredBatch.collate(samples, num_layers=self.num_layers)


class LayeredDataModule(pl.LightningDataModule):
    """Train/val/test ``LayeredBatch``es from shards, or from synthetic scenes by default.

    Args:
        train_shards: shard URLs for training (a brace pattern such as
            ``"data/shard-{000000..000009}.tar"``, a ``pipe:`` URL, or a list). When no
            split has shards, every split uses synthetic scenes.
        val_shards: same for validation (None with ``train_shards`` given: no validation).
        test_shards: same for testing and prediction.
        image_size: side of the square images in pixels.
        min_foregrounds: synthetic scenes: fewest foregrounds.
        max_foregrounds: most foregrounds; batches have ``L = max_foregrounds + 1`` layers.
        num_train: number of synthetic training scenes.
        num_val: number of synthetic validation scenes.
        num_test: number of synthetic test scenes.
        seed: synthetic scene seed (and shard shuffle seed).
        batch_size: samples per batch.
        num_workers: data-loader worker processes.
        shuffle_buffer: shard path: size of the training shuffle buffer (0: no shuffling).
        train_samples_per_epoch: shard path: training samples per epoch over all ranks. When
            set, every rank and worker resamples training shards with replacement and each
            rank's epoch has the same length (what DDP needs; ``layergen.data.sharding``);
            when None, the training shards are split over ranks and workers and read once.
        random_flip: flip training samples left-right (prompts' "left"/"right" swapped).
        on_error: ``"raise"`` or ``"skip"`` (count and log bad samples).
        mask_sum_tolerance: shard path: largest accepted excess of the decoded mask sum over
            1 beyond PNG quantisation.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        image_size: int = 64,
        min_foregrounds: int = 1,
        max_foregrounds: int = 2,
        num_train: int = 4096,
        num_val: int = 256,
        num_test: int = 256,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        train_samples_per_epoch: int | None = None,
        random_flip: bool = False,
        on_error: str = "raise",
        mask_sum_tolerance: float = 1e-3,
    ) -> None:
        super().__init__()
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error: expected one of {ON_ERROR}, got {on_error!r}")
        if max_foregrounds < 1 or min_foregrounds < 1 or min_foregrounds > max_foregrounds:
            raise ValueError(
                f"min_foregrounds, max_foregrounds: need 1 <= min <= max, got "
                f"{min_foregrounds}, {max_foregrounds}"
            )
        self.save_hyperparameters()
        self.shards = {"train": train_shards, "val": val_shards, "test": test_shards}
        self.num_scenes = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size = image_size
        self.min_foregrounds = min_foregrounds
        self.max_foregrounds = max_foregrounds
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.train_samples_per_epoch = train_samples_per_epoch
        self.random_flip = random_flip
        self.on_error = on_error
        self.mask_sum_tolerance = mask_sum_tolerance
        self.skip_counters = {split: SkipCounter() for split in ("train", "val", "test")}
        self.collate = LayeredCollate(max_foregrounds + 1)
        self.datasets: dict[str, Dataset | None] = {}

    @property
    def num_layers(self) -> int:
        """L = max_foregrounds + 1, the padded number of layers of every batch."""
        return self.max_foregrounds + 1

    def _transform(self, split: str) -> LayeredTransform:
        return LayeredTransform(self.image_size, random_flip=self.random_flip and split == "train")

    @property
    def synthetic(self) -> bool:
        """True when no split has shard URLs: every split uses synthetic scenes."""
        return all(urls is None for urls in self.shards.values())

    def _build(self, split: str) -> Dataset | None:
        urls = self.shards[split]
        if self.synthetic:
            scenes = ShapeScenes(
                size=self.image_size,
                min_foregrounds=self.min_foregrounds,
                max_foregrounds=self.max_foregrounds,
                seed=self.seed,
                split=split,
                length=self.num_scenes[split],
            )
            log.info("caching %d synthetic %s scenes at %dpx", len(scenes), split, self.image_size)
            transform = self._transform(split) if self.random_flip and split == "train" else None
            return CachedDataset([_compact(scenes[i]) for i in range(len(scenes))], transform)
        if urls is None:
            if split == "train":
                raise ValueError(
                    "train_shards: required when val_shards or test_shards are given "
                    "(synthetic scenes are used only when no split has shards)"
                )
            log.info("no %s shards: the %s split is empty", split, split)
            return None
        shard_split, per_worker = "eval", None
        if split == "train":
            shard_split = "train"
            world_size = self.trainer.world_size if self.trainer is not None else 1
            if self.train_samples_per_epoch:
                shard_split = "resample"
                per_worker = samples_per_worker(
                    self.train_samples_per_epoch, world_size, self.num_workers
                )
            elif world_size > 1:
                log.warning(
                    "train_samples_per_epoch is not set: the %d ranks split the training shards "
                    "and stall at the end of an epoch unless every rank gets as many samples",
                    world_size,
                )
        return layered_pipeline(
            urls,
            shuffle_buffer=self.shuffle_buffer if split == "train" else 0,
            split=shard_split,
            samples_per_worker=per_worker,
            on_error=self.on_error,
            skip_counter=self.skip_counters[split],
            transform=self._transform(split),
            max_foregrounds=self.max_foregrounds,
            mask_sum_tolerance=self.mask_sum_tolerance,
            seed=self.seed,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build (and, for synthetic scenes, generate and cache) the datasets of ``stage``."""
        splits = (
            STAGE_SPLITS.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test")
        )
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self._build(split)

    def _loader(self, split: str) -> DataLoader | list:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        if dataset is None:
            return []
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=self.synthetic and split == "train",
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader | list:
        """Shuffled training batches."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in a fixed order (``[]`` when the split has no data)."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """Test batches in a fixed order (``[]`` when the split has no data)."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        """The test split."""
        return self._loader("test")


class SkipReport(pl.Callback):
    """Log the data module's skip counts at the end of every train/val/test epoch.

    Works with any datamodule that has a ``skip_counters`` dict ``{stage: SkipCounter}``
    (``LayeredDataModule`` does). Add it to the trainer's callbacks.
    """

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        counters = getattr(datamodule, "skip_counters", None)
        if not counters or stage not in counters or getattr(datamodule, "synthetic", False):
            return  # synthetic scenes are never bad input
        counts = counters[stage].counts()
        for reason, count in counts.items():
            pl_module.log(
                f"{stage}/skipped_{reason}", float(count), reduce_fx="sum", sync_dist=True
            )
        if any(counts.values()):
            log.warning(
                "%s epoch %d: skipped samples %s",
                stage,
                trainer.current_epoch,
                {r: c for r, c in counts.items() if c},
            )
        counters[stage].reset()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test")
