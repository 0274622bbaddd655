"""The training data of one phase: the manifest's streams, blended, chunked, packed and masked.

Reading. Each stream's shards (Arrow IPC stream files, see ``mixtures.formats``)
are memory-mapped on first use; a document is a zero-copy view of its token
ids. At most ``OPEN_SHARDS`` shards stay open. Shard row counts come from the
manifest, so nothing is opened before it is needed.

Order within a stream. Each epoch walks the stream in a fresh permutation,
seeded by (seed, stream, epoch): the shards in a permuted order, and the rows
of each shard permuted too (two levels, so no permutation of all of a stream's
documents is ever held). Epochs follow each other for as long as the phase
asks, so a stream whose target exceeds its data is repeated as the manifest's
``expected_epochs`` says.

Blending (:class:`Blend`). Stream ``s`` has weight ``w_s`` (its share of the
phase's tokens) and documents of mean length ``L_s``, so it supplies one
document every ``P_s = L_s / w_s`` tokens of the blend. Its ``k``-th document is
due at ``(k + 1/2) * P_s`` and documents are taken in order of due time (ties:
lower stream first): a deterministic, Megatron-style greedy blend that needs
neither an RNG nor a stored index. Because due times are a closed form, the
last document taken fixes every stream's position, so the blend's state is
three integers and resuming replays nothing.

Chunking. A document longer than ``seq_len`` is cut into pieces of ``seq_len``
tokens; the tail keeps the rest, however short (no token is dropped), and
every piece is its own sequence for attention and RoPE.

Steps (:class:`MixtureLoader`). A step's micro-batches hold the batch the
schedule asks for (``trainer.schedule.micro_batch_sizes``) and are filled by
``trainer.packing.pack`` from the blend. Every rank plans the whole step from
lengths alone (cheap: no token is read), then reads, assembles and masks only
its own micro-batches: rank ``r`` of ``N`` takes micro-batches ``r, r + N, ...``,
and micro-batch ``g`` is masked with a generator seeded by (seed, step, g).
The global batch is therefore the same for any number of ranks, ranks read
disjoint documents, and any step can be rebuilt from the loader's state:
(step, tokens seen, the blend's last document, the sequences carried over).
"""

from __future__ import annotations

import hashlib
import heapq
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from mixtures.cache import cache_dir as cache_root
from mixtures.formats import count_problems, input_ids_problem, schema_problems
from mixtures.manifest import Manifest, ShardEntry, StreamEntry, stream_metadata
from mixtures.storage import StorageError, cached_path, fetch, is_remote, join
from trainer.masking import Masking
from trainer.packing import PackedBatch, assemble, pack
from trainer.schedule import micro_batch_sizes

OPEN_SHARDS = 1024  # memory-mapped shards kept open at once (least recently used closed first)
MASK_STREAM = 1  # tags that keep the seeds of different random draws apart
SHARD_ORDER, ROW_ORDER = 2, 3


class DataError(ValueError):
    """Shards that do not match their manifest; the message names the file and field."""


class Chunk(NamedTuple):
    """One sequence: piece ``index`` of document ``doc`` (counted across epochs) of stream ``stream``."""

    stream: int
    doc: int
    index: int
    length: int


