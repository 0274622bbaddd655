"""What `make` installs must resolve on any machine with PyPI: every pin a release PyPI serves (no
local label such as ``+cpu``, which only a wheel on one machine's disk satisfies), every dependency
pinned, and nothing pinned twice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"


def pins() -> dict[str, Version]:
    """name -> pinned version, from the constraints file `make` installs with."""
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            found[canonicalize_name(name)] = Version(version)
    return found


def test_every_pin_is_a_release_pypi_serves():
    local = {name: str(version) for name, version in pins().items() if version.local}
    assert not local, "a local version label resolves only where that wheel lies on disk"


def test_every_dependency_of_make_is_pinned():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    unpinned = {canonicalize_name(Requirement(r).name) for r in wanted} - set(pins())
    assert not unpinned


def test_the_makefile_leaves_versions_to_the_constraints():
    makefile = (ROOT / "Makefile").read_text().splitlines()
    (install,) = [line for line in makefile if "pip install" in line and "-e " in line]
    assert "-c .ci/constraints.txt" in install
    assert not re.search(r"==\d", install), "pin once, in .ci/constraints.txt"
