"""LightningCLI entry point shared by ``train.py`` and the tests.

Model and data are chosen in YAML with ``class_path`` (the LightningModule and the
LightningDataModule); everything else fills their typed ``__init__`` arguments.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


def cli_main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run ``LightningCLI``; ``args`` replaces ``sys.argv`` (tests pass a list)."""
    return LightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