class ShardFile:
    """A memory-mapped shard: each document's length, id, and token ids as a zero-copy view.

    Its structure is checked on open (schema, counts against the manifest, offsets,
    id range: ``mixtures.formats``), so a damaged shard stops training with its name
    instead of being trained on; a same-size change of valid ids needs ``--verify``.
    """

    def __init__(
        self, root: Path, entry: ShardEntry, expected: dict[str, str | None], vocab_size: int | None
    ):
        path = str(root / entry.path)
        try:
            reader = pyarrow.ipc.open_stream(pa.memory_map(path))
            problems = schema_problems(reader.schema, entry.path, expected)
            if problems:
                raise DataError(problems[0])
            record_batches = list(reader)
        except (OSError, pa.ArrowInvalid) as err:
            raise DataError(f"{path}: not a readable shard: {err}") from err
        batches = [batch.column("input_ids") for batch in record_batches]
        self.ids = [batch.column("id") for batch in record_batches]  # mapped, read only when asked
        self.offsets = [column.offsets.to_numpy() for column in batches]
        self.values = [column.values.to_numpy() for column in batches]
        self.starts = np.cumsum([0] + [len(column) for column in batches])
        for offsets, values, start in zip(self.offsets, self.values, self.starts[:-1], strict=True):
            problem = input_ids_problem(path, offsets, values, int(start), vocab_size)
            if problem:
                raise DataError(problem)
        self.lengths = np.concatenate(
            [np.diff(offsets) for offsets in self.offsets] or [np.zeros(0, np.int32)]
        )
        found = (len(self.lengths), sum(len(values) for values in self.values))
        problems = count_problems(entry.path, (entry.documents, entry.tokens), found)
        if problems:
            raise DataError(problems[0])

    def tokens(self, row: int, start: int, stop: int) -> np.ndarray:
        """Token ids ``[start, stop)`` of document ``row`` (a view into the mapped file)."""
        batch = self._batch(row)
        base = int(self.offsets[batch][row - self.starts[batch]])
        return self.values[batch][base + start : base + stop]

    def document_id(self, row: int) -> str:
        """The ``id`` of document ``row`` (the build's stable id of the document)."""
        batch = self._batch(row)
        return self.ids[batch][row - int(self.starts[batch])].as_py()

    def _batch(self, row: int) -> int:
        return int(np.searchsorted(self.starts, row, side="right")) - 1


def piece_lengths(length: int, seq_len: int) -> list[int]:
    """The lengths of the pieces a document of ``length`` tokens is cut into: ``seq_len`` each, the
    last one the rest (see Chunking in the module docstring)."""
    return [min(seq_len, length - start) for start in range(0, length, seq_len)]


@dataclass
class Stream:
    """One manifest stream: its shards, its weight, and the walk of its documents epoch after epoch."""

    index: int
    entry: StreamEntry
    weight: float
    shard_rows: np.ndarray  # documents per shard
    seed: int
    key: int = field(init=False)  # a seed component that does not change when other streams come and go
    documents: int = field(init=False)  # in one epoch
    tokens: int = field(init=False)  # in one epoch
    _orders: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _rows: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self):
        self.key = int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:8], "little")
        self.documents = int(self.shard_rows.sum())
        self.tokens = sum(shard.tokens for shard in self.entry.shards)

    @property
    def name(self) -> str:
        return self.entry.name

    def locate(self, doc: int) -> tuple[int, int]:
        """``(shard, row)`` of the stream's ``doc``-th document (``doc`` counts across epochs)."""
        epoch, position = divmod(doc, self.documents)
        order, ends = self._cached(self._orders, epoch, lambda: self._shard_order(epoch))
        slot = int(np.searchsorted(ends, position, side="right"))
        shard = int(order[slot])
        offset = position - int(ends[slot] - self.shard_rows[shard])
        rows = self._cached(self._rows, (epoch, shard), lambda: self._row_order(epoch, shard))
        return shard, int(rows[offset])

    def _shard_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng([self.seed, SHARD_ORDER, self.key, epoch]).permutation(
            len(self.shard_rows)
        )
        return order, np.cumsum(self.shard_rows[order])

    def _row_order(self, epoch: int, shard: int) -> np.ndarray:
        generator = np.random.default_rng([self.seed, ROW_ORDER, self.key, epoch, shard])
        return generator.permutation(int(self.shard_rows[shard]))

    @staticmethod
    def _cached(cache: OrderedDict, key: Any, make: Callable[[], Any], size: int = 4) -> Any:
        if key not in cache:
            cache[key] = make()
            if len(cache) > size:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]


def shard_cache(cache_dir: str | Path | None) -> Path:
    """Where remote shards are fetched to (`mixtures.storage.fetch`): ``--cache-dir``, else
    ``MMBERT_DATA_CACHE/shards``. One per node is enough: its ranks share it."""
    return Path(cache_dir) if cache_dir else cache_root() / "shards"


