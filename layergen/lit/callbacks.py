"""Callbacks shared by layergen's LightningModules.

``SavePretrained`` exports a diffusers-style directory at the end of fit (every module offers
``export_pretrained(directory)``); ``LayeredImageLogger`` logs image grids of layered batches
(each layer, each mask, the composite) to TensorBoard for any module offering
``predict_layered(batch) -> LayeredBatch`` (a reconstruction or a sample); ``StepBudget``
prints a progress line with an ETA and says loudly when ``max_time`` cut a run short.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid

from layergen.console import progress_line
from layergen.layers import LayeredBatch, composite_layers, to_unit

logger = logging.getLogger(__name__)


class SavePretrained(pl.Callback):
    """Call ``pl_module.export_pretrained(dirpath)`` on rank zero when fit ends.

    Args:
        dirpath: output directory (default: ``<trainer.default_root_dir>/pretrained``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__()
        self.dirpath = dirpath

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Export on rank zero, then wait for the other ranks.

        Under FSDP every rank first gathers the full parameters (a collective), so that rank
        zero writes whole tensors rather than its shard.
        """
        directory = Path(self.dirpath or Path(trainer.default_root_dir) / "pretrained")
        gathered = contextlib.nullcontext()
        if isinstance(trainer.strategy, FSDPStrategy):
            from torch.distributed.fsdp import FullyShardedDataParallel

            gathered = FullyShardedDataParallel.summon_full_params(
                trainer.strategy.model, writeback=False
            )
        with gathered:
            if trainer.is_global_zero:
                pl_module.export_pretrained(directory)
                logger.info("exported %s to %s", type(pl_module).__name__, directory)
        trainer.strategy.barrier("SavePretrained")


class StepBudget(pl.Callback):
    """Progress of a step-budgeted run: plain lines with an ETA, at least every few percent.

    Training runs ``trainer.max_steps`` optimiser steps (the same model on any machine);
    ``max_time`` is only a safety cap. If the cap stops the run early, a warning says so and
    what it means for the model. Lines go through ``print`` (flushed), so they show when the
    output is a file or a pipe too. A run without ``max_steps`` counts its estimated steps.

    Args:
        name: the stage's name in the lines (e.g. "autoencoder").
        every_n_steps: steps between lines at most.
        every_percent: percent of the run between lines at most.
    """

    def __init__(self, name: str = "training", every_n_steps: int = 100,
                 every_percent: float = 10.0) -> None:
        self.name, self.every_n_steps, self.every_percent = name, every_n_steps, every_percent
        self._start: float | None = None
        self._first_step = self._total = self._interval = self._next_line = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._first_step = time.perf_counter(), trainer.global_step
        self._total = trainer.max_steps
        if self._total <= 0:  # an epoch-budgeted run
            estimated = trainer.estimated_stepping_batches
            self._total = int(estimated) if math.isfinite(estimated) else 0
        self._interval = max(1, min(self.every_n_steps,
                                    math.ceil(self._total * self.every_percent / 100)))
        self._next_line = (self._first_step // self._interval + 1) * self._interval

    def _line(self, trainer: pl.Trainer) -> str:
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        line = progress_line(self.name, trainer.global_step, self._total, elapsed,
                             first=self._first_step)
        loss = trainer.callback_metrics.get("train/loss")
        return line + (f", train/loss {float(loss):.4f}" if loss is not None else "")

    @rank_zero_only
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if self._total > 0 and step >= self._next_line:
            print(self._line(trainer), flush=True)
            self._next_line = (step // self._interval + 1) * self._interval

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_steps > 0 and trainer.global_step < trainer.max_steps:
            logger.warning(
                "[%s] STOPPED EARLY at step %d of %d by the max_time safety cap (%s): the model "
                "is under-trained and will score below the figures documented for its config; "
                "raise trainer.max_time or resume with --ckpt_path last",
                self.name, trainer.global_step, trainer.max_steps,
                getattr(trainer.fit_loop, "max_time", None) or "max_time",
            )
        else:
            print(f"[{self.name}] done: {trainer.global_step} steps in "
                  f"{(time.perf_counter() - (self._start or 0)) / 60:.1f} min", flush=True)


def layered_grid(images: Tensor, masks: Tensor, layer_valid: Tensor | None = None) -> Tensor:
    """One row per sample: every layer's RGB, every layer's mask, then the composite.

    Args:
        images: ``(B, L, 3, H, W)`` in [-1, 1].
        masks: ``(B, L, 1, H, W)`` in [0, 1] (index 0 the background's visible mask).
        layer_valid: ``(B, L)`` bool; padded layers are shown black.

    Returns:
        ``(3, H', W')`` image grid in [0, 1].
    """
    batch, num_layers = images.shape[:2]
    if layer_valid is not None:
        keep = layer_valid[:, :, None, None, None].to(images.dtype)
        images, masks = images * keep, masks * keep
    composite = composite_layers(images, masks)  # (B, 3, H, W)
    tiles = torch.cat(
        [to_unit(images), masks.expand(-1, -1, 3, -1, -1), to_unit(composite)[:, None]], dim=1
    )  # (B, 2L + 1, 3, H, W)
    tiles = tiles.float().clamp(0.0, 1.0).flatten(0, 1)
    return make_grid(tiles, nrow=2 * num_layers + 1, padding=1, pad_value=0.5)


class LayeredImageLogger(pl.Callback):
    """Log image grids of the first validation batch to TensorBoard (rank zero).

    For every validation run it logs ``{stage}/layers_target`` (the batch) and
    ``{stage}/layers_output`` (``pl_module.predict_layered(batch)``): per sample, each layer,
    each mask, the composite.

    Args:
        max_images: samples shown.
        every_n_epochs: log every n validation runs.
    """

    def __init__(self, max_images: int = 4, every_n_epochs: int = 1) -> None:
        super().__init__()
        self.max_images = max_images
        self.every_n_epochs = every_n_epochs
        self._runs = 0

    @rank_zero_only
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: LayeredBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Log the grids of the first batch of a validation run."""
        if batch_idx != 0 or trainer.sanity_checking:
            return
        self._runs += 1
        if (self._runs - 1) % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        n = min(self.max_images, len(batch))
        sample = LayeredBatch(
            images=batch.images[:n],
            masks=batch.masks[:n],
            layer_valid=batch.layer_valid[:n],
            prompts=batch.prompts[:n],
            layer_prompts=batch.layer_prompts[:n],
            metadata=batch.metadata[:n] if batch.metadata else [],
        )
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            output = pl_module.predict_layered(sample)
        pl_module.train(was_training)
        grids = {
            "val/layers_target": layered_grid(sample.images, sample.masks, sample.layer_valid),
            "val/layers_output": layered_grid(output.images, output.masks, output.layer_valid),
        }
        for tb in loggers:
            for tag, grid in grids.items():
                tb.experiment.add_image(tag, grid.cpu(), global_step=trainer.global_step)
