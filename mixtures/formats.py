"""The on-disk formats every package reads: build statistics, token shards, phase manifests.

The pipeline writes shards and ``stats.json``, the mixture compiler turns them into a
manifest, and the trainer reads both the manifest and the shards. What they agree on
lives here, in one light module (standard library, numpy and pyarrow only), so that a GPU
node reading a manifest imports none of the data pipeline:

- format names and versions of ``stats.json`` and the manifest;
- where held-out shards live: ``{phase_dir}/heldout/{source}/{language}/`` (``HELDOUT_DIR``), listed
  per stream in ``stats.json`` under ``heldout`` beside the training ``shards``; never in a manifest;
- the shard schema: an Arrow IPC *stream* file, one row per document, ``id: string``
  and ``input_ids: list<uint32>`` (bos + tokens + eos), with schema metadata naming
  the tokenizer (name and SHA-256), source, language and phase;
- a shard entry as stats.json and manifests list it: ``path`` (relative to the data
  root), ``documents``, ``tokens``, ``bytes`` (the file's size) and ``sha256``
  (``documents`` may be absent from files written before it was recorded);
- the tokenizer record: ``name``, ``sha256`` of its ``tokenizer.json``, and, so the
  trainer can check that a model fits the data, ``vocab_size`` and the ids of its
  special tokens (``special_ids``: pad, eos, bos, unk, mask).
"""

from __future__ import annotations

import operator
import re
import struct
from dataclasses import asdict, dataclass
from functools import reduce
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from mixtures.errors import MixtureError

# Where `mmbert-data build` writes and `mmbert-data mixture` reads when not told: relative to the
# current directory, so each project finds its own build and no state is shared between clones.
BUILD_OUTPUT = Path("runs/build")

STATS_FORMAT = "mmbert-data/stats"
STATS_VERSION = 3  # 2: held-out documents; 3: counted among those kept (read == kept + drops)
MANIFEST_FORMAT = "mmbert-data/manifest"
MANIFEST_VERSION = 1
HELDOUT_DIR = "heldout"

SHARD_SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.uint32()))])
# Schema metadata every shard carries, and the kind of problem a different value is.
SHARD_METADATA = {
    "mmbert.tokenizer.name": "tokenizer mismatch",
    "mmbert.tokenizer.sha256": "tokenizer mismatch",
    "mmbert.source": "source mismatch",
    "mmbert.language": "language mismatch",
    "mmbert.phase": "phase mismatch",
}
# The roles of the special tokens, in Gemma 2's id order (<pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4).
SPECIAL_ROLES = ("pad", "eos", "bos", "unk", "mask")

_NOT_HEX = re.compile(r"[^0-9a-f]")
_CONTINUATION = b"\xff\xff\xff\xff"  # before each message of an IPC stream since Arrow 0.15
_END_OF_STREAM = _CONTINUATION + b"\0\0\0\0"
_MESSAGE_START = struct.Struct("<Ii")  # continuation marker, metadata size
_INT32, _UINT32, _UINT16 = map(struct.Struct, ("<i", "<I", "<H"))
_HEX_DIGITS = b"0123456789abcdef"
SHARD_FIELDS = ("path", "documents", "tokens", "bytes", "sha256")
_SHARD_GETTERS = tuple(map(operator.itemgetter, SHARD_FIELDS))


def expected_metadata(
    tokenizer_name: str | None, tokenizer_sha256: str | None, source: str, language: str, phase: str
) -> dict[str, str | None]:
    """The schema metadata a shard of one stream carries (keys as in ``SHARD_METADATA``; None: unchecked)."""
    values = (tokenizer_name, tokenizer_sha256, source, language, phase)
    return dict(zip(SHARD_METADATA, values, strict=True))


def shard_metadata(
    tokenizer_name: str, tokenizer_sha256: str, source: str, language: str, phase: str
) -> dict[bytes, bytes]:
    """The schema metadata written into one shard, as Arrow stores it (bytes)."""
    expected = expected_metadata(tokenizer_name, tokenizer_sha256, source, language, phase)
    return {key.encode(): value.encode() for key, value in expected.items()}


