"""Bad input gets a clear error naming the file (and line), or is skipped and reported, inside --output."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from typer.testing import CliRunner

from cli.data import app
from tests.corpus import DCLM, DOLMINO, FINEWEB2, build_args, prose, write_dclm, write_dolmino, write_fineweb2

runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(tmp_path / "cache"))


def bad_hub(root: Path) -> None:
    rng = random.Random(5)
    write_fineweb2(root, "fra_Latn", [prose(rng, "fra_Latn") for _ in range(3)] + ["   "])  # row 3: empty
    corrupt = root / FINEWEB2 / "data" / "deu_Latn" / "train" / "000_00000.parquet"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"PAR1" + bytes(rng.randrange(256) for _ in range(500)))
    no_text = root / FINEWEB2 / "data" / "rus_Cyrl" / "train" / "000_00000.parquet"
    no_text.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"], "language": ["rus"], "language_script": ["Cyrl"]}), no_text)
    hostile = write_fineweb2(root, "ukr_Cyrl", [prose(rng, "rus_Cyrl")])
    table = pq.read_table(hostile)
    table = table.set_column(table.schema.get_field_index("language"), "language", pa.array(["../../x"]))
    pq.write_table(table, hostile)
    first = write_dclm(root, [prose(rng, "eng_Latn") for _ in range(10)]).read_bytes()
    second = write_dclm(root, [prose(rng, "eng_Latn") for _ in range(10)]).read_bytes()
    # two zstd frames, the second cut short: a download that stopped midway
    (
        root / DCLM / "global-shard_01_of_10" / "local-shard_0_of_10" / "shard_00000000_processed.jsonl.zstd"
    ).write_bytes(first + second[: len(second) // 2])
    dolmino = root / DOLMINO / "data" / "flan" / "part-0000.json.zst"
    write_dolmino(root, "flan", [prose(rng, "eng_Latn") for _ in range(3)])
    lines = zstandard.ZstdDecompressor().stream_reader(dolmino.read_bytes()).read().splitlines(keepends=True)
    lines.insert(1, b'{"id": "bad", "text": "caf\xe9 au lait"}\n')  # invalid UTF-8 on line 2
    dolmino.write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines)))


def _tree(root: Path, skip: tuple[Path, ...]) -> set[str]:
    return {str(p) for p in root.rglob("*") if not any(p == s or s in p.parents for s in skip)}


def test_fail_names_the_file_and_line(tmp_path):
    hub = tmp_path / "hub"
    bad_hub(hub)
    result = runner.invoke(app, build_args(hub, tmp_path / "out", "--tasks", "1", "--on-error", "fail"))
    assert result.exit_code == 1
    assert "deu_Latn/train/000_00000.parquet" in result.output and "unreadable parquet" in result.output

    result = runner.invoke(
        app, build_args(hub, tmp_path / "out2", "--tasks", "1", "--on-error", "fail", "--sources", "dolmino")
    )
    assert result.exit_code == 1
    assert "data/flan/part-0000.json.zst:2: invalid UTF-8" in result.output


def test_skip_completes_and_reports_every_problem(tmp_path):
    hub = tmp_path / "hub"
    bad_hub(hub)
    out = tmp_path / "out"
    before = _tree(tmp_path, skip=(out, tmp_path / "cache"))
    result = runner.invoke(app, build_args(hub, out, "--tasks", "1", "--on-error", "skip"))
    assert result.exit_code == 0, result.output
    assert _tree(tmp_path, skip=(out, tmp_path / "cache")) == before  # nothing written outside --output
    stats = json.loads((out / "pretrain" / "stats.json").read_text())
    problems = [json.loads(line) for line in (out / "pretrain" / "errors.jsonl").read_text().splitlines()]
    found = {
        (Path(p["path"]).relative_to(hub).as_posix(), p["line"], p["error"].split(":")[0]) for p in problems
    }
    assert found == {
        (f"{FINEWEB2}/data/deu_Latn/train/000_00000.parquet", None, "unreadable parquet"),
        (
            f"{FINEWEB2}/data/rus_Cyrl/train/000_00000.parquet",
            None,
            "missing column(s) ['text', 'language_score', 'minhash_cluster_size']",
        ),
        (f"{FINEWEB2}/data/fra_Latn/train/000_00000.parquet", 3, "missing or empty text"),
        (f"{FINEWEB2}/data/ukr_Cyrl/train/000_00000.parquet", 0, "invalid language label '../../x_Cyrl'"),
        (
            f"{DCLM}/global-shard_01_of_10/local-shard_0_of_10/shard_00000000_processed.jsonl.zstd",
            found_line(problems, "dclm"),
            "corrupt or truncated .zstd file",
        ),
        (f"{DOLMINO}/data/flan/part-0000.json.zst", 2, "invalid UTF-8"),
    }
    assert stats["errors"]["count"] == 6
    assert stats["errors"]["by_source"] == {"dclm": 1, "dolmino": 1, "fineweb2": 4}
    kept = {(s["source"], s["language"]): s["documents_kept"] for s in stats["streams"]}
    assert kept[("fineweb2", "fra_Latn")] == 3 and kept[("dolmino", "eng_Latn")] == 3
    assert kept[("dclm", "eng_Latn")] == 10  # the documents before the truncation are kept
    for path in out.rglob("*"):
        assert out.resolve() in path.resolve().parents
        assert ".." not in path.relative_to(out).parts


def found_line(problems: list[dict], source: str) -> int:
    (line,) = [p["line"] for p in problems if p["source"] == source]
    assert line == 11  # the first line that could not be read
    return line
