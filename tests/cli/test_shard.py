"""`mmbert-data inspect`: a shard's structure checked on open; `--verify` against its build or manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pytest
from typer.testing import CliRunner

from cli.data import app

runner = CliRunner()


@pytest.fixture()
def phase(sample_builds, sample_root, tmp_path, monkeypatch) -> Path:
    """A copy of the sample's decay build, its tokenizer found in the sample's cache."""
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(sample_root / "cache"))
    shutil.copytree(sample_builds["decay"][0], tmp_path / "decay")
    return tmp_path / "decay"


def _first_shard(phase: Path) -> Path:
    stats = json.loads((phase / "stats.json").read_text())
    return phase / stats["streams"][0]["shards"][0]["path"]


def _overwrite(shard: Path, column: str, value: int) -> None:
    """Replace, in place, the third value of the first batch's ids (or their offsets): the same size."""
    raw = bytearray(shard.read_bytes())
    ids = next(iter(pyarrow.ipc.open_stream(pa.py_buffer(bytes(raw))))).column("input_ids")
    array = ids.values if column == "values" else ids.offsets
    at = raw.index(array.to_numpy()[1:4].tobytes()) + 4
    raw[at : at + 4] = value.to_bytes(4, "little")
    shard.write_bytes(bytes(raw))


def test_inspect_verify_compares_a_shard_with_its_build_or_manifest(phase, sample_builds, sample_manifests):
    shard = _first_shard(phase)
    result = runner.invoke(app, ["inspect", str(shard), "--verify", "-n", "0"])
    assert result.exit_code == 0, result.output
    stats = phase.resolve() / "stats.json"
    assert f"  verified: sha256 and counts as {stats} records them\n" in result.output
    original = sample_builds["decay"][0] / shard.relative_to(phase)
    manifest = sample_manifests["decay"]
    args = ["inspect", str(original), "--verify", "--manifest", str(manifest), "-n", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and f"as {manifest} records them" in result.output, result.output
    _overwrite(shard, "values", 5)  # another id of the vocabulary: a valid shard, not the one built
    assert runner.invoke(app, ["inspect", str(shard), "-n", "0"]).exit_code == 0
    result = runner.invoke(app, ["inspect", str(shard), "--verify"])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert result.output.startswith(f"error: changed shard: {shard} content sha256 ")
    assert "restore it, or rebuild the phase with `mmbert-data build --overwrite`" in result.output


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("offsets", 10**6, "damaged shard: {shard}: the input_ids offsets of documents 0 to "),
        ("values", 99_999, "{shard}: document 0 holds token id 99999, outside the tokenizer's 8192 ids"),
    ],
)
def test_inspect_refuses_a_damaged_shard(phase, column, value, message):
    shard = _first_shard(phase)
    _overwrite(shard, column, value)
    result = runner.invoke(app, ["inspect", str(shard)])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert result.output.startswith("error: " + message.format(shard=shard))
