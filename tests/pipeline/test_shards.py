"""The tokenize+write steps on their own: shard rotation, resume cleanup, rehydration."""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import pytest
from datatrove.data import Document

from pipeline.dedup import Rehydrate, rehydration_copies
from pipeline.shards import ArrowShardWriter
from pipeline.tokenizer import BatchTokenizer, load_tokenizer
from tests.corpus import prose, small_hub


@pytest.fixture
def tokenizer(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(tmp_path / "cache"))
    small_hub(tmp_path / "hub")
    return f"sample:{tmp_path / 'hub'}"


def _write(
    phase_dir: Path, tokenizer: str, docs: list[Document], shard_bytes: int, rank: int = 0, prefix: str = ""
) -> None:
    loaded = load_tokenizer(tokenizer)
    writer = ArrowShardWriter(str(phase_dir), "decay", loaded.name, loaded.sha256, shard_bytes, prefix)
    for _ in writer.run(BatchTokenizer(tokenizer, batch_size=7).run(iter(docs)), rank=rank):
        pass


def test_shards_rotate_at_the_size_bound_and_keep_document_order(tmp_path, tokenizer):
    rng = random.Random(0)
    docs = [
        Document(prose(rng, "fra_Latn"), f"doc-{i}", metadata={"source": "fineweb2", "language": "fra_Latn"})
        for i in range(40)
    ]
    _write(tmp_path / "out", tokenizer, docs, shard_bytes=4_000)
    shards = sorted((tmp_path / "out" / "fineweb2" / "fra_Latn").glob("*.arrow"))
    assert len(shards) > 3
    ids = [i for path in shards for i in datasets.Dataset.from_file(str(path))["id"]]
    assert ids == [d.id for d in docs]
    index = json.loads((tmp_path / "out" / "_shards" / "00000.json").read_text())
    assert [Path(s["path"]).name for s in index] == [p.name for p in shards]
    assert all(s["bytes"] == (tmp_path / "out" / s["path"]).stat().st_size for s in index)


def test_a_rerun_task_replaces_what_its_earlier_attempt_left(tmp_path, tokenizer):
    out = tmp_path / "out"
    stale = out / "fineweb2" / "deu_Latn"
    stale.mkdir(parents=True)
    (stale / "00003-0000.arrow").write_bytes(b"from an earlier attempt")
    (stale / "00003-0001.arrow.tmp").write_bytes(b"half written")
    (stale / "00004-0000.arrow").write_bytes(b"another task's shard")
    doc = Document("Ein kurzer Satz.", "x", metadata={"source": "fineweb2", "language": "fra_Latn"})
    _write(out, tokenizer, [doc], shard_bytes=1 << 20, rank=3)
    assert sorted(p.name for p in stale.iterdir()) == ["00004-0000.arrow"]
    assert (out / "fineweb2" / "fra_Latn" / "00003-0000.arrow").exists()


def test_heldout_documents_get_shards_of_their_own_and_a_stages_rerun_removes_only_its_own(
    tmp_path, tokenizer
):
    out = tmp_path / "out"
    rng = random.Random(1)

    def docs(ids: range) -> list[Document]:
        meta = {"source": "fineweb2", "language": "fra_Latn"}
        return [
            Document(prose(rng, "fra_Latn"), f"doc-{i}", metadata={**meta, "heldout": i % 2 == 0})
            for i in ids
        ]

    _write(
        out,
        tokenizer,
        [Document("Un texte.", "w", metadata={"source": "fineweb2", "language": "fra_Latn"})],
        1 << 20,
    )
    stale = out / "heldout" / "fineweb2" / "deu_Latn"  # what a killed attempt of the same stage's task left
    stale.mkdir(parents=True)
    (stale / "c00000-0000.arrow").write_bytes(b"from an earlier attempt")
    (stale / "c00000-0001.arrow.tmp").write_bytes(b"half written")
    _write(out, tokenizer, docs(range(4)), 1 << 20, prefix="c")
    training, heldout = out / "fineweb2" / "fra_Latn", out / "heldout" / "fineweb2" / "fra_Latn"
    assert sorted(p.name for p in training.iterdir()) == ["00000-0000.arrow", "c00000-0000.arrow"]
    assert datasets.Dataset.from_file(str(training / "c00000-0000.arrow"))["id"] == ["doc-1", "doc-3"]
    assert datasets.Dataset.from_file(str(heldout / "c00000-0000.arrow"))["id"] == ["doc-0", "doc-2"]
    assert list(stale.iterdir()) == []
    index = json.loads((out / "_shards" / "c00000.json").read_text())
    assert [(s["path"], s["heldout"]) for s in index] == [
        ("heldout/fineweb2/fra_Latn/c00000-0000.arrow", True),
        ("fineweb2/fra_Latn/c00000-0000.arrow", False),
    ]
    assert (out / "_shards" / "00000.json").exists()  # the other stage's index stays


@pytest.mark.parametrize(
    ("size", "copies"), [(1, 1), (2, 2), (3, 3), (4, 3), (5, 5), (99, 5), (100, 8), (999, 8), (1000, 1)]
)
def test_rehydration_follows_fineweb2(size, copies):
    assert rehydration_copies(size) == copies


def test_rehydrate_repeats_documents_with_distinct_ids():
    docs = [
        Document("a", "a", metadata={"minhash_cluster_size": 3}),
        Document("b", "b", metadata={}),
    ]
    assert [d.id for d in Rehydrate().run(iter(docs))] == ["a", "a#r1", "a#r2", "b"]
    heldout = Document("c", "c", metadata={"minhash_cluster_size": 3, "heldout": True})
    assert [d.id for d in Rehydrate().run(iter([heldout]))] == ["c"]  # never trained on, so never repeated