def metadata_problems(
    metadata: dict[bytes, bytes] | None, shard: str, expected: dict[str, str | None]
) -> list[str]:
    """Each way a shard's schema metadata differs from ``expected``, one message each (empty: it matches).

    ``shard`` names the shard in the messages (its path relative to the data root).
    The trainer's reader raises the first message, ``mmbert-data validate`` lists
    them all, so both say the same thing about the same shard.
    """
    metadata = metadata or {}
    problems = []
    for key, want in expected.items():
        if want is None:
            continue
        have = metadata.get(key.encode())
        if have is None:
            problems.append(f"{SHARD_METADATA[key]}: shard {shard} has no {key} in its schema metadata")
        elif have.decode(errors="replace") != want:
            problems.append(
                f"{SHARD_METADATA[key]}: shard {shard} has {key}={have.decode(errors='replace')!r}, "
                f"the manifest expects {want!r}"
            )
    return problems


def schema_problems(schema: pa.Schema, shard: str, expected: dict[str, str | None]) -> list[str]:
    """Each way a shard's schema differs from the format's columns and ``expected`` metadata (empty: none).

    A column of another type (float or uint8 ids, negative int64 ids, strings)
    would otherwise be read as token ids; every reader of shards asks this first.
    """
    problems = []
    for field in SHARD_SCHEMA:
        index = schema.get_field_index(field.name)
        if index < 0:
            problems.append(
                f"not a token shard: {shard} has no {field.name} column; rebuild it with `mmbert-data build`"
            )
        elif schema.field(index).type != field.type:
            problems.append(
                f"wrong column type: shard {shard} has {field.name}: {schema.field(index).type}, the format "
                f"is {field.type}; rebuild it with `mmbert-data build`"
            )
    return problems + metadata_problems(schema.metadata, shard, expected)


def shard_counts(reader: pa.ipc.RecordBatchStreamReader) -> tuple[int, int]:
    """Documents and tokens of a shard, from its record batch headers (the lengths Arrow keeps there).

    Read from a memory map, this touches a few bytes per batch, not the token data.
    """
    documents = tokens = 0
    for batch in reader:
        documents += batch.num_rows
        tokens += len(batch.column(SHARD_SCHEMA.get_field_index("input_ids")).values)
    return documents, tokens


def schema_message(data: bytes) -> bytes | None:
    """The first message of an Arrow IPC stream (its schema, with its metadata), as bytes; None when
    ``data`` does not start with one in the current framing (continuation marker, then length)."""
    if len(data) < 8 or data[:4] != _CONTINUATION:
        return None
    end = 8 + _INT32.unpack_from(data, 4)[0]
    return data[:end] if 8 < end <= len(data) else None


class BatchLayout:
    """The byte layout of a shard's record batch messages, learnt from a shard pyarrow read without
    fault (:func:`batch_layout`), to read the counts of the stream's other shards from their
    batch headers without opening a reader.

    A phase has 100k+ shards, and opening a reader costs more than reading and hashing a small
    one. A writer lays out the flatbuffer header of every batch of a schema the same way; only
    its numbers differ (the body's size, the batch's length, each column's length and null count,
    each buffer's offset and size). So one ``struct`` format reads a batch message as the bytes
    around those numbers, which must be the learnt ones, and the numbers, which must be those of
    a plain batch: lengths >= 0 and the batch's for both columns, the body and every buffer on 8
    bytes, the buffers inside the body. A header the same but for such numbers is as valid as the
    one pyarrow read; for anything else ``counts`` says None, and pyarrow is asked.
    """

    def __init__(self, message: bytes, numbers: list[tuple[int, str, int]]):
        """``message``: a batch message's marker, size and header; ``numbers``: where in it each
        group of int64 numbers is (position, name, how many)."""
        items, fixed, slots, index, end = ["<Ii"], [0, 1], {}, 2, 8
        for at, name, count in sorted(numbers):
            if at < end:
                raise _NotPlain
            items += [f"{at - end}s", f"{count}q"]
            fixed.append(index)
            slots[name] = slice(index + 1, index + 1 + count)
            index, end = index + 1 + count, at + 8 * count
        self._body, self._length = slots["body"], slots["length"]
        self._nodes, self._buffers = slots["nodes"], slots["buffers"]  # (length, nulls), (offset, size)
        items.append(f"{len(message) - end}s")
        fixed.append(index)
        self._format = struct.Struct("".join(items))
        self._fixed = operator.itemgetter(*fixed)
        self._expected = self._fixed(self._format.unpack(message))

    def counts(self, data: bytes, start: int) -> tuple[int, int] | None:
        """Documents and tokens of the batches from byte ``start`` (just after the schema message) to
        the end-of-stream marker at the end of ``data``; None unless every batch is of this layout."""
        documents = tokens = 0
        try:
            while data[start : start + 8] != _END_OF_STREAM:
                values = self._format.unpack_from(data, start)
                if self._fixed(values) != self._expected:
                    return None
                (body,), (length,) = values[self._body], values[self._length]
                nodes, buffers = values[self._nodes], values[self._buffers]
                offsets = buffers[0::2]
                if min(*nodes, *buffers, length) < 0 or nodes[0] != length or nodes[2] != length:
                    return None
                if (
                    max(map(operator.add, offsets, buffers[1::2])) > body
                    or reduce(operator.or_, offsets, body) % 8
                ):
                    return None  # a buffer outside the body, or the body or a buffer off 8 bytes
                documents, tokens = documents + length, tokens + nodes[4]
                start += self._format.size + body
        except struct.error:  # cut short
            return None
        return (documents, tokens) if start + 8 == len(data) else None


