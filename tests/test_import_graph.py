"""The import graph between layergen's subpackages (every ``import`` statement, those inside
functions too, read with ``ast``): no cycle; ``data`` and ``metrics`` are leaves; only
``layergen.apps`` imports ``layergen.apps``."""

from __future__ import annotations

import ast
import graphlib
from collections import defaultdict
from pathlib import Path

import pytest

import layergen

ROOT = Path(layergen.__file__).resolve().parent
SUBPACKAGES = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
NODES = SUBPACKAGES | {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
LEAVES = ("data", "metrics")


def _module_name(path: Path) -> list[str]:
    parts = ["layergen", *path.relative_to(ROOT).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported(path: Path) -> set[str]:
    """The layergen modules (dotted names) that one file imports."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            # `from layergen import data` imports layergen.data; `from x import name`, x
            names.update(f"{stem}.{alias.name}" for alias in node.names)
            names.add(stem)
    return {n for n in names if n.split(".")[0] == "layergen"}


def _graph() -> dict[str, dict[str, set[str]]]:
    """``{source: {target: files}}`` between layergen's top-level modules and subpackages."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(ROOT.rglob("*.py")):
        source = _module_name(path)[1:2]
        for name in _imported(path):
            target = name.split(".")[1:2]
            if source and target and target != source and target[0] in NODES:
                graph[source[0]][target[0]].add(str(path.relative_to(ROOT.parent)))
    return graph


def test_the_graph_is_read():
    graph = _graph()
    assert {"data", "metrics", "apps", "pipelines"} <= SUBPACKAGES
    assert "pipelines" in graph["apps"] and "models" in graph["pipelines"]
    assert "data" in graph["models"]  # an import inside a function (text_encoder's main)


def test_no_cycle_between_subpackages():
    graph = _graph()
    try:
        graphlib.TopologicalSorter({s: set(t) for s, t in graph.items()}).prepare()
    except graphlib.CycleError as exn:
        cycle = exn.args[1]
        where = [sorted(graph[a][b]) for a, b in zip(cycle, cycle[1:])]
        pytest.fail(f"import cycle {' -> '.join(cycle)}: {where}")


@pytest.mark.parametrize("leaf", LEAVES)
def test_data_and_metrics_import_no_other_subpackage(leaf):
    others = {t: sorted(files) for t, files in _graph()[leaf].items() if t in SUBPACKAGES}
    assert others == {}, f"layergen.{leaf} imports other subpackages"


def test_only_apps_imports_apps():
    importers = {s: sorted(t["apps"]) for s, t in _graph().items() if "apps" in t}
    assert importers == {}, "library code imports layergen.apps"
