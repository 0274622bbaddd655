"""Bad input gets a clear error naming the file (and line), or is skipped and reported, inside --output."""

from __future__ import annotations

import codecs
import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from typer.testing import CliRunner

from cli.data import app
from tests.corpus import (
    ARXIV,
    DCLM,
    DOLMINO,
    FINEWEB2,
    WIKIPEDIA,
    build_args,
    prose,
    small_hub,
    write_dclm,
    write_dolmino,
    write_fineweb2,
    write_wikipedia,
)

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
    sources = ("--sources", "fineweb2,dclm,dolmino")  # the sources bad_hub writes
    args = build_args(hub, tmp_path / "out", "--tasks", "1", "--on-error", "fail", *sources)
    result = runner.invoke(app, args)
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
    sources = ("--sources", "fineweb2,dclm,dolmino")
    result = runner.invoke(app, build_args(hub, out, "--tasks", "1", "--on-error", "skip", *sources))
    assert result.exit_code == 0, result.output
    assert _tree(tmp_path, skip=(out, tmp_path / "cache")) == before  # nothing written outside --output
    stats = json.loads((out / "pretrain" / "stats.json").read_text())
    problems = [json.loads(line) for line in (out / "pretrain" / "errors.jsonl").read_text().splitlines()]
    # a parquet file's records are rows (from 0, as pyarrow counts), a JSON lines file's lines (from 1)
    assert {p["path"].endswith(".parquet"): set(p) - {"source", "path", "error"} for p in problems} == {
        True: {"row"},
        False: {"line"},
    }
    found = {
        (Path(p["path"]).relative_to(hub).as_posix(), p.get("row", p.get("line")), p["error"].split(":")[0])
        for p in problems
    }
    assert found == {
        (f"{FINEWEB2}/data/deu_Latn/train/000_00000.parquet", None, "unreadable parquet"),
        (
            f"{FINEWEB2}/data/rus_Cyrl/train/000_00000.parquet",
            None,
            "missing column(s) ['text', 'language_score', 'minhash_cluster_size']",
        ),
        (
            f"{FINEWEB2}/data/fra_Latn/train/000_00000.parquet",
            3,
            "empty text (nothing but whitespace or invisible characters)",
        ),
        (f"{FINEWEB2}/data/ukr_Cyrl/train/000_00000.parquet", 0, "invalid language label '../../x_Cyrl'"),
        (
            f"{DCLM}/global-shard_01_of_10/local-shard_0_of_10/shard_00000000_processed.jsonl.zstd",
            found_line(problems, "dclm"),
            "corrupt or truncated .zstd file",
        ),
        (f"{DOLMINO}/data/flan/part-0000.json.zst", 2, "invalid UTF-8"),
    }
    assert stats["errors"]["count"] == 6
    report = out / "pretrain" / "errors.jsonl"
    assert f"6 bad input file(s)/record(s) skipped; see {report}\n" in result.output
    assert stats["errors"]["by_source"] == {"dclm": 1, "dolmino": 1, "fineweb2": 4}
    # kept and held out: one document of each stream is held out
    kept = {
        (s["source"], s["language"]): (s["documents_kept"], s["documents_heldout"]) for s in stats["streams"]
    }
    assert kept[("fineweb2", "fra_Latn")] == (3, 1) and kept[("dolmino", "eng_Latn")] == (3, 1)
    assert kept[("dclm", "eng_Latn")] == (10, 1)  # the documents before the truncation are kept
    for path in out.rglob("*"):
        assert out.resolve() in path.resolve().parents
        assert ".." not in path.relative_to(out).parts


def found_line(problems: list[dict], source: str) -> int:
    (line,) = [p["line"] for p in problems if p["source"] == source]
    assert line == 11  # the first line that could not be read
    return line