def fetch_shard(root: str, shard: ShardEntry, cache_dir: Path) -> Path:
    """The local copy of ``shard`` of the data root ``root`` (a URL) in ``cache_dir``, fetched on first
    use (`mixtures.storage.fetch`: size and sha256 checked, once per node); DataError if that fails."""
    url = join(root, shard.path)
    try:
        path, downloaded = fetch(url, cache_dir, shard.bytes, shard.sha256)
    except StorageError as err:
        raise DataError(str(err)) from err
    if downloaded:
        say_fetched(url, shard.bytes)
    return path


def say_fetched(url: str, size: int) -> None:
    """The line a rank prints for each shard it downloads (a cached one is not mentioned)."""
    print(f"fetched {url} ({size:,} bytes)", file=sys.stderr, flush=True)


class MixtureData:
    """The manifest's streams with a non-zero target, and their shards (opened lazily)."""

    def __init__(self, manifest: Manifest, seed: int, cache_dir: str | Path | None = None):
        """``cache_dir``: where the shards of a data root in an object store or on the hub are
        fetched on first use and memory-mapped from (see :func:`shard_cache`)."""
        if manifest.data_root is None:
            raise DataError(f"{manifest.path}: compiled from counts for planning, so it lists no shards")
        self.manifest = manifest
        self.remote = str(manifest.data_root) if is_remote(manifest.data_root) else None
        self.cache_dir = shard_cache(cache_dir)
        self.root = cached_path(self.remote, self.cache_dir) if self.remote else Path(manifest.data_root)
        self.streams: list[Stream] = []
        for entry in manifest.streams:
            if entry.target_tokens == 0:
                continue
            rows = [shard.documents for shard in entry.shards]
            if not entry.shards or None in rows:
                rows = [self._count_rows(entry, shard) for shard in entry.shards]
            stream = Stream(
                index=len(self.streams),
                entry=entry,
                weight=entry.target_tokens / manifest.sampling.tokens,
                shard_rows=np.array(rows, dtype=np.int64),
                seed=seed,
            )
            if stream.documents == 0:
                raise DataError(
                    f"stream {stream.name} has a target of {entry.target_tokens:,} tokens but no data"
                )
            self.streams.append(stream)
        if not self.streams:
            raise DataError("the manifest has no stream with a target above zero")
        self._expected = [stream_metadata(manifest, stream.entry) for stream in self.streams]
        self._open: OrderedDict[tuple[int, int], ShardFile] = OrderedDict()

    def shard(self, stream: int, shard: int) -> ShardFile:
        key = (stream, shard)
        if key not in self._open:
            entry = self.streams[stream].entry.shards[shard]
            self._local(entry)
            self._open[key] = ShardFile(
                self.root, entry, self._expected[stream], self.manifest.tokenizer.vocab_size
            )
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        self._open.move_to_end(key)
        return self._open[key]

    def length(self, stream: int, doc: int) -> int:
        shard, row = self.streams[stream].locate(doc)
        return int(self.shard(stream, shard).lengths[row])

    def tokens(self, chunk: Chunk, seq_len: int) -> np.ndarray:
        shard, row = self.streams[chunk.stream].locate(chunk.doc)
        start = chunk.index * seq_len
        return self.shard(chunk.stream, shard).tokens(row, start, start + chunk.length)

    def _local(self, shard: ShardEntry) -> Path:
        """The shard's file here: under the data root, or fetched into the cache on first use."""
        return fetch_shard(self.remote, shard, self.cache_dir) if self.remote else self.root / shard.path

    def _count_rows(self, entry: StreamEntry, shard: ShardEntry) -> int:
        """Documents in a shard whose manifest entry does not say (read from the file's batches)."""
        path = str(self._local(shard))
        try:
            return sum(batch.num_rows for batch in pyarrow.ipc.open_stream(pa.memory_map(path)))
        except (OSError, pa.ArrowInvalid) as err:
            raise DataError(f"{path}: not a readable shard of {entry.name}: {err}") from err