def batch_layout(data: bytes, start: int) -> BatchLayout | None:
    """The layout of the record batch message at byte ``start`` of a shard's IPC stream (just after
    its schema message), a shard pyarrow read without fault; None for another layout than the
    plain one (an uncompressed batch of the three nodes and seven buffers of ``SHARD_SCHEMA``)."""
    try:
        marker, size = _MESSAGE_START.unpack_from(data, start)
        header = data[start + 8 : start + 8 + size]
        # Message: version, header_type, header, bodyLength; RecordBatch: length, nodes, buffers, compression
        message = _fields(header, _target(header, 0))
        batch = _fields(header, _target(header, message[2]))
        if marker != 0xFFFFFFFF or not message[1] or header[message[1]] != 3 or not message[3]:
            return None  # not a record batch, or one without a body
        if len(batch) > 3 and batch[3] or not (batch[0] and batch[1] and batch[2]):
            return None  # compressed, or without a length, nodes or buffers
        nodes, buffers = _vector(header, batch[1]), _vector(header, batch[2])
        if _UINT32.unpack_from(header, nodes)[0] != 3 or _UINT32.unpack_from(header, buffers)[0] != 7:
            return None
        numbers = [(8 + message[3], "body", 1), (8 + batch[0], "length", 1)]
        numbers += [(12 + nodes, "nodes", 6), (12 + buffers, "buffers", 14)]
        return BatchLayout(data[start : start + 8 + size], numbers)
    except (struct.error, IndexError, _NotPlain):
        return None


class _NotPlain(Exception):
    """A flatbuffer that ``batch_counts`` does not read (its caller asks pyarrow instead)."""


def _fields(buffer: bytes, position: int) -> list[int]:
    """Where the fields of the flatbuffer table at ``position`` are (0: absent, so its default)."""
    vtable = position - _INT32.unpack_from(buffer, position)[0]
    if position % 4 or vtable < 0 or vtable % 2:
        raise _NotPlain
    size = _UINT16.unpack_from(buffer, vtable)[0]
    if size < 4 or size % 2:
        raise _NotPlain
    offsets = struct.unpack_from(f"<{size // 2 - 2}H", buffer, vtable + 4)
    return [position + offset if offset else 0 for offset in offsets]


def _target(buffer: bytes, at: int) -> int:
    """What the offset field at ``at`` points to (a table, a vector)."""
    if at % 4:
        raise _NotPlain
    return at + _UINT32.unpack_from(buffer, at)[0]


def _vector(buffer: bytes, at: int) -> int:
    """Where the vector of structs of int64 that the field at ``at`` points to starts (its count)."""
    vector = _target(buffer, at)
    if (vector + 4) % 8:
        raise _NotPlain
    return vector


