"""The stage interface and the record passed between synthesis stages.

A synthesis job turns photographs into layered images (Text2Layer sec. III-B..D; LayerDiff
sec. 4). It is a chain of stages; every stage receives a list of :class:`SynthesisRecord`
and fills some of its fields in place. A record dropped by a stage (bad input, low quality
score) keeps its ``rejection`` reason and is passed over by the later stages, so that the
runner can write it to the rejects shard with its reason.

Value ranges follow :mod:`layergen.layers`: RGB in [-1, 1], masks in [0, 1].
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from layergen.layers import BACKGROUND_PROMPT, LayeredImage

logger = logging.getLogger(__name__)


@dataclass
class SynthesisRecord:
    """One sample travelling through the stage chain.

    Attributes:
        key: the source sample key (unique within the input).
        image: ``(3, H, W)`` float in [-1, 1], the source photograph ``I``; ``None`` when
            the input could not be decoded (``rejection`` then says why).
        caption: the source caption (the global prompt).
        source: the source sample's own metadata (img2dataset json, file name, ...).
        masks: ``(K, 1, H, W)`` float in [0, 1], foreground visible masks ``m_i``.
        foregrounds: ``(K, 3, H, W)`` float in [-1, 1], foreground layers ``F_i``.
        inpaint_mask: ``(1, H, W)`` float in {0, 1}, the region to inpaint for ``B``.
        background: ``(3, H, W)`` float in [-1, 1], the inpainted background ``B``.
        layer_prompts: ``K + 1`` prompts, index 0 the background; ``None`` uses the
            caption for every foreground.
        scores: named quality scores (e.g. ``"mask_quality"``), floats.
        rejection: why a stage dropped the record, ``None`` while it is kept.
        provenance: per stage name, its description (class, version, settings).
        extras: stage-specific intermediate values (not written to the output).
    """

    key: str
    image: Tensor | None
    caption: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    masks: Tensor | None = None
    foregrounds: Tensor | None = None
    inpaint_mask: Tensor | None = None
    background: Tensor | None = None
    layer_prompts: list[str] | None = None
    scores: dict[str, float] = field(default_factory=dict)
    rejection: str | None = None
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        """Whether no stage has dropped the record."""
        return self.rejection is None

    def reject(self, reason: str) -> None:
        """Drop the record; the first reason given wins."""
        if self.rejection is None:
            self.rejection = reason

    def to_layered_image(self) -> LayeredImage:
        """The finished layered image (Text2Layer eq. 1 / LayerDiff eq. 1).

        Its ``image`` is the source photograph (``image.png`` in a shard, the target of the
        auxiliary composite head); metadata holds ``key``, ``source``, ``scores`` and
        ``provenance``.

        Raises:
            ValueError: if a stage output is missing, naming the field and the key.
        """
        for name in ("image", "masks", "foregrounds", "background"):
            if getattr(self, name) is None:
                raise ValueError(f"record {self.key!r}: field {name!r} was not produced")
        num_foregrounds = int(self.masks.shape[0])
        layer_prompts = self.layer_prompts or [BACKGROUND_PROMPT] + [self.caption] * num_foregrounds
        return LayeredImage(
            background=self.background.float(),
            foregrounds=self.foregrounds.float(),
            masks=self.masks.float(),
            prompt=self.caption,
            layer_prompts=layer_prompts,
            metadata=self.metadata(),
            image=self.image.float(),
        )

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description: key, source, scores, provenance, rejection."""
        return {
            "key": self.key,
            "source": self.source,
            "scores": {name: float(value) for name, value in self.scores.items()},
            "provenance": self.provenance,
            "rejection": self.rejection,
        }


