"""The shard-format shortcuts validate takes over 100k+ shards: each must say what pyarrow says, or
nothing (None / False, and the caller takes the full path)."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.ipc
import pytest

from mixtures.errors import MixtureError
from mixtures.formats import (
    SHARD_SCHEMA,
    _first_malformed,
    _plain_entries,
    batch_layout,
    check_shards,
    schema_message,
    shard_counts,
    shard_entries,
)

SHA = "0123456789abcdef" * 4


def shard(*batches: list[list[int]]) -> bytes:
    """An IPC stream of the shard schema with one record batch per list of documents."""
    sink = pa.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, SHARD_SCHEMA) as writer:
        for documents in batches:
            ids = [f"doc-{i}" for i in range(len(documents))]
            writer.write_table(pa.table({"id": ids, "input_ids": documents}, schema=SHARD_SCHEMA))
    return sink.getvalue().to_pybytes()


def pyarrow_counts(data: bytes) -> tuple[int, int] | str:
    try:
        return shard_counts(pyarrow.ipc.open_stream(pa.py_buffer(data)))
    except Exception as err:  # what pyarrow makes of a damaged stream, whatever it raises
        return type(err).__name__


def test_a_learnt_layout_reads_the_counts_of_other_shards_of_the_schema():
    learnt = shard([[2, 17, 1]])
    schema = schema_message(learnt)
    assert schema == schema_message(shard([[5]], [[6, 7]]))
    layout = batch_layout(learnt, len(schema))
    for data in (learnt, shard(), shard([[1] * 300, []], [], [[4, 4]] * 9)):
        assert layout.counts(data, len(schema)) == pyarrow_counts(data)
    assert layout.counts(shard([[1] * 300, []], [[4, 4]] * 9), len(schema)) == (11, 318)
    assert batch_layout(shard(), len(schema)) is None  # no batch to learn from


def test_a_layout_reads_no_damaged_shard_otherwise_than_pyarrow():
    learnt = shard([[2, 17, 1]])
    start = len(schema_message(learnt))
    layout = batch_layout(learnt, start)
    rng = random.Random(0)
    refused = 0
    for base in (learnt, shard([[3, 4], [5]], [[6]])):
        for _ in range(3000):
            data = bytearray(base)
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(start, len(data))] = rng.randrange(256)
            if rng.random() < 0.1:
                del data[rng.randrange(start, len(data)) :]
            counts = layout.counts(bytes(data), start)
            refused += counts is None
            theirs = pyarrow_counts(bytes(data))
            assert counts is None or counts == theirs or theirs == "SystemError", (bytes(data), theirs)
    assert refused > 1000  # most damage is refused here, for pyarrow to word


def test_shard_lists_checked_in_bulk_agree_with_the_entry_by_entry_check():
    good = {"path": "a/0.arrow", "documents": 1, "tokens": 2, "bytes": 3, "sha256": SHA}
    assert _plain_entries([good, dict(good)]) and _plain_entries([])
    variants = [
        {**good, "path": "/abs"},
        {**good, "path": ""},
        {**good, "path": 5},
        {**good, "tokens": -1},
        {**good, "bytes": True},
        {**good, "documents": "1"},
        {**good, "sha256": SHA.upper()},
        {**good, "sha256": SHA[:-1]},
        {**good, "sha256": SHA[:-1] + "é"},
        ["a/0.arrow", 1, 2, 3, SHA],
    ]
    for bad in variants:
        assert not _plain_entries([good, bad])
        assert _first_malformed([good, bad]) == 1
        with pytest.raises(MixtureError, match=r"shards\[1\]"):
            check_shards([good, bad], "stats.json")
    old = {key: value for key, value in good.items() if key != "documents"}  # before documents were kept
    extra = {**good, "note": "x"}
    assert not _plain_entries([old]) and not _plain_entries([extra])
    check_shards([good, old, extra], "stats.json")
    assert shard_entries([good, old, extra], "stats.json") == (good, old, good)