def count_problems(shard: str, recorded: tuple[int | None, int], found: tuple[int, int]) -> list[str]:
    """Where a shard's (documents, tokens) differ from its entry's (documents None: not recorded).

    The blend draws from each stream by its entries' counts, so a wrong count
    changes the mixture silently.
    """
    fix = "the manifest does not describe this file; compile it again from the build"
    return [
        f"count mismatch: shard {shard} holds {have:,} {what}, the manifest records {want:,}; {fix}"
        for what, want, have in zip(("documents", "tokens"), recorded, found, strict=True)
        if want is not None and want != have
    ]


def input_ids_problem(
    shard: str, offsets: np.ndarray, values: np.ndarray, first_row: int, vocab_size: int | None
) -> str | None:
    """The first fault of one record batch's ``input_ids`` (None: none): offsets that run backwards or
    past the ids, or an id outside the tokenizer's vocabulary.

    Arrow does not check these when it maps a file, so a damaged shard would
    otherwise be trained on; one pass over the ids costs less than reading them.
    """
    lengths = np.diff(offsets)
    if len(lengths) and (offsets[0] != 0 or offsets[-1] != len(values) or lengths.min() < 0):
        return (
            f"damaged shard: {shard}: the input_ids offsets of documents {first_row:,} to "
            f"{first_row + len(lengths) - 1:,} do not fit its {len(values):,} token ids; "
            "rebuild it with `mmbert-data build`"
        )
    if vocab_size is None or not len(values) or int(values.max()) < vocab_size:
        return None
    at = int(np.argmax(values >= vocab_size))
    row = first_row + int(np.searchsorted(offsets, at, side="right")) - 1
    return (
        f"{shard}: document {row} holds token id {int(values[at])}, outside the tokenizer's {vocab_size} "
        "ids: the shard is damaged (check it with `mmbert-data inspect --verify`) or the manifest names "
        "another tokenizer (compile it again from the shard's build)"
    )


def shard_entries(raw: Any, where: str, key: str = "shards") -> tuple[dict[str, Any], ...]:
    """A stream's shards as build statistics and manifests list them (see the module docstring);
    ``key`` names the list in messages (``heldout`` for a stream's held-out shards).

    Entries of exactly the five fields are kept as they are: copying 100k+ dicts only to
    drop fields they do not have was most of the cost of reading a build's stats.json.
    """
    if _plain_entries(raw):
        return tuple(raw)
    check_shards(raw, where, key)
    return tuple({key: entry[key] for key in SHARD_FIELDS if key in entry} for entry in raw)


def check_shards(raw: Any, where: str, key: str = "shards") -> None:
    """Raise MixtureError naming the first malformed entry of a stream's shard list.

    A phase has 100k+ shards, so the list is checked in bulk (``_plain_entries``: a few
    passes per field, each in C) and only a list that fails it is walked entry by entry
    (an entry without ``documents``, of a file written before they were recorded, is
    well formed) and the entry at fault examined field by field, for the message.
    """
    if not isinstance(raw, list):
        raise MixtureError(f"{where}: {key}: expected a list")
    if _plain_entries(raw):
        return
    index = _first_malformed(raw)
    if index is not None:
        _check_shard(raw[index], f"{where}: {key}[{index}]")


def check_tokenizer(raw: Any, where: str, planned: bool = False) -> dict[str, Any]:
    """The tokenizer record of stats.json or a manifest, checked; ``vocab_size`` and ids may be absent.

    ``planned``: a manifest compiled from counts names the recipe's tokenizer but
    holds no shards, so it has no ``sha256`` either.
    """
    if not isinstance(raw, dict):
        raise MixtureError(f"{where}: tokenizer: expected an object")
    for key in ("name", "sha256"):
        if not isinstance(raw.get(key), str) and not (planned and key == "sha256" and raw.get(key) is None):
            raise MixtureError(f"{where}: tokenizer.{key}: expected a string, got {raw.get(key)!r}")
    vocab = raw.get("vocab_size")
    if vocab is not None and (type(vocab) is not int or vocab < 1):
        raise MixtureError(f"{where}: tokenizer.vocab_size: expected an integer >= 1, got {vocab!r}")
    special = raw.get("special_ids")
    if special is not None:
        if not isinstance(special, dict) or set(special) - set(SPECIAL_ROLES):
            raise MixtureError(
                f"{where}: tokenizer.special_ids: expected an object with keys among {SPECIAL_ROLES}"
            )
        for role, token_id in special.items():
            if token_id is not None and (type(token_id) is not int or token_id < 0):
                raise MixtureError(f"{where}: tokenizer.special_ids.{role}: expected an id, got {token_id!r}")
            if token_id is not None and vocab is not None and token_id >= vocab:
                raise MixtureError(
                    f"{where}: tokenizer.vocab_size: {vocab} ids do not hold special_ids.{role} {token_id}; "
                    "the record is not the tokenizer's: compile the manifest again from its build"
                )
        if vocab is not None and vocab <= len(set(special.values()) - {None}):
            raise MixtureError(
                f"{where}: tokenizer.vocab_size: {vocab} ids are all special tokens, none left to train on; "
                "the record is not the tokenizer's: compile the manifest again from its build"
            )
    return {"name": raw["name"], "sha256": raw["sha256"], "vocab_size": vocab, "special_ids": special}