class Blend:
    """The streams' documents in blend order, cut into chunks of at most ``seq_len`` (see the module doc)."""

    def __init__(self, data: MixtureData, seq_len: int):
        self.data = data
        self.seq_len = seq_len
        # tokens of the blend per document of each stream: mean length / weight
        self.periods = [(s.tokens / s.documents) / s.weight for s in data.streams]
        self.load_state_dict({"stream": None, "doc": None, "chunk": None})

    def due(self, stream: int, doc: int) -> float:
        return (doc + 0.5) * self.periods[stream]

    def next_chunk(self) -> Chunk:
        while self._chunk >= len(self._pieces):  # the current document is done: take the next one due
            _, stream = heapq.heappop(self._heap)
            doc = self._next_doc[stream]
            self._next_doc[stream] += 1
            heapq.heappush(self._heap, (self.due(stream, doc + 1), stream))
            self._current = (stream, doc)
            self._pieces = piece_lengths(self.data.length(stream, doc), self.seq_len)
            self._chunk = 0
        stream, doc = self._current
        index = self._chunk
        self._chunk += 1
        return Chunk(stream, doc, index, self._pieces[index])

    def state_dict(self) -> dict[str, int | None]:
        """The last document taken and how many of its chunks: the whole position of the blend."""
        if self._current is None:
            return {"stream": None, "doc": None, "chunk": None}
        return {"stream": self._current[0], "doc": self._current[1], "chunk": self._chunk}

    def load_state_dict(self, state: dict[str, int | None]) -> None:
        stream, doc = state["stream"], state["doc"]
        if stream is None:
            self._next_doc = [0] * len(self.periods)
            self._current, self._chunk, self._pieces = None, 0, []
        else:
            if not 0 <= stream < len(self.periods):
                raise DataError(f"loader state names stream {stream}, the manifest has {len(self.periods)}")
            last = (self.due(stream, doc), stream)
            self._next_doc = [self._taken(s, last) for s in range(len(self.periods))]
            self._current = (stream, doc)
            self._pieces = piece_lengths(self.data.length(stream, doc), self.seq_len)
            self._chunk = state["chunk"]
        self._heap = [(self.due(s, k), s) for s, k in enumerate(self._next_doc)]
        heapq.heapify(self._heap)

    def _taken(self, stream: int, last: tuple[float, int]) -> int:
        """How many documents of ``stream`` come at or before ``last`` = (due time, stream) in blend order."""
        count = max(0, int(last[0] / self.periods[stream] - 0.5) + 1)
        while count > 0 and (self.due(stream, count - 1), stream) > last:
            count -= 1
        while (self.due(stream, count), stream) <= last:
            count += 1
        return count


@dataclass
class StepBatch:
    """One optimizer step's data for one rank, with what every rank knows of the whole step."""

    step: int  # 0-based index of the step
    micro_batches: list[PackedBatch]  # this rank's, in micro-step order (the same count on every rank)
    global_micro_batches: int
    sequences: int  # the batch size the schedule asked for (sequences of seq_len)
    tokens: int  # real tokens in the whole step, over all ranks
    capacity: int  # tokens the step's micro-batches could hold: tokens / capacity is the packing efficiency
    stream_tokens: dict[int, int]  # real tokens per stream index in the whole step
    tokens_before: int  # tokens seen before this step
    state: dict[str, Any]  # the loader's state once this step is taken: what a checkpoint saves
    received: float = 0.0  # set by Prefetcher: when the training loop got this step (perf_counter, s)
    waited: float = 0.0  # set by Prefetcher: seconds the training loop waited for it


