"""Write constraints.txt: the exact installed versions of layergen's dependency tree.

    python scripts/freeze_constraints.py > constraints.txt

Walks the requirements in setup.cfg (``install_requires`` and the ``dev`` extra) through
every installed dependency, extras and environment markers included, and prints
``name==version`` for each, sorted: ``pip freeze`` limited to what the project pulls in.
CI (``.ci/run``) and ``docker/Dockerfile`` install with ``-c constraints.txt``; regenerate
it in an environment that passes the tests after changing a dependency.
"""

from __future__ import annotations

import configparser
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
ROOT_EXTRAS = ("dev",)


def root_requirements() -> list[str]:
    """setup.cfg's ``install_requires`` and ``ROOT_EXTRAS`` requirements."""
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    texts = [config["options"]["install_requires"]]
    texts += [config["options.extras_require"][extra] for extra in ROOT_EXTRAS]
    return [line.strip() for text in texts for line in text.splitlines() if line.strip()]


def closure(requirements: list[str]) -> dict[str, str]:
    """``{canonical name: installed version}`` of the dependency tree of ``requirements``."""
    seen: dict[str, str] = {}
    todo: list[tuple[list[str], tuple[str, ...]]] = [(requirements, ())]
    visited: set[tuple[str, str]] = set()
    while todo:
        texts, wanted = todo.pop()
        for text in texts:
            requirement = Requirement(text)
            if requirement.marker and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in ("", *wanted)
            ):
                continue  # another platform, Python or extra
            name = canonicalize_name(requirement.name)
            try:
                dependency = distribution(requirement.name)
            except PackageNotFoundError:
                continue  # optional and not installed
            seen[name] = dependency.version
            for extra in ("", *sorted(requirement.extras)):
                if (name, extra) not in visited:
                    visited.add((name, extra))
                    todo.append((dependency.requires or [], (extra,) if extra else ()))
    return seen


def main() -> None:
    pins = closure(root_requirements())
    print("# Exact versions of layergen's dependency tree (with the dev extra), from an environment")
    print("# that passed the tests; written by scripts/freeze_constraints.py. Install with")
    print('#   pip install -c constraints.txt -e ".[dev]"')
    print(f"# Python {sys.version_info.major}.{sys.version_info.minor}, Linux x86_64.")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
