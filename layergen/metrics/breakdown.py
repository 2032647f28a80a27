"""Metrics broken down by layer count (LayerDiff Table 1: two, three and four layers).

:class:`Breakdown` accumulates per-sample values under the group of the sample's layer
count ``L = K + 1`` and under ``"all"``; set-level metrics (FID) computed per group are
merged in with :meth:`Breakdown.merge`. :func:`markdown_table` renders the result.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from layergen.metrics.fid import ALL


def layer_group(num_layers: int) -> str:
    """Group name of a sample with ``num_layers`` layers (background included)."""
    return str(int(num_layers))


def _sort_key(group: str) -> tuple[int, int]:
    return (0, 0) if group == ALL else (1, int(group)) if group.isdigit() else (2, 0)


class Breakdown:
    """Means of per-sample metrics, overall and per layer count."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self._counts: dict[str, int] = defaultdict(int)
        self._extra: dict[str, dict[str, float]] = defaultdict(dict)

    def count(self, num_layers: int) -> None:
        """Count one sample with ``num_layers`` layers."""
        self._counts[ALL] += 1
        self._counts[layer_group(num_layers)] += 1

    def add(self, name: str, values: float | Tensor | Iterable[float], num_layers: int) -> None:
        """Add one or more values of metric ``name`` for a sample with ``num_layers`` layers.

        NaN values (a metric undefined for this sample) are left out of the means.
        """
        if isinstance(values, Tensor):
            values = values.detach().flatten().tolist()
        elif isinstance(values, (int, float)):
            values = [float(values)]
        for value in values:
            if math.isnan(value):
                continue
            self._values[ALL][name].append(float(value))
            self._values[layer_group(num_layers)][name].append(float(value))

    def merge(self, per_group: Mapping[str, Mapping[str, float]]) -> None:
        """Merge set-level metrics ``{group: {name: value}}`` (e.g. FID per layer count)."""
        for group, metrics in per_group.items():
            self._extra[group].update({k: float(v) for k, v in metrics.items()})

    def summary(self) -> dict[str, dict[str, float]]:
        """``{group: {"num_samples": n, name: mean, ...}}`` with groups ``"all"``, ``"2"``, ..."""
        groups = set(self._values) | set(self._counts) | set(self._extra)
        result: dict[str, dict[str, float]] = {}
        for group in sorted(groups, key=_sort_key):
            row: dict[str, float] = {"num_samples": float(self._counts.get(group, 0))}
            for name, values in self._values.get(group, {}).items():
                row[name] = float(torch.tensor(values, dtype=torch.float64).mean())
            row.update(self._extra.get(group, {}))
            result[group] = row
        return result


def markdown_table(
    summary: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] | None = None,
    row_label: str = "layers",
    precision: int = 3,
) -> str:
    """A Markdown table with one row per group and one column per metric (``n/a`` if absent)."""
    if columns is None:
        columns = sorted({name for row in summary.values() for name in row})
    lines = [
        "| " + " | ".join([row_label, *columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for group, row in summary.items():
        cells = []
        for name in columns:
            value = row.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("n/a")
            elif name == "num_samples":
                cells.append(str(int(value)))
            else:
                cells.append(f"{value:.{precision}f}")
        lines.append("| " + " | ".join([group, *cells]) + " |")
    return "\n".join(lines)
