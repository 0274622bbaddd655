"""Imports run one way (cli -> pipeline | trainer -> mixtures); the trainer needs none of the data stack;
tests and benchmarks keep to their roles."""

from __future__ import annotations

import ast
import re
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


# Written as code or inside a script a test runs (python -c "from tests.trainer.test_x import ..."),
# a test module in any folder under tests/.
IMPORTS_A_TEST = re.compile(
    r"\b(?:from|import)\s+tests(?:\.\w+)*\.test_\w+|\bfrom\s+tests(?:\.\w+)*\s+import\s+test_\w+"
)
IMPORTS_TESTS = re.compile(r"\b(?:from|import)\s+tests\b")
# A fixture writing a format name of its own would pass on after the format changes.
LITERAL_FORMAT = re.compile(r"""["']format["']\s*:\s*["']mmbert-data/""")


def sources(folder: str) -> dict[str, str]:
    """Each module's text, in every subfolder too, but this one's (its examples of what is refused
    are meant to match)."""
    return {
        path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != Path(__file__).resolve()
    }


def test_tests_import_fixture_modules_not_other_tests():
    offenders = [name for name, text in sources("tests").items() if IMPORTS_A_TEST.search(text)]
    assert not offenders, "move what they share to a conftest.py or a fixture module (tests/fixtures.py)"


def test_benchmarks_import_no_tests():
    offenders = [name for name, text in sources("bench").items() if IMPORTS_TESTS.search(text)]
    assert not offenders, "move what they share to bench/ (or the library, if it is library code)"


def test_fixtures_take_format_names_from_the_formats_module():
    found = {**sources("tests"), **sources("bench")}
    offenders = [name for name, text in found.items() if LITERAL_FORMAT.search(text)]
    assert not offenders, "write stats.json and manifests with the names in mixtures.formats"


def test_role_checks_catch_what_they_are_for():
    assert IMPORTS_A_TEST.search("from tests.pipeline.test_build import shard_rows")
    assert IMPORTS_A_TEST.search('script = "import sys; from tests.mixtures.test_manifest import compile_to"')
    assert IMPORTS_A_TEST.search("from tests.trainer.test_data import make_loader")
    assert IMPORTS_A_TEST.search("import tests.scenarios.test_resume")
    assert IMPORTS_A_TEST.search("from tests.trainer import test_data")
    assert IMPORTS_A_TEST.search("from tests.test_imports import sources")
    assert not IMPORTS_A_TEST.search("from tests.fixtures import shard_rows\nfrom tests.corpus import prose")
    assert not IMPORTS_A_TEST.search("from tests.conftest import SAMPLE, write_synthetic_phase")
    # the checks read the test modules in every folder, fixture modules and conftests too
    found = set(sources("tests"))
    assert {"tests/pipeline/test_build.py", "tests/trainer/test_data.py"} <= found
    assert {"tests/conftest.py", "tests/fixtures.py", "tests/corpus.py"} <= found
    assert "tests/test_imports.py" not in found
    assert IMPORTS_TESTS.search("from tests.corpus import small_hub") and IMPORTS_TESTS.search("import tests")
    assert not IMPORTS_TESTS.search("from bench.peers import redistribute_until_stable  # the tests' oracle")
    assert LITERAL_FORMAT.search('stats = {"format": "mmbert-data/stats", "version": 1}')
    assert not LITERAL_FORMAT.search('assert doc["format"] == "mmbert-data/manifest"')


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
from trainer.eval import EvalOptions, read_heldout  # a phase's evaluation reads its build's stats.json
assert read_heldout(doc.data_root, EvalOptions(max_tokens_per_language=1000)).streams
print(len(doc.streams))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 10