class MixtureLoader:
    """Steps of packed, masked micro-batches for one rank (see the module docstring)."""

    def __init__(
        self,
        data: MixtureData,
        *,
        seq_len: int,
        micro_batch_tokens: int,
        batch_size_at: Callable[[int], int],
        masking: Masking,
        batch_size: int | None = None,
        seed: int,
        pad_id: int,
        rank: int = 0,
        world_size: int = 1,
        max_documents: int | None = None,
        fixed_shapes: bool = False,
    ):
        if micro_batch_tokens < seq_len:
            raise ValueError(f"micro_batch_tokens {micro_batch_tokens} must be at least seq_len {seq_len}")
        self.data = data
        self.blend = Blend(data, seq_len)
        self.seq_len = seq_len
        self.micro_batch_tokens = micro_batch_tokens
        self.batch_size_at = batch_size_at
        self.batch_size = batch_size  # the full batch; steps below it are batch warmup (None: none are)
        self.masking = masking
        self.seed = seed
        self.pad_id = pad_id
        self.rank, self.world_size = rank, world_size
        self.max_documents = max_documents or micro_batch_tokens
        # For torch.compile: a fixed row length, and cu_seqlens with room for the padding documents.
        padding_documents = -(-micro_batch_tokens // seq_len)
        self.pad_to = (
            (micro_batch_tokens, self.max_documents + padding_documents + 1, seq_len)
            if fixed_shapes
            else None
        )
        self.step, self.tokens_seen, self.carried = 0, 0, []

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens_seen,
            "blend": self.blend.state_dict(),
            "carried": [[c.stream, c.doc, c.index] for c in self.carried],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.blend.load_state_dict(state["blend"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens"])
        self.carried = [self._chunk(*entry) for entry in state["carried"]]

    def start_counting_at(self, step: int, tokens: int) -> None:
        """Continue another run's count of steps and tokens, on this data from its beginning.

        For ``--force`` onto another manifest, whose loader positions mean nothing
        here: the schedule goes on where that run stopped.
        """
        self.step, self.tokens_seen = step, tokens

    def _chunk(self, stream: int, doc: int, index: int) -> Chunk:
        return Chunk(stream, doc, index, piece_lengths(self.data.length(stream, doc), self.seq_len)[index])

    def next_step(self) -> StepBatch:
        """Plan the next step (every rank alike), then read and mask this rank's micro-batches."""
        sequences = self.batch_size_at(self.tokens_seen)
        capacities = micro_batch_sizes(
            sequences, self.seq_len, self.micro_batch_tokens, self.batch_size or sequences
        )
        bins = len(capacities)
        plan, self.carried = pack(
            self.carried, self.blend.next_chunk, lambda chunk: chunk.length, capacities, self.max_documents
        )
        stream_tokens: dict[int, int] = {}
        for chunk in (chunk for micro in plan for chunk in micro):
            stream_tokens[chunk.stream] = stream_tokens.get(chunk.stream, 0) + chunk.length
        mine = [
            self._assemble(plan[g], g) if g < bins else self._empty()
            for g in range(self.rank, -(-bins // self.world_size) * self.world_size, self.world_size)
        ]
        step, tokens_before = self.step, self.tokens_seen
        self.step += 1
        self.tokens_seen += sum(stream_tokens.values())
        return StepBatch(
            step=step,
            micro_batches=mine,
            global_micro_batches=bins,
            sequences=sequences,
            tokens=self.tokens_seen - tokens_before,
            capacity=sum(capacities),
            stream_tokens=stream_tokens,
            tokens_before=tokens_before,
            state=self.state_dict(),
        )

    def _assemble(self, chunks: list[Chunk], micro_batch: int) -> PackedBatch:
        rng = np.random.default_rng([self.seed, MASK_STREAM, self.step, micro_batch])  # before step += 1
        documents = [self.data.tokens(chunk, self.seq_len) for chunk in chunks]  # ids checked on open
        return assemble(documents, self.masking, rng, self.pad_id, self.pad_to)

    def _empty(self) -> PackedBatch:
        """A stand-in micro-batch for a rank with one micro-batch fewer: one pad token, nothing to predict."""
        batch = assemble(
            [np.array([self.pad_id])], self.masking, np.random.default_rng(0), self.pad_id, self.pad_to
        )
        batch.tokens = 0
        return batch


class Prefetcher:
    """Prepares the loader's next steps on a background thread, so a step rarely waits for its data.

    The loader is deterministic, so running it ahead changes nothing but timing;
    errors in the thread are raised in the caller at the step they belong to.
    """

    def __init__(self, loader: MixtureLoader, depth: int = 2):
        self.loader = loader
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mmbert-data", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                item: StepBatch | BaseException = self.loader.next_step()
            except BaseException as err:  # handed to the training loop, which raises it
                item = err
            while not self.stopped.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def __iter__(self) -> Iterator[StepBatch]:
        while True:
            asked = time.perf_counter()
            item = self.queue.get()
            if isinstance(item, BaseException):
                raise item
            item.received = time.perf_counter()
            item.waited = item.received - asked
            yield item

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
