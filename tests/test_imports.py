"""Imports run one way (cli -> pipeline | trainer -> mixtures); the trainer needs none of the data stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> packages it must never import
FORBIDDEN = {
    "mixtures": {"pipeline", "trainer", "cli"},
    "pipeline": {"trainer", "cli"},
    "trainer": {"pipeline", "cli"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
        if imported_packages(path) & FORBIDDEN[package]
    }
    assert not offenders


def test_the_trainer_runs_without_the_data_pipeline_stack(sample_manifests):
    """As on a GPU node: no datatrove, polars, datasets or orjson, and no pipeline package."""
    script = f"""
import sys
for name in ("datatrove", "polars", "datasets", "orjson", "pipeline"):
    sys.modules[name] = None  # any import of these fails
import cli.train, trainer.train
from mixtures.manifest import load_manifest, validate_manifest
doc = load_manifest({str(sample_manifests["decay"])!r})
assert validate_manifest({str(sample_manifests["decay"])!r}, check_hashes=False) == []
print(len(doc["streams"]))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 10
