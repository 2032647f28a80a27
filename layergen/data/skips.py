"""Counting skipped samples across data-loader workers.

With ``on_error="skip"`` a bad sample is dropped, logged (shard, key, reason) and counted.
The counts live in shared memory (a ``multiprocessing.Array`` created in the main process
before the workers start, inherited by forked or spawned workers), so the main process sees
the increments made inside data-loader workers. The callback
``layergen.data.datamodule.SkipReport`` logs them at the end of each epoch as
``"{stage}/skipped_{reason}"`` (summed over DDP ranks) and resets them.
"""

from __future__ import annotations

import logging
import multiprocessing

log = logging.getLogger(__name__)

SKIP_REASONS = (
    "corrupt_image",
    "decompression_bomb",
    "truncated_tar",
    "missing_member",
    "bad_image",
    "bad_mask",
    "bad_text",
    "too_many_layers",
    "invalid_sample",
)


class SkipCounter:
    """Process-shared counts of skipped samples, one per reason in ``SKIP_REASONS``."""

    def __init__(self) -> None:
        self._counts = multiprocessing.get_context().Array("q", len(SKIP_REASONS))

    def add(self, reason: str, shard: str = "", key: str = "", detail: str = "") -> None:
        """Count one skip and log it (a WARNING naming the shard and key)."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"reason: expected one of {SKIP_REASONS}, got {reason!r}")
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += 1
        log.warning("skipped sample (%s): shard %s, key %s: %s", reason, shard, key, detail)

    def counts(self) -> dict[str, int]:
        """Counts by reason (reasons with zero skips included)."""
        with self._counts.get_lock():
            return dict(zip(SKIP_REASONS, self._counts[:]))

    def total(self) -> int:
        """Total number of skipped samples."""
        return sum(self.counts().values())

    def reset(self) -> None:
        """Zero every count."""
        with self._counts.get_lock():
            self._counts[:] = [0] * len(SKIP_REASONS)