class SynthesisStage(ABC):
    """One step of the chain, applied to a list of records.

    Subclasses set ``name`` (the field in provenance and timing reports) and ``version``
    (bump when the output changes), and implement :meth:`process`, which only sees kept
    records that have an image. Stages should batch their work over the list.
    """

    name: str = "stage"
    version: str = "1"

    def describe(self) -> dict[str, Any]:
        """Provenance of this stage: class path, version and :meth:`settings`."""
        cls = type(self)
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "version": self.version,
            **self.settings(),
        }

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings recorded in provenance (thresholds, model ids)."""
        return {}

    def to(self, device: torch.device | str) -> SynthesisStage:
        """Move the stage's models to ``device``; stages without models return ``self``."""
        return self

    @abstractmethod
    def process(self, records: list[SynthesisRecord]) -> None:
        """Fill fields of ``records`` in place; call ``record.reject(reason)`` to drop one."""

    def __call__(self, records: Sequence[SynthesisRecord]) -> None:
        """Run :meth:`process` on the kept records and record provenance."""
        active = [record for record in records if record.kept and record.image is not None]
        if not active:
            return
        self.process(active)
        description = self.describe()
        for record in active:
            record.provenance[self.name] = description


@dataclass
class SynthesisStats:
    """Counts and timings of a synthesis job; summed over batches and ranks.

    Attributes:
        seconds: per stage name, total wall time in seconds.
        kept: number of records written to the output.
        rejected: per rejection reason (the text before the first ``":"``), count.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Records seen."""
        return self.kept + sum(self.rejected.values())

    def count(self, records: Sequence[SynthesisRecord]) -> None:
        """Add the outcome of ``records``."""
        for record in records:
            if record.kept:
                self.kept += 1
            else:
                self.rejected[reason_category(record.rejection)] += 1

    def merge(self, other: SynthesisStats) -> SynthesisStats:
        """Add ``other`` into this object and return it."""
        for name, value in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value
        self.kept += other.kept
        self.rejected.update(other.rejected)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"seconds": dict(self.seconds), "kept": self.kept, "rejected": dict(self.rejected)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthesisStats:
        """Inverse of :meth:`to_dict`."""
        return cls(
            seconds=dict(data["seconds"]),
            kept=int(data["kept"]),
            rejected=Counter(data["rejected"]),
        )


def reason_category(reason: str | None) -> str:
    """The category of a rejection reason: the text before the first ``":"``."""
    return (reason or "").split(":", 1)[0].strip()


class BackendStage(SynthesisStage):
    """A stage that wraps one backend and records its class, version and settings."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def settings(self) -> dict[str, Any]:
        return {
            "backend": type(self.backend).__name__,
            "backend_version": self.backend.version,
            **self.backend.settings(),
        }

    def to(self, device: torch.device | str) -> BackendStage:
        self.backend = self.backend.to(device)
        return self


def grouped(records: list[SynthesisRecord]) -> Iterator[list[SynthesisRecord]]:
    """Records grouped by image size, so that each group stacks into one batch."""
    groups: dict[tuple[int, ...], list[SynthesisRecord]] = defaultdict(list)
    for record in records:
        groups[tuple(record.image.shape)].append(record)
    yield from groups.values()


class SynthesisChain:
    """An ordered list of stages run on each batch of records, timing every stage.

    Args:
        stages: the stages, in order.
    """

    def __init__(self, stages: Sequence[SynthesisStage]) -> None:
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.stages = list(stages)
        self.stats = SynthesisStats()

    def describe(self) -> dict[str, dict[str, Any]]:
        """Provenance of every stage, by stage name."""
        return {stage.name: stage.describe() for stage in self.stages}

    def to(self, device: torch.device | str) -> SynthesisChain:
        """Move every stage to ``device``."""
        self.stages = [stage.to(device) for stage in self.stages]
        return self

    @torch.no_grad()
    def __call__(self, records: Sequence[SynthesisRecord]) -> list[SynthesisRecord]:
        """Run every stage on ``records`` (in place); return them, kept and rejected."""
        records = list(records)
        for stage in self.stages:
            start = time.perf_counter()
            stage(records)
            self.stats.seconds[stage.name] = (
                self.stats.seconds.get(stage.name, 0.0) + time.perf_counter() - start
            )
        self.stats.count(records)
        return records
