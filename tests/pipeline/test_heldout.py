"""Held-out data: which documents a build sets aside, and that the choice is the stream's alone."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from cli.data import app
from mixtures.compiler import compile_phase
from mixtures.counts import changed_shards, heldout_shards, read_stats
from mixtures.formats import STATS_VERSION
from mixtures.manifest import build_manifest
from mixtures.recipe import format_tokens, load_recipe
from pipeline.build import Build
from pipeline.build_options import BuildOptions
from pipeline.heldout import HELDOUT_RATE, HELDOUT_TOKENS, KEY_SPACE, highest_heldout_key
from tests.corpus import prose, small_hub, write_fineweb2

runner = CliRunner()
RATE, CAP = 0.25, 700  # over a test corpus both bind: a quarter of 36 documents is 9, 700 tokens about 4


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(tmp_path / "cache"))


def key(fraction: float) -> int:
    return int(fraction * KEY_SPACE)


def test_the_walk_takes_the_lowest_keys_under_the_rate_while_they_fit_the_cap():
    # under the rate, lowest first, until the tokens would pass the cap: 30 + 40 fit, + 50 does not
    candidates = [(key(0.3), 50), (key(0.1), 30), (key(0.7), 10), (key(0.2), 40)]
    assert highest_heldout_key(candidates, rate=0.5, cap=100) == (key(0.2), key(0.3))
    # under the rate and within the cap, all of them; the first key above the rate ends the walk
    assert highest_heldout_key(candidates, rate=0.5, cap=1000) == (key(0.3), key(0.7))
    # none under the rate: the lowest key alone
    assert highest_heldout_key([(key(0.8), 10), (key(0.6), 20)], rate=0.5, cap=100) == (key(0.6), None)
    # one id twice in a stream: both or neither
    assert highest_heldout_key([(key(0.1), 60), (key(0.1), 60)], rate=0.5, cap=100) == (None, key(0.1))
    assert highest_heldout_key([], rate=0.5, cap=100) == (None, None)
    # one of a stream's documents at least stays for training
    under = [(key(0.1), 10), (key(0.2), 10)]
    assert highest_heldout_key(under, rate=0.5, cap=100, documents=2) == (key(0.1), key(0.2))
    assert highest_heldout_key(under[:1], rate=0.5, cap=100, documents=1) == (None, key(0.1))


def heldout_hub(root: Path) -> None:
    """Streams split over several files (so over several tasks): 36 French documents in three files,
    two German ones in two files, one Russian one."""
    rng = random.Random(9)
    for i in range(3):
        write_fineweb2(root, "fra_Latn", [prose(rng, "fra_Latn") for _ in range(12)], name=f"000_{i:05d}")
    for i in range(2):
        write_fineweb2(root, "deu_Latn", [prose(rng, "deu_Latn")], name=f"000_{i:05d}")
    write_fineweb2(root, "rus_Cyrl", [prose(rng, "rus_Cyrl")])


def build(hub: Path, out: Path, **options) -> tuple[Path, dict]:
    plan = Build(
        BuildOptions(
            recipe=load_recipe(),
            phase="pretrain",
            output=out,
            input_root=str(hub),
            tokenizer=f"sample:{hub}",
            **{"sources": ("fineweb2",), **options},
        )
    )
    return plan.phase_dir, plan.run()


def rows(phase_dir: Path, shards: list[dict]) -> dict[str, int]:
    """id -> tokens over the given shard entries."""
    found = {}
    for shard in shards:
        table = datasets.Dataset.from_file(str(phase_dir / shard["path"]))
        found.update(zip(table["id"], map(len, table["input_ids"]), strict=True))
    return found


def expected_heldout(stream: str, documents: dict[str, int], rate: float = RATE, cap: int = CAP) -> set[str]:
    """The held-out set by the rule's own words: documents by sha256 of stream and id, those under the
    rate while their tokens fit the cap, else the lowest; never all of them."""
    by_key = sorted(
        (int.from_bytes(hashlib.sha256(f"{stream}/{doc_id}".encode()).digest()[:8], "big"), doc_id)
        for doc_id in documents
    )
    held, total = set(), 0
    for doc_key, doc_id in by_key:
        if doc_key >= rate * KEY_SPACE or total + documents[doc_id] > cap or len(held) + 1 == len(documents):
            break
        held.add(doc_id)
        total += documents[doc_id]
    if not held and len(documents) >= 2:
        held = {by_key[0][1]}
    return held


def test_the_heldout_set_is_the_streams_own_whatever_the_tasks_and_workers(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.build.HELDOUT_RATE", RATE)
    monkeypatch.setattr("pipeline.build.HELDOUT_TOKENS", CAP)
    hub = tmp_path / "hub"
    heldout_hub(hub)
    one_dir, one = build(hub, tmp_path / "one", tasks=1)
    three_dir, three = build(hub, tmp_path / "three", tasks=3, workers=2)

    def heldout_ids(phase_dir: Path, stats: dict) -> dict[str, set[str]]:
        return {
            f"{s['source']}/{s['language']}": set(rows(phase_dir, s["heldout"])) for s in stats["streams"]
        }

    assert heldout_ids(one_dir, one) == heldout_ids(three_dir, three)
    for stream in three["streams"]:
        name = f"{stream['source']}/{stream['language']}"
        training, heldout = rows(three_dir, stream["shards"]), rows(three_dir, stream["heldout"])
        assert not set(training) & set(heldout)
        assert set(heldout) == expected_heldout(name, {**training, **heldout})
        assert stream["heldout_tokens"] == sum(heldout.values()) <= CAP
        assert stream["documents_heldout"] == len(heldout)
        assert stream["documents_kept"] == len(training) + len(heldout)
        assert stream["documents_read"] == stream["documents_kept"] + sum(stream["drops"].values())
        assert stream["tokens"] == sum(training.values())
    by_stream = {s["language"]: s for s in three["streams"]}
    assert len(rows(three_dir, by_stream["fra_Latn"]["heldout"])) == 4  # the cap binds before the rate
    assert by_stream["deu_Latn"]["documents_heldout"] == 1  # of two, in two tasks
    assert (by_stream["rus_Cyrl"]["documents_kept"], by_stream["rus_Cyrl"]["documents_heldout"]) == (1, 0)
    # built again from scratch, by one worker: the same held-out shards, byte for byte
    again_dir, again = build(hub, tmp_path / "three", tasks=3, overwrite=True)
    assert [s["heldout"] for s in again["streams"]] == [s["heldout"] for s in three["streams"]]
    assert [s["shards"] for s in again["streams"]] == [s["shards"] for s in three["streams"]]


def test_heldout_shards_are_found_read_and_checked_but_never_trained_on(tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub)  # every source of the phase, so that its mixture compiles
    phase_dir, stats = build(hub, tmp_path / "out", tasks=2, dedup=False, sources=None)
    for stream in stats["streams"]:  # the build's own rate and cap
        documents = {**rows(phase_dir, stream["shards"]), **rows(phase_dir, stream["heldout"])}
        name = f"{stream['source']}/{stream['language']}"
        heldout = expected_heldout(name, documents, HELDOUT_RATE, HELDOUT_TOKENS)
        assert set(rows(phase_dir, stream["heldout"])) == heldout
    counts = read_stats(phase_dir)
    found = heldout_shards(counts)
    assert set(found) == {(s["source"], s["language"]) for s in stats["streams"]}  # each has two or more
    for (source, language), paths in found.items():
        assert all(path.parent == phase_dir / "heldout" / source / language for path in paths)
        for path in paths:
            assert len(datasets.Dataset.from_file(str(path))) >= 1
            metadata = pa.ipc.open_stream(path.read_bytes()).schema.metadata
            assert metadata[b"mmbert.language"].decode() == language
    manifest = build_manifest(
        compile_phase(load_recipe(), "pretrain", counts, tokens=10_000), load_recipe(), counts, seed=0
    )
    listed = {shard["path"] for stream in manifest["streams"] for shard in stream["shards"]}
    heldout = {shard["path"] for stream in stats["streams"] for shard in stream["heldout"]}
    assert listed and heldout and not listed & heldout
    assert not any(path.startswith("heldout/") for path in listed)

    shown = runner.invoke(app, ["stats", str(phase_dir)])
    assert shown.exit_code == 0, shown.output
    header = next(line for line in shown.output.splitlines() if "read" in line)
    assert [cell.strip() for cell in header.split("┃")[3:6]] == ["read", "kept", "held out"]
    total = sum(s["documents_heldout"] for s in stats["streams"])
    tokens = sum(s["heldout_tokens"] for s in stats["streams"])
    assert total == len(stats["streams"]) and tokens > 0  # one each: none of these falls under the rate
    line = f"held out for evaluation, never trained on: {total} documents, {format_tokens(tokens)} tokens"
    assert f"{line} in {total} shards under {phase_dir / 'heldout'}" in " ".join(shown.output.split())
    (path,) = found["fineweb2", "deu_Latn"]
    verified = runner.invoke(app, ["inspect", str(path), "--verify"])
    assert verified.exit_code == 0, verified.output

    path.write_bytes(path.read_bytes()[:-10])
    size = path.stat().st_size
    recorded = next(s for s in counts.streams if s.language == "deu_Latn").heldout[0]["bytes"]
    assert changed_shards(read_stats(phase_dir)) == [
        f"changed shard: {path.relative_to(phase_dir)} has {size:,} bytes, stats.json records {recorded:,}"
    ]
    assert json.loads((phase_dir / "stats.json").read_text())["version"] == STATS_VERSION
