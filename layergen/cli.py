"""LightningCLI entry point shared by ``train.py`` and the tests.

Model and data are chosen in YAML with ``class_path`` (the LightningModule and the
LightningDataModule); everything else fills their typed ``__init__`` arguments. Every trainer
gets ``SkipReport``, which logs the data module's counts of skipped bad samples at the end of
each epoch (``on_error: skip``).
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from layergen.data.datamodule import SkipReport


def cli_main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run ``LightningCLI``; ``args`` replaces ``sys.argv`` (tests pass a list)."""
    return LightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [SkipReport()]},
        args=args,
        run=run,
    )
