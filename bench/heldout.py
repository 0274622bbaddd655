"""A build phase directory holding only held-out documents, written with the on-disk formats alone
(``mixtures.formats``): what ``mmbert-train eval`` reads, without running the data pipeline. For
``bench/eval.py`` and the evaluation tests, which choose the documents."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from mixtures.formats import SHARD_SCHEMA, STATS_FORMAT, STATS_VERSION, shard_metadata

PHASE = "decay"


def write_heldout_build(
    root: Path, documents: dict[tuple[str, str], list[np.ndarray]], tokenizer: dict
) -> Path:
    """``root`` as the phase directory of a build whose every stream (``(source, language)`` -> its
    documents' token ids) is one held-out shard, ids ``LANGUAGE/i``; ``tokenizer`` is stats.json's
    record (name, sha256, vocab_size, special_ids). Returns ``root``."""
    entries = []
    for (source, language), rows in documents.items():
        relative = f"heldout/{source}/{language}/00000.arrow"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = shard_metadata(tokenizer["name"], tokenizer["sha256"], source, language, PHASE)
        schema = SHARD_SCHEMA.with_metadata(metadata)
        ids = [f"{language}/{i}" for i in range(len(rows))]
        table = pa.table({"id": ids, "input_ids": [row.astype(np.uint32) for row in rows]}, schema=schema)
        with pa.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table)
        data = path.read_bytes()
        tokens = sum(len(row) for row in rows)
        shard = {
            "path": relative,
            "documents": len(rows),
            "tokens": tokens,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        stream = {"source": source, "language": language, "tokens": 0, "shards": []}
        entries.append({**stream, "heldout_tokens": tokens, "heldout": [shard]})
    stats = {
        "format": STATS_FORMAT,
        "version": STATS_VERSION,
        "phase": PHASE,
        "recipe": {"path": "mmbert.yaml", "sha256": "0" * 64},
        "tokenizer": tokenizer,
        "streams": entries,
    }
    (root / "stats.json").write_text(json.dumps(stats))
    return root