@dataclass(frozen=True)
class TokenizerRecord:
    """The tokenizer a phase's shards were made with (see the module docstring); ids may be None."""

    name: str
    sha256: str | None  # None only in a manifest planned from counts
    vocab_size: int | None
    special_ids: dict[str, int | None] | None

    @classmethod
    def from_dict(cls, raw: Any, where: str, planned: bool = False) -> TokenizerRecord:
        """The record of a stats.json or manifest, checked (``check_tokenizer``)."""
        return cls(**check_tokenizer(raw, where, planned))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plain_entries(raw: Any) -> bool:
    """Whether ``raw`` is a list of entries of exactly the five fields, each well formed.

    Checked column by column (``map`` over the entries, then ``set``, ``min`` and one
    deletion of the hex digits from all the hashes), which costs a fraction of a Python loop per entry.
    """
    try:
        if not isinstance(raw, list) or set(map(len, raw)) - {5}:
            return False
        if not raw:
            return True
        path, documents, tokens, size, sha256 = _SHARD_GETTERS
        paths, hashes = [*map(path, raw)], [*map(sha256, raw)]
        counts = [*map(documents, raw), *map(tokens, raw), *map(size, raw)]
        return (
            "" not in paths
            and not any(map(str.startswith, paths, repeat("/")))  # TypeError unless all are strings
            and set(map(type, counts)) == {int}
            and min(counts) >= 0
            and set(map(len, hashes)) == {64}
            and not "".join(hashes).encode().translate(None, _HEX_DIGITS)  # nothing left but hex digits
        )
    except (KeyError, TypeError):  # an entry that is not a dict, lacks a field, or a field of another type
        return False


def _first_malformed(raw: list) -> int | None:
    index = 0
    try:
        for index, entry in enumerate(raw):  # noqa: B007 (the except clause reports it)
            path, tokens, size, sha256 = entry["path"], entry["tokens"], entry["bytes"], entry["sha256"]
            documents = entry.get("documents", 0)
            if not (
                type(documents) is int
                and documents >= 0
                and type(path) is str
                and path
                and path[0] != "/"
                and type(tokens) is int
                and tokens >= 0
                and type(size) is int
                and size >= 0
                and type(sha256) is str
                and len(sha256) == 64
            ):
                return index
    except (KeyError, TypeError):
        return index
    bad = _NOT_HEX.search("".join(entry["sha256"] for entry in raw))
    return None if bad is None else bad.start() // 64


def _check_shard(raw: Any, where: str) -> None:
    if not isinstance(raw, dict):
        raise MixtureError(f"{where}: expected an object")
    path = raw.get("path")
    if not isinstance(path, str) or path.startswith("/") or not path:
        raise MixtureError(f"{where}: path: must be relative to the data root, got {path!r}")
    for key in ("documents", "tokens", "bytes"):
        value = raw.get(key, 0) if key == "documents" else raw.get(key)
        if type(value) is not int or value < 0:
            raise MixtureError(f"{where}: {key}: expected an integer >= 0, got {value!r}")
    sha256 = raw.get("sha256")
    if not isinstance(sha256, str) or len(sha256) != 64 or _NOT_HEX.search(sha256):
        raise MixtureError(f"{where}: sha256: expected 64 lowercase hex digits, got {sha256!r}")
