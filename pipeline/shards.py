"""Writing tokenized documents as per-language Arrow shards.

Layout: ``{phase_dir}/{source}/{lang_Script}/{rank:05d}-{seq:04d}.arrow``, and held-out
documents (``pipeline.heldout``) under ``{phase_dir}/heldout/{source}/{lang_Script}/``; a writer's
``prefix`` starts its file names, so that two stages' tasks of one rank never share a name. One Arrow
IPC *stream* file per shard, one row per document: ``id: string`` and
``input_ids: list<uint32>`` (bos + tokens + eos). The schema metadata names the
tokenizer (name and SHA-256), source, language and phase, so a shard describes
itself. ``datasets.Dataset.from_file`` memory-maps these files directly.

Shards are written under a temporary name (``mixtures.files.temporary_path``) and
renamed when complete, so a final name always holds a complete file. A task starts by
removing what an earlier, interrupted attempt of the same task left, so a rerun produces
the same shards as an uninterrupted run. Each task lists its shards in ``_shards/{prefix}{rank:05d}.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from mixtures.files import temporary_path, temporary_pattern, write_atomic
from mixtures.formats import HELDOUT_DIR, SHARD_SCHEMA, shard_metadata
from pipeline.dedup import REPETITION
from pipeline.heldout import HELDOUT
from pipeline.streams import stream_label

FLUSH_DOCS = 1024
MAX_OPEN_SHARDS = 64


@dataclass
class ShardInfo:
    """One finished shard, as listed in the task index and in stats.json."""

    path: str  # relative to the phase directory
    source: str
    language: str
    documents: int
    tokens: int
    bytes: int
    sha256: str
    heldout: bool  # a held-out shard, never trained on


class _OpenShard:
    """A shard being written: rows are buffered and flushed as record batches."""

    def __init__(self, final: Path, metadata: dict[bytes, bytes]):
        self.final = final
        self.tmp = temporary_path(final)
        self.writer = pa.ipc.new_stream(str(self.tmp), SHARD_SCHEMA.with_metadata(metadata))
        self.ids: list[str] = []
        self.arrays: list[np.ndarray] = []
        self.documents = self.tokens = self.size = 0

    def add(self, doc_id: str, input_ids: np.ndarray) -> None:
        self.ids.append(doc_id)
        self.arrays.append(input_ids)
        self.documents += 1
        self.tokens += len(input_ids)
        self.size += 4 * len(input_ids) + len(doc_id) + 8
        if len(self.ids) >= FLUSH_DOCS:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        offsets = np.zeros(len(self.arrays) + 1, dtype=np.int32)
        np.cumsum([len(a) for a in self.arrays], out=offsets[1:])
        values = pa.array(np.concatenate(self.arrays), type=pa.uint32())
        column = pa.ListArray.from_arrays(pa.array(offsets), values)
        self.writer.write_batch(
            pa.record_batch([pa.array(self.ids, pa.string()), column], schema=SHARD_SCHEMA)
        )
        self.ids, self.arrays = [], []

    def close(self) -> str:
        """Finish the file, rename it to its final name and return its SHA-256."""
        self.flush()
        self.writer.close()
        with open(self.tmp, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        os.replace(self.tmp, self.final)
        return digest


class ArrowShardWriter(PipelineStep):
    """Writes tokenized documents into per-(source, language) Arrow shards that rotate at a size bound;
    held-out documents (``metadata["heldout"]``) into held-out shards, counted apart."""

    name = "💾 arrow shards"
    type = "💽 - WRITER"

    def __init__(
        self,
        phase_dir: str,
        phase: str,
        tokenizer_name: str,
        tokenizer_sha256: str,
        shard_bytes: int,
        prefix: str = "",
    ):
        super().__init__()
        self.phase_dir = Path(phase_dir)
        self.phase = phase
        self.tokenizer_name = tokenizer_name
        self.tokenizer_sha256 = tokenizer_sha256
        self.shard_bytes = shard_bytes
        self.prefix = prefix

    def _remove_earlier_attempt(self, rank: int) -> None:
        """Remove the task's shards and index, finished or still under their temporary names."""
        shards, index = f"{self.prefix}{rank:05d}-*.arrow", f"{self.prefix}{rank:05d}.json"
        for pattern in (
            f"*/*/{shards}*",
            f"*/*/{temporary_pattern(shards)}",
            f"{HELDOUT_DIR}/*/*/{shards}*",
            f"{HELDOUT_DIR}/*/*/{temporary_pattern(shards)}",
            f"_shards/{index}",
            f"_shards/{temporary_pattern(index)}",
        ):
            for path in self.phase_dir.glob(pattern):
                path.unlink()

    def _open(self, source: str, language: str, heldout: bool, rank: int, seq: int) -> _OpenShard:
        directory = (self.phase_dir / HELDOUT_DIR if heldout else self.phase_dir) / source / language
        directory.mkdir(parents=True, exist_ok=True)
        metadata = shard_metadata(self.tokenizer_name, self.tokenizer_sha256, source, language, self.phase)
        return _OpenShard(directory / f"{self.prefix}{rank:05d}-{seq:04d}.arrow", metadata)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._remove_earlier_attempt(rank)
        open_shards: dict[tuple[str, str, bool], _OpenShard] = {}
        next_seq: dict[tuple[str, str, bool], int] = {}
        finished: list[ShardInfo] = []

        def finish(key: tuple[str, str, bool]) -> None:
            shard = open_shards.pop(key)
            digest = shard.close()
            path = str(shard.final.relative_to(self.phase_dir))
            source, language, heldout = key
            size = shard.final.stat().st_size
            finished.append(
                ShardInfo(path, source, language, shard.documents, shard.tokens, size, digest, heldout)
            )

        for doc in data:
            with self.track_time():
                heldout = bool(doc.metadata.get(HELDOUT))
                key = (doc.metadata["source"], doc.metadata["language"], heldout)
                if key not in open_shards:
                    if len(open_shards) >= MAX_OPEN_SHARDS:  # bound open files: finish the oldest
                        finish(next(iter(open_shards)))
                    open_shards[key] = self._open(*key, rank, next_seq.get(key, 0))
                    next_seq[key] = next_seq.get(key, 0) + 1
                input_ids = doc.metadata.pop("input_ids")
                open_shards[key].add(doc.id, input_ids)
                if heldout:  # kept by every filter, set aside for evaluation
                    self.stat_update(stream_label(doc, "kept"), stream_label(doc, "heldout"))
                    self.stat_update(stream_label(doc, "heldout_tokens"), value=len(input_ids))
                else:
                    counter = "repeated" if doc.metadata.get(REPETITION) else "kept"
                    self.stat_update(stream_label(doc, counter))
                    self.stat_update(stream_label(doc, "tokens"), value=len(input_ids))
                    self.stat_update(stream_label(doc, "bytes"), value=len(doc.text.encode("utf-8")))
                if open_shards[key].size >= self.shard_bytes:
                    finish(key)
            yield doc
        for key in list(open_shards):
            finish(key)
        index = self.phase_dir / "_shards" / f"{self.prefix}{rank:05d}.json"
        index.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(index, json.dumps([asdict(info) for info in finished], indent=1))
