"""Near-duplicate removal per language with datatrove's MinHash stages.

The build runs datatrove's four MinHash stages (signatures, buckets, clusters,
filter) unchanged, with two small additions:

* :class:`LanguageScopedSignature` XORs every shingle hash with a hash of the
  document's language. XOR with a constant is a bijection, so similarities within
  a language are exactly those of plain MinHash, while documents of different
  languages share no shingles: one pass deduplicates each language on its own.
* :class:`StreamMinhashFilter` counts the removed documents per (source, language).

Shingles are 5-grams of the fast script-aware split (``pipeline.words.SHINGLE_WORDS``), not of
the filters' per-language segmenters: near-duplicate detection needs a stable split more than
a linguistic one, and for scripts written without spaces it gives 5-character shingles, the
usual choice there, at a fraction of a segmenter's cost.

Stage 1 writes the filtered documents of each task to ``_work/filtered`` next to
their signatures; stage 4 reads the same task's file back in the same order, which
is what MinHash's per-task document indices require.

:class:`Rehydrate` implements FineWeb2's optional "rehydration": a document is
repeated according to the ``minhash_cluster_size`` FineWeb2 published for it
(1->1, 2->2, 3-4->3, 5-99->5, 100-999->8, >=1000->1); sources without the column
count as size 1.
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.readers import JsonlReader

from pipeline.heldout import HELDOUT
from pipeline.streams import DROPPED, stream_label
from pipeline.words import SHINGLE_WORDS


class LanguageScopedSignature(MinhashDedupSignature):
    """MinHash signatures whose shingles are scoped to the document's language."""

    def __init__(self, output_folder, config=None):
        super().__init__(output_folder, config=config, language=SHINGLE_WORDS)
        self._scope = np.uint64(0)

    def get_shingles(self, text: str) -> np.ndarray:
        return super().get_shingles(text) ^ self._scope

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        def scoped(docs: DocumentsPipeline) -> DocumentsPipeline:
            for doc in docs:  # the parent hashes each document right after pulling it from here
                self._scope = np.uint64(
                    int.from_bytes(
                        hashlib.blake2b(doc.metadata["language"].encode(), digest_size=8).digest(), "little"
                    )
                )
                yield doc

        return super().run(scoped(data), rank, world_size)


class _DropCounter(contextlib.AbstractContextManager):
    """Stands in for MinhashDedupFilter's exclusion writer: counts drops, then forwards them."""

    def __init__(self, step: PipelineStep, writer=None):
        self.step = step
        self.writer = writer

    def __enter__(self):
        if self.writer is not None:
            self.writer.__enter__()
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            return self.writer.__exit__(*exc)
        return None

    def write(self, doc: Document, rank: int = 0) -> None:
        self.step.stat_update(stream_label(doc, DROPPED, "near_duplicate"))
        if self.writer is not None:
            doc.metadata["filter_reason"] = "near_duplicate"
            self.writer.write(doc, rank)


class StreamMinhashFilter(MinhashDedupFilter):
    """MinHash stage 4, counting removed near-duplicates per (source, language) stream."""

    def __init__(self, input_folder, exclusion_writer=None):
        super().__init__(input_folder)
        self.exclusion_writer = _DropCounter(self, exclusion_writer)


class RankFileReader(JsonlReader):
    """Reads back exactly the file that the same task wrote in an earlier stage (``{rank:05d}.jsonl.gz``)."""

    name = "📖 task file"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = f"{rank:05d}.jsonl.gz"
        if self.data_folder.exists(path):
            yield from self.read_file(path)


def rehydration_copies(cluster_size: int) -> int:
    """FineWeb2's repetition count for a document from a MinHash cluster of this size."""
    if cluster_size <= 2:
        return max(cluster_size, 1)
    if cluster_size <= 4:
        return 3
    if cluster_size <= 99:
        return 5
    if cluster_size <= 999:
        return 8
    return 1


REPETITION = "repetition"  # metadata key of a rehydrated copy: its number, 1..copies-1


class Rehydrate(PipelineStep):
    """Repeats documents by FineWeb2's cluster size; copies get ids ``{id}#rN``.

    A copy carries ``metadata["repetition"] = N``, so that the writer counts it as a repetition,
    not as a document kept: ``read == kept + sum(drops)`` holds with or without
    rehydration. It runs after the tokenizer (a copy shares its original's token ids, made before
    the writer takes them) and after the held-out split, so a held-out document, which is never
    trained on, is not repeated.
    """

    name = "💧 rehydrate"
    type = "🫂 - DEDUP"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            cluster_size = int(doc.metadata.get("minhash_cluster_size") or 1)
            repeated = []
            for copy in range(1, 1 if doc.metadata.get(HELDOUT) else rehydration_copies(cluster_size)):
                self.stat_update("copies")
                metadata = {**doc.metadata, REPETITION: copy}
                repeated.append(Document(text=doc.text, id=f"{doc.id}#r{copy}", metadata=metadata))
            yield doc
            yield from repeated
