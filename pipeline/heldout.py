"""Held-out data: a small, deterministic share of every (source, language) stream, never trained on.

Which documents are held out is decided from a hash of each document's stream and id,
``key = sha256("{source}/{language}/{id}")`` read as a 64-bit number, among the documents that
would otherwise be trained on (after the filters and deduplication, before rehydration, so a
repeated copy is never trained on while its original is held out). Ordering a stream's documents
by key, its held-out set is:

- the documents whose key falls under ``HELDOUT_RATE`` of the key space, lowest key first, for as
  long as their tokens add up to at most ``HELDOUT_TOKENS``;
- where none is under the rate (a small stream), its document with the lowest key: every stream
  that can spare one has one to evaluate on;
- never all of a stream's documents (a stream of one document holds none out), and never a
  document of more than ``HELDOUT_TOKENS`` tokens, so the cap always holds.

The set depends on the stream's documents alone, not on how the input is split into tasks or
how many run at once, nor on their order. (Which member of a near-duplicate cluster survives
deduplication is datatrove's MinHash choice, which follows task order; the held-out set is chosen
among the survivors.) It needs the whole stream's keys and token counts,
which no task has, so it is made in three steps:

1. :class:`HeldOutCandidates`, in the last data stage, right after tokenizing: every document
   that could be held out, whatever the other tasks hold, is a candidate: those under the rate,
   and those with the lowest key the task has seen so far in their stream (one of them is the
   stream's lowest, should the stream have none under the rate). Candidates are put aside, as
   text, in ``_work/heldout/candidates/{task}.jsonl.gz``; the other documents go on to the
   training shards. Each task lists its streams' document counts and the keys and token counts
   of the candidates that can matter (``_work/heldout/index/{task}.json``).
2. :class:`HeldOutSelection`, stage ``select`` (one task), reads those lists and records each
   stream's highest held-out key (``_work/heldout/selection.json``).
3. :class:`HeldOutSplit`, stage ``heldout`` (a task per task of the data stage), reads its
   task's candidates back and marks those at or under their stream's highest key as held out;
   they are tokenized again and written as held-out shards (``heldout/{source}/{language}/``),
   the others go back to training (shards ``c{task}-{seq}.arrow``).

Both the candidates and the documents returned to training are about ``HELDOUT_RATE`` of the
data (plus a few documents per task and stream): the extra work is that share tokenized twice.

``HELDOUT_RATE`` is 0.5%: a stream of 10,000 documents holds out about 50. ``HELDOUT_TOKENS`` is
1M tokens: a masked-LM loss over 1M tokens is precise to well under 0.01 nats, while it caps the
held-out set of a real build. Over FineWeb2's 1,913 language-script subsets (its published size
table) it holds out about 150M tokens in 145k documents (0.003% of 5.6T tokens, 1.9B at most
even if every subset reached the cap); the cap binds for the 110 subsets above 200M tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter

from mixtures.files import write_atomic
from pipeline.streams import stream_key

HELDOUT_RATE = 0.005
HELDOUT_TOKENS = 1_000_000
HELDOUT = "heldout"  # metadata key: True for a document the heldout stage holds out
KEY_SPACE = 2**64


def heldout_key(doc: Document) -> int:
    """The document's place in its stream's held-out order: a 64-bit hash of its stream and id."""
    digest = hashlib.sha256(f"{stream_key(doc)}/{doc.id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def highest_heldout_key(
    candidates: Iterable[tuple[int, int]], rate: float, cap: int, documents: int | None = None
) -> tuple[int | None, int | None]:
    """Walk ``(key, tokens)`` candidates by key as the module docstring says: returns the highest key
    held out (None: none) and the key the walk stopped at (None: it did not stop before the end).

    ``documents``: the stream's, one of which at least stays for training (None: not known, as in
    one task's view). Documents sharing a key (the same id twice in a stream) are taken or left
    together.
    """
    by_key: dict[int, list[int]] = defaultdict(list)
    for key, tokens in candidates:
        by_key[key].append(tokens)
    rate_key = int(rate * KEY_SPACE)
    most = len(by_key) if documents is None else documents - 1
    total = taken = 0
    highest = None
    for key in sorted(by_key):
        total, taken = total + sum(by_key[key]), taken + len(by_key[key])
        if total > cap or taken > most or (highest is not None and key >= rate_key):
            return highest, key
        highest = key
        if key >= rate_key:  # none under the rate: the lowest key alone
            break
    return highest, None


@dataclass
class _TaskStream:
    """What one task saw of one stream: its documents, its lowest key, its candidates."""

    documents: int = 0
    lowest: int = KEY_SPACE
    candidates: list[tuple[int, int]] = field(default_factory=list)

    def listed(self, rate: float, cap: int) -> list[tuple[int, int]]:
        """The candidates the selection can need: those the walk takes over this task's alone and the
        one it stops at (the whole stream's walk takes no more than each task's walk, plus one)."""
        highest, stop = highest_heldout_key(self.candidates, rate, cap)
        bound = max((key for key in (highest, stop) if key is not None), default=-1)
        return sorted(candidate for candidate in self.candidates if candidate[0] <= bound)


class HeldOutCandidates(PipelineStep):
    """Puts aside every document that could be held out (step 1 of the module docstring).

    Runs after the tokenizer, for the token counts; candidates are written as text, without
    their token ids, and are tokenized again by the ``heldout`` stage.
    """

    name = "🎯 held-out candidates"
    type = "🔀 - SPLIT"

    def __init__(self, work_dir: str, rate: float, tokens: int):
        super().__init__()
        self.work_dir = work_dir
        self.rate = rate
        self.tokens = tokens
        self.writer = JsonlWriter(f"{work_dir}/candidates", output_filename="${rank}.jsonl.gz")

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        streams: dict[str, _TaskStream] = defaultdict(_TaskStream)
        rate_key = int(self.rate * KEY_SPACE)
        with self.writer as writer:
            for doc in data:
                with self.track_time():
                    stream = streams[stream_key(doc)]
                    stream.documents += 1
                    tokens = len(doc.metadata["input_ids"])
                    key = heldout_key(doc)
                    candidate = tokens <= self.tokens and (key < rate_key or key <= stream.lowest)
                    if candidate:
                        stream.lowest = min(stream.lowest, key)
                        stream.candidates.append((key, tokens))
                        del doc.metadata["input_ids"]
                        writer.write(doc, rank)
                        self.stat_update("candidates")
                if not candidate:
                    yield doc
        index = {
            name: {"documents": stream.documents, "candidates": stream.listed(self.rate, self.tokens)}
            for name, stream in sorted(streams.items())
        }
        path = Path(self.work_dir) / "index" / f"{rank:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(index))


class HeldOutSelection(PipelineStep):
    """Stage ``select`` (one task): each stream's highest held-out key, from every task's candidate list."""

    name = "🎯 held-out selection"
    type = "🔀 - SPLIT"

    def __init__(self, work_dir: str, rate: float, tokens: int):
        super().__init__()
        self.work_dir = work_dir
        self.rate = rate
        self.tokens = tokens

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        documents: dict[str, int] = defaultdict(int)
        candidates: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for index in sorted((Path(self.work_dir) / "index").glob("*.json")):
            for stream, listed in json.loads(index.read_text()).items():
                documents[stream] += listed["documents"]
                candidates[stream].extend(map(tuple, listed["candidates"]))
        selection = {}
        for stream in sorted(documents):
            highest, _ = highest_heldout_key(candidates[stream], self.rate, self.tokens, documents[stream])
            if highest is not None:
                selection[stream] = highest
        write_atomic(Path(self.work_dir) / "selection.json", json.dumps(selection, indent=1))
        yield from data or ()


class HeldOutSplit(PipelineStep):
    """Stage ``heldout``: marks each candidate held out (``metadata["heldout"]``) or not, by the selection."""

    name = "🎯 held-out split"
    type = "🔀 - SPLIT"

    def __init__(self, work_dir: str):
        super().__init__()
        self.work_dir = work_dir

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        selection = json.loads((Path(self.work_dir) / "selection.json").read_text())
        for doc in data:
            highest = selection.get(stream_key(doc))
            doc.metadata[HELDOUT] = highest is not None and heldout_key(doc) <= highest
            yield doc
