"""Checkpoints written atomically: a temporary file beside the target, synced, then renamed.

Lightning's ``TorchCheckpointIO`` (``lightning.fabric.utilities.cloud_io._atomic_save``)
serialises a checkpoint into memory and writes it in an fsspec transaction, which for a local
path writes a temporary file in the *system* temporary directory (``tempfile.mkstemp()``) and
moves it onto the target with ``shutil.move``. That move is a rename, hence atomic, only
when the temporary directory is on the checkpoint's file system; otherwise ``shutil.move``
copies into the target in place, and a process killed during the copy leaves a truncated
``last.ckpt`` (the only checkpoint a resume finds). Nothing is synced to disk, and every
killed write leaves a checkpoint-sized file in the temporary directory.

:class:`AtomicCheckpointIO` writes a local checkpoint to ``.{name}.tmp`` in the
checkpoint's own directory, syncs it, renames it onto ``{name}`` (``os.replace``) and syncs
the directory: a kill at any moment leaves the previous checkpoint or the new one, whole.
A write killed midway leaves its ``.{name}.tmp``, which the next write of that checkpoint
replaces. Remote paths (``s3://``, ...) go through Lightning's writer.
:func:`use_atomic_checkpoints` installs it on a trainer that uses Lightning's default
``TorchCheckpointIO`` (``layergen.cli`` does, for every run).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

logger = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path: str | os.PathLike) -> Path:
    """Where a checkpoint is written before it is renamed onto ``path``: ``.{name}.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMPORARY_SUFFIX}")


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and durable (see the module
    docstring); loading and removing are Lightning's."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        fs, local = url_to_fs(os.fspath(path))
        if not isinstance(fs, LocalFileSystem) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(target)
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _sync_directory(target.parent)
        logger.debug("saved checkpoint %s", target)


def use_atomic_checkpoints(trainer: pl.Trainer) -> None:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` when it uses Lightning's default
    ``TorchCheckpointIO`` (a configured ``CheckpointIO`` plugin is left alone)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
