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

import re
from dataclasses import asdict, dataclass
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
    ``key`` names the list in messages (``heldout`` for a stream's held-out shards)."""
    check_shards(raw, where, key)
    keys = ("path", "documents", "tokens", "bytes", "sha256")
    return tuple({key: entry[key] for key in keys if key in entry} for entry in raw)


def check_shards(raw: Any, where: str, key: str = "shards") -> None:
    """Raise MixtureError naming the first malformed entry of a stream's shard list.

    A phase has 100k+ shards, so the list is checked in bulk (one pass of type
    tests, then one regex over all the hashes) and only the entry at fault is
    examined field by field, for the message.
    """
    if not isinstance(raw, list):
        raise MixtureError(f"{where}: {key}: expected a list")
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
