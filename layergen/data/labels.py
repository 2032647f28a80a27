"""Quality labels (Text2Layer sec. III-D) and the labelled samples of layered shards.

A labels file is JSON lines, one judgement per line::

    {"key": "000123", "kind": "mask", "label": 1, "split": "train"}

``label`` is 1 (good), 0 (bad) or ``null`` (skipped by the labeller, ignored); a later
line for the same key and kind replaces an earlier one (re-labelling). ``split`` is
``"train"`` or ``"val"``, assigned from the key by :func:`assign_split` so that it never
changes between sessions.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from layergen import limits
from layergen.layers import LayeredImage

logger = logging.getLogger(__name__)

KINDS = ("mask", "inpaint")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class QualityLabel:
    """One judgement: ``label`` 1 good / 0 bad."""

    key: str
    kind: str
    label: int
    split: str


def assign_split(key: str, val_fraction: float = 0.2) -> str:
    """``"val"`` for a stable ``val_fraction`` of keys (CRC32 of the key), else ``"train"``."""
    return "val" if zlib.crc32(key.encode("utf-8")) % 10_000 < val_fraction * 10_000 else "train"


def append_label(
    path: str | os.PathLike, key: str, kind: str, label: int | None, split: str
) -> None:
    """Append one judgement to ``path`` (flushed and synced, so that a crash loses nothing)."""
    line = json.dumps({"key": key, "kind": kind, "label": label, "split": split})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_label_lines(path: str | os.PathLike) -> list[dict]:
    """Every line of a labels file, skipped ones included.

    A line is read up to ``layergen.limits.MAX_JSON_BYTES`` bytes, so that a file without
    line breaks is refused instead of read whole; a key is at most ``MAX_TEXT_CHARS``.

    Raises:
        ValueError: naming the file and line of a malformed entry.
    """
    entries = []
    if not os.path.exists(path):
        return entries
    number = 0
    with open(path, "rb") as handle:
        while line := handle.readline(limits.MAX_JSON_BYTES + 1):
            number += 1
            if not line.strip():
                continue
            try:
                entry = limits.parse_json(line, "JSON")
                if not isinstance(entry, dict):
                    raise ValueError("expected a JSON object")
                key = entry.get("key")
                if not isinstance(key, str) or entry.get("kind") not in KINDS:
                    raise ValueError("needs a string 'key' and 'kind' in " + str(KINDS))
                if len(key) > limits.MAX_TEXT_CHARS:
                    raise ValueError(
                        f"'key' is over layergen.limits.MAX_TEXT_CHARS = {limits.MAX_TEXT_CHARS}"
                    )
                if (
                    "label" not in entry
                    or entry["label"] not in (0, 1, None)
                    or entry.get("split") not in SPLITS
                ):
                    raise ValueError(f"'label' must be 0, 1 or null and 'split' one of {SPLITS}")
            except ValueError as error:
                raise ValueError(f"{os.fspath(path)}:{number}: bad label line ({error})") from None
            entries.append(entry)
    return entries


def read_labels(
    path: str | os.PathLike, kind: str, split: str | None = None
) -> dict[str, QualityLabel]:
    """The latest 0/1 judgement of each key of ``kind`` (optionally of one ``split``)."""
    labels: dict[str, QualityLabel] = {}
    for entry in read_label_lines(path):
        if entry["kind"] != kind:
            continue
        if entry["label"] is None:
            labels.pop(entry["key"], None)
        else:
            labels[entry["key"]] = QualityLabel(
                entry["key"], kind, int(entry["label"]), entry["split"]
            )
    return {key: label for key, label in labels.items() if split is None or label.split == split}


def classifier_inputs(sample: LayeredImage, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What a quality classifier sees: ``(image (3, H, W) [-1, 1], mask (1, H, W) [0, 1])``.

    Mask kind: the composite (the source photograph up to the inpainting) and the union of
    the foreground masks. Inpaint kind: the background ``B`` and the same mask.
    """
    mask = sample.masks.sum(0).clamp(0.0, 1.0)
    image = sample.composite() if kind == "mask" else sample.background
    return image, mask


class LabelledSamples(Dataset):
    """The labelled samples of layered shards, resized to ``image_size`` and held in memory.

    Items: ``{"images": (3, S, S) [-1, 1], "masks": (1, S, S) [0, 1], "labels": float 0/1,
    "keys": str}``. A few thousand labels at S = 224 take a few hundred MB (uint8).

    Args:
        shards: layered shards (brace pattern or list) holding the labelled keys.
        labels: the labels file.
        kind: ``"mask"`` or ``"inpaint"``.
        split: ``"train"`` or ``"val"``.
        image_size: side S.
    """

    def __init__(
        self, shards: str | Sequence[str], labels: str, kind: str, split: str, image_size: int = 224
    ) -> None:
        from layergen.data.shards import read_shards

        wanted = read_labels(labels, kind, split)
        self.keys: list[str] = []
        images, masks, targets = [], [], []
        seen: set[str] = set()
        for sample in read_shards(
            shards if isinstance(shards, str) else list(shards), on_error="skip"
        ):
            key = sample.metadata.get("key")
            if key not in wanted or key in seen:
                continue
            seen.add(key)
            image, mask = classifier_inputs(sample, kind)
            size = (image_size, image_size)
            image = F.interpolate(
                image[None], size=size, mode="bilinear", antialias=True, align_corners=False
            )[0]
            mask = F.interpolate(
                mask[None], size=size, mode="bilinear", antialias=True, align_corners=False
            )[0]
            images.append(((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
            masks.append((mask.clamp(0, 1) * 255).round().to(torch.uint8))
            targets.append(float(wanted[key].label))
            self.keys.append(key)
        missing = len(wanted) - len(self.keys)
        if missing:
            logger.warning(
                "%s: %d labelled %s keys (%s) not found in the shards", labels, missing, kind, split
            )
        if not self.keys:
            raise ValueError(
                f"{labels}: no {kind!r} labels of split {split!r} match a sample of {shards}"
            )
        self.images, self.masks = torch.stack(images), torch.stack(masks)
        self.labels = torch.tensor(targets)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        return {
            "images": self.images[index].float() / 127.5 - 1.0,
            "masks": self.masks[index].float() / 255.0,
            "labels": self.labels[index],
            "keys": self.keys[index],
        }


class QualityLabelsDataModule(pl.LightningDataModule):
    """Train / val batches of labelled samples for a quality classifier.

    Args:
        shards: layered shards (the unfiltered synthesis output that was labelled).
        labels: the labels file (JSONL).
        kind: ``"mask"`` or ``"inpaint"``.
        image_size: classifier input side.
        batch_size: samples per batch.
        num_workers: data-loader workers.
    """

    def __init__(
        self,
        shards: str | list[str],
        labels: str,
        kind: str = "mask",
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        self.save_hyperparameters()
        self.datasets: dict[str, LabelledSamples] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.datasets:
                hp = self.hparams
                self.datasets[split] = LabelledSamples(
                    hp.shards, hp.labels, hp.kind, split, hp.image_size
                )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.datasets[split],
            batch_size=hp.batch_size,
            shuffle=shuffle,
            num_workers=hp.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
