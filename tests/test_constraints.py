"""The pinned environment: constraints.txt pins setup.cfg's dependency tree, this
environment has exactly those versions, and CI and the Docker image both install from it."""

from __future__ import annotations

import configparser
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(pair) == 2 for pair in pairs), "constraints.txt: name==version lines only"
    return {canonicalize_name(name): value for name, value in pairs}


def test_every_requirement_is_pinned_within_its_range():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    texts = config["options"]["install_requires"] + config["options.extras_require"]["dev"]
    pinned = pins()
    for text in filter(None, map(str.strip, texts.splitlines())):
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), text


def test_this_environment_has_the_pinned_versions():
    # CI installs with -c constraints.txt; elsewhere a mismatch means the pins need rewriting
    # (python scripts/freeze_constraints.py > constraints.txt) or the environment updating
    mismatched = {}
    for name, pinned in pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            mismatched[name] = (installed, pinned)
    assert not mismatched, f"installed vs constraints.txt: {mismatched}"


def test_ci_and_the_image_install_from_the_constraints():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if "pip install" in line and "--upgrade pip" not in line]
    docker = (ROOT / "docker" / "Dockerfile").read_text()
    docker_installs = [part for part in docker.split("&&") if "pip install" in part]
    assert ci and all("-c constraints.txt" in line for line in ci)
    assert docker_installs and all("-c constraints.txt" in part for part in docker_installs)
    assert "COPY constraints.txt" in docker and "\nUSER 1000" in docker  # not root
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"outputs", "runs", "data", ".venv", "*.ckpt"} <= set(ignored)
