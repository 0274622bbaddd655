"""Stream accounting: what happens to the documents of each (source, language) stream.

Every step counts with datatrove's ``stat_update`` under one label grammar, which the
executor saves per task and :mod:`pipeline.stats` adds up into ``stats.json``::

    stream/{source}/{language}/{counter}[/{detail}]

``counter`` is ``read`` (documents entering the build), ``kept`` (passed every filter and
deduplication, written once), ``heldout`` (those of the kept written to the held-out shards,
:mod:`pipeline.heldout`, not for training), ``repeated`` (rehydration's extra copies), ``tokens``
and ``bytes`` (of what was written for training), ``heldout_tokens``, ``dropped`` with the reason
as detail, or ``skipped`` with the quality rule not applied as detail. ``read == kept +
sum(dropped)``. Labels are made by
:func:`stream_label` and read back by :func:`parse_label`, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import NamedTuple

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result

PREFIX = "stream"
DROPPED = "dropped"
SKIPPED = "skipped"


class StreamLabel(NamedTuple):
    """One stats label, parsed: the stream, the counter and its detail (a reason or rule, or None)."""

    source: str
    language: str
    counter: str
    detail: str | None


def stream_key(doc: Document) -> str:
    """The (source, language) stream a document belongs to, as ``{source}/{language}``."""
    return f"{doc.metadata.get('source')}/{doc.metadata.get('language')}"


def stream_label(doc: Document, counter: str, detail: str | None = None) -> str:
    """The stats label counting ``counter`` (and its reason or rule ``detail``) for ``doc``'s stream."""
    label = f"{PREFIX}/{stream_key(doc)}/{counter}"
    return label if detail is None else f"{label}/{detail}"


def parse_label(label: str) -> StreamLabel | None:
    """A stats label of the stream grammar as its parts; None for labels of other counters."""
    if not label.startswith(f"{PREFIX}/"):
        return None
    _, source, language, counter, *detail = label.split("/", 4)
    return StreamLabel(source, language, counter, detail[0] if detail else None)


class StreamCounter(PipelineStep):
    """Counts documents per (source, language) stream under one counter and passes them on."""

    name = "🧮 count"
    type = "📊 - STATS"

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update(stream_label(doc, self.label))
            yield doc


class StreamFilter(BaseFilter):
    """A filter that also counts its drops per (source, language) stream and reason."""

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        results = super().filter_batch(batch)
        for doc, result in zip(batch, results, strict=True):
            keep, reason = get_filter_result(result)
            if not keep:
                self.stat_update(stream_label(doc, DROPPED, reason or self.name))
        return results