def _json_lines_file(path: Path, lines: list[bytes]) -> None:
    """JSON lines as given (bytes, so a line may hold anything), compressed as the file name says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else zstandard.compress(raw))


def _escaped(record: dict) -> bytes:
    """One JSON line with non-ASCII written as \\u escapes, as JSON lets a lone surrogate be written."""
    return json.dumps(record, ensure_ascii=True).encode()


def _strings_with_invalid_utf8(values: list[str | bytes]) -> pa.Array:
    """A parquet string column whose byte values are stored unchecked, as a broken writer would."""
    return pa.array([v.encode() if isinstance(v, str) else v for v in values], pa.binary()).view(pa.string())


def bad_fields_hub(root: Path) -> dict[tuple[str, int], str]:
    """Every source format with good records and records with bad fields; returns (file, line) -> error."""
    rng = random.Random(11)
    english = [prose(rng, "eng_Latn") for _ in range(13)]
    expected = {}

    fw2 = write_fineweb2(root, "fra_Latn", [prose(rng, "fra_Latn") for _ in range(9)])
    table = pq.read_table(fw2)
    texts = table.column("text").to_pylist()
    texts[1], texts[2], texts[3] = None, "\u3000\u00a0\u2028\n\t ", "\u200b\ufeff\u200b"
    column = _strings_with_invalid_utf8([*texts[:4], b"caf\xe9 " + texts[4].encode(), *texts[5:]])
    table = table.set_column(table.schema.get_field_index("text"), "text", column)
    for name, row, value in (
        ("language_score", 5, None),
        ("language_script", 6, None),
        ("language", 7, None),
        ("language_score", 8, float("nan")),
    ):
        values = table.column(name).to_pylist()
        values[row] = value
        column = pa.array(values, table.schema.field(name).type)
        table = table.set_column(table.schema.get_field_index(name), name, column)
    pq.write_table(table, fw2)
    name = f"{FINEWEB2}/data/fra_Latn/train/000_00000.parquet"
    expected |= {
        (name, 1): "text is null",
        (name, 2): "empty text",
        (name, 3): "empty text",
        (name, 4): "invalid UTF-8",
        (name, 5): "language_score is null",
        (name, 6): "language_script is null",
        (name, 7): "language is null",
        (name, 8): "language_score is nan",
    }

    dclm = DCLM + "/global-shard_01_of_10/local-shard_0_of_10/shard_00000000_processed.jsonl.zstd"
    _json_lines_file(
        root / dclm,
        [
            _escaped({"text": english[0], "language_id_whole_page_fasttext": {"en": 1.00001}}),
            codecs.BOM_UTF8 + _escaped({"text": english[1]}),  # a byte-order mark before the line: kept
            _escaped({"text": english[2][:200] + " \ud83d broken emoji"}),
            b"",  # a blank line holds no record
            _escaped({"text": 42}),
            _escaped({"url": "https://example.org/no-text"}),
            _escaped({"text": english[3], "language_id_whole_page_fasttext": {"en": None}}),
            _escaped({"text": english[4], "language_id_whole_page_fasttext": "en"}),
        ],
    )
    expected |= {
        (dclm, 3): "invalid Unicode in text: lone surrogate U+D83D",
        (dclm, 5): "text is int, not a string",
        (dclm, 6): "no text field",
        (dclm, 7): "language_id_whole_page_fasttext.en is null",
        (dclm, 8): "language_id_whole_page_fasttext is 'en', not an object with an 'en' score",
    }

    dolmino = f"{DOLMINO}/data/flan/part-0000.json.zst"
    _json_lines_file(
        root / dolmino,
        [
            _escaped({"id": "flan-0", "text": english[5]}),
            _escaped({"id": "flan-\udc80", "text": english[6]}),
            _escaped({"id": "flan-2", "text": ["a", "list"]}),
            codecs.BOM_UTF8 + _escaped({"id": "flan-3", "text": english[7]}),
            _escaped({"text": english[11]}),  # Dolma names every document: no id is no guess
            _escaped({"id": "", "text": english[12]}),
        ],
    )
    expected |= {
        (dolmino, 2): "invalid Unicode in id: lone surrogate U+DC80",
        (dolmino, 3): "text is list, not a string",
        (dolmino, 5): "id is missing",
        (dolmino, 6): "id is empty",
    }

    arxiv = f"{ARXIV}/data/arxiv/arxiv-0000.json.gz"
    _json_lines_file(
        root / arxiv,
        [
            _escaped({"id": "arxiv-0", "text": english[8]}),
            _escaped({"id": {"nested": 1}, "text": english[9]}),
            _escaped({"id": "arxiv-2", "text": None}),
            _escaped({"id": "arxiv-3", "text": english[10][:100] + "\udfff"}),
        ],
    )
    expected |= {
        (arxiv, 2): "id is dict, not a string",
        (arxiv, 3): "text is null",
        (arxiv, 4): "invalid Unicode in text: lone surrogate U+DFFF",
    }

    wiki = write_wikipedia(root, "fr", [prose(rng, "fra_Latn"), "", "1914 – 1918 : 4 + 7 = 11.", "x"])
    table = pq.read_table(wiki)
    texts = table.column("text").to_pylist()
    texts[1], texts[3] = None, prose(rng, "fra_Latn")
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts))
    pq.write_table(table, wiki)
    expected[(f"{WIKIPEDIA}/20231101.fr/train-00000-of-00001.parquet", 1)] = "text is null"
    return expected


@pytest.mark.parametrize("dedup", ["--no-dedup", "--dedup"])
def test_bad_fields_of_every_source_format_are_reported_never_guessed(tmp_path, dedup):
    hub = tmp_path / "hub"
    expected = bad_fields_hub(hub)
    out = tmp_path / "out"
    result = runner.invoke(
        app, build_args(hub, out, "--tasks", "1", "--on-error", "skip", "--languages", "fra,eng", dedup)
    )
    assert result.exit_code == 0, result.output
    phase = out / "pretrain"
    problems = [json.loads(line) for line in (phase / "errors.jsonl").read_text().splitlines()]
    found = {
        (Path(p["path"]).relative_to(hub).as_posix(), p.get("row", p.get("line"))): p["error"]
        for p in problems
    }
    assert found.keys() == expected.keys()
    assert [key for key, error in found.items() if not error.startswith(expected[key])] == []
    stats = json.loads((phase / "stats.json").read_text())
    assert stats["errors"]["count"] == len(expected)
    streams = {(s["source"], s["language"]): s for s in stats["streams"]}
    # kept and held out: a stream of two documents holds one out, a stream of one none
    passed = {key: (s["documents_kept"], s["documents_heldout"]) for key, s in streams.items()}
    assert {key: counts for key, counts in passed.items() if sum(counts)} == {
        ("fineweb2", "fra_Latn"): (1, 0),
        ("dclm", "eng_Latn"): (2, 1),  # the line after a byte-order mark included
        ("dolmino", "eng_Latn"): (2, 1),
        ("arxiv", "eng_Latn"): (1, 0),
        ("wikipedia", "fra_Latn"): (2, 1),
    }
    # the article without letters gets no language: dropped with a reason, not filed under fra_Zyyy
    assert streams[("wikipedia", "None")]["drops"] == {"no_script": 1}
    for stream in stats["streams"]:
        assert stream["documents_read"] == stream["documents_kept"] + sum(stream["drops"].values())
    assert {path.parent.relative_to(phase).as_posix() for path in phase.glob("*/*/*.arrow")} == {
        f"{s['source']}/{s['language']}" for s in stats["streams"] if s["documents_kept"]
    }


def test_a_parquet_problem_names_its_row_and_a_json_lines_problem_its_line():
    from pipeline.bad_input import InputProblem

    parquet = InputProblem("fineweb2", "data/fra_Latn/train/000_00000.parquet", 0, "text is null")
    assert str(parquet) == "data/fra_Latn/train/000_00000.parquet (row 0, from 0): text is null"
    json_line = InputProblem("dclm", "shard.jsonl.zst", 3, "no text field")
    assert str(json_line) == "shard.jsonl.zst:3: no text field"
    assert str(InputProblem("dclm", "shard.jsonl.zst", None, "unreadable")) == "shard.jsonl.zst: unreadable"


def test_a_stage_that_cannot_be_set_up_records_no_settings(tmp_path):
    """A missing LID model stops the build before build.json is written, so the corrected
    command (here: the recipe's own LID) is not refused as a build with other settings."""
    small_hub(tmp_path / "hub")
    out = tmp_path / "out"
    missing = runner.invoke(app, build_args(tmp_path / "hub", out, "--lid", "ft176", "--sources", "fineweb2"))
    assert missing.exit_code == 1 and "fastText LID-176 model not found" in missing.output
    assert not (out / "pretrain" / "build.json").exists()
    fixed = runner.invoke(app, build_args(tmp_path / "hub", out, "--sources", "fineweb2"))
    assert fixed.exit_code == 0, fixed.output
