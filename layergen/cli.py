"""LightningCLI entry point shared by ``train.py`` and the tests.

Model and data are chosen in YAML with ``class_path`` (the LightningModule and the
LightningDataModule); everything else fills their typed ``__init__`` arguments. Every trainer
gets ``SkipReport``, which logs the data module's counts of skipped bad samples at the end of
each epoch (``on_error: skip``). When the output is not a terminal (a log file, a pipe), the
progress bar is off by default and a ``StepBudget`` prints plain progress lines instead.
Checkpoints are written atomically (``layergen.lit.checkpoint_io``) unless the config names
its own ``CheckpointIO`` plugin.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from layergen.data.datamodule import SkipReport
from layergen.lit.callbacks import StepBudget
from layergen.lit.checkpoint_io import use_atomic_checkpoints


class LayergenCLI(LightningCLI):
    """``LightningCLI`` whose runs without a progress bar still report their progress and
    whose checkpoints are written atomically."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        return trainer

    def before_fit(self) -> None:
        callbacks = self.trainer.callbacks
        if self.trainer.progress_bar_callback is None and not any(
            isinstance(callback, StepBudget) for callback in callbacks
        ):
            callbacks.append(StepBudget())


def cli_main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run ``LayergenCLI``; ``args`` replaces ``sys.argv`` (tests pass a list)."""
    return LayergenCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "callbacks": [SkipReport()],
            "enable_progress_bar": sys.stdout.isatty(),
        },
        args=args,
        run=run,
    )
