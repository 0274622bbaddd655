"""What the two command-line tools and the Makefile spell the same way: the output option and the cache."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import typer

from cli import data, train

ROOT = Path(__file__).resolve().parents[1]
# Every command that writes something, and the older spelling it still accepts (None: none).
WRITERS = {
    ("mmbert-data", "build"): None,
    ("mmbert-data", "download"): "--to",
    ("mmbert-data", "mixture"): None,
    ("mmbert-train", None): "--out",
    ("mmbert-train", "export"): "--out",
    ("mmbert-train", "import"): "--out",
    ("mmbert-train", "plot"): None,
}


def _output_option(tool: str, name: str | None) -> list[str]:
    group = typer.main.get_command(data.app if tool == "mmbert-data" else train.app)
    command = group if name is None else group.commands[name]
    (option,) = (param for param in command.params if "--output" in param.opts)
    return option.opts


@pytest.mark.parametrize(("tool", "name"), list(WRITERS))
def test_every_command_that_writes_takes_output_and_o(tool, name):
    opts = _output_option(tool, name)
    alias = WRITERS[(tool, name)]
    assert sorted(opts) == sorted(["--output", "-o", *([alias] if alias else [])])


def test_the_makefile_puts_the_lid_model_in_mmbert_data_cache(tmp_path):
    env = {**os.environ, "MMBERT_DATA_CACHE": str(tmp_path / "cache")}
    dry = subprocess.run(
        ["make", "-n", "-B", "setup"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert f"{tmp_path / 'cache'}/lid.176.ftz" in dry.stdout
    assert ".cache/mmbert-data" not in dry.stdout
