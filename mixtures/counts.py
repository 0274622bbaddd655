"""Per-language token counts: what the mixture compiler may draw from.

Three inputs give the same ``Counts``:

- a build's ``stats.json`` (``mmbert-data build`` writes one per phase): exact
  token counts per (source, language) stream, with the shard list the manifest
  points the trainer at (and the stream's held-out shards, which no manifest lists:
  :func:`heldout_shards` finds them for evaluation);
- FineWeb2's language-distribution table as published (``subset, split, code,
  script, ..., utf8_bytes, ...``), for planning before any build: train split
  only, ``*_removed`` subsets ignored, tokens estimated from UTF-8 bytes with a
  per-script bytes-per-token table (one estimate for all subsets under 1 GB);
- a plain ``language,tokens`` CSV (token amounts may carry k/M/B/T suffixes).

CSV rows all belong to the multilingual pool (the recipe's FineWeb2 source).
Every malformed value is an error naming the file and the line or field.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

from mixtures.errors import MixtureError
from mixtures.formats import MANIFEST_FORMAT, STATS_FORMAT, STATS_VERSION, check_tokenizer, shard_entries
from mixtures.recipe import parse_tokens
from mixtures.storage import StorageError, is_remote, join, read_bytes, sizes

try:  # orjson reads a build's stats.json (100k+ shard entries) several times faster
    from orjson import JSONDecodeError, loads
except ImportError:  # a GPU node with only the trainer's dependencies: its evaluation reads stats.json
    from json import JSONDecodeError, loads

_TOKENS = itemgetter("tokens")
FINEWEB2_COLUMNS = frozenset({"subset", "split", "code", "script", "utf8_bytes"})
PLAIN_COLUMNS = frozenset({"language", "tokens"})

# UTF-8 bytes per Gemma 2 token, by ISO 15924 script, for FineWeb2 subsets of at least
# SMALL_SUBSET_BYTES: coarse planning estimates from each script's bytes per character and
# typical characters per token (a large Latin-script language such as French is near 4).
# Calibrate on a tokenized sample and override with --bytes-per-token SCRIPT=VALUE.
BYTES_PER_TOKEN: dict[str, float] = {
    "Latn": 3.5,
    "Cyrl": 5.0,
    "Grek": 5.0,
    "Arab": 5.0,
    "Hebr": 5.0,
    "Armn": 4.5,
    "Geor": 5.5,
    "Hani": 4.0,
    "Jpan": 4.0,
    "Hang": 4.0,
    "Thai": 6.0,
    "Deva": 6.0,
    "Beng": 5.5,
    "Guru": 5.0,
    "Gujr": 5.0,
    "Orya": 5.0,
    "Taml": 5.5,
    "Telu": 5.5,
    "Knda": 5.5,
    "Mlym": 5.5,
    "Sinh": 5.0,
    "Ethi": 3.9,
}
DEFAULT_BYTES_PER_TOKEN = 3.5  # scripts not listed: rare scripts split into short pieces
# Smaller subsets tokenize into shorter pieces whatever their script: Gemma 2's vocabulary holds
# few pieces of a rare language. mmBERT's per-language token table against FineWeb2's UTF-8 sizes
# gives the languages it added in the decay ~0.40 tokens per byte, nearly flat from 10 KB to
# 30 MB and so still at Faroese's 592 MB (285M tokens: 0.48 per byte, 2.1 bytes per token); 2.5
# bytes per token is that rate. Tigrinya (Ethiopic, 377 MB, 97M tokens: 3.9) is the exception seen.
SMALL_SUBSET_BYTES = 1_000_000_000
SMALL_BYTES_PER_TOKEN = 2.5


@dataclass(frozen=True)
class Stream:
    """Available tokens of one (source, language), the shards that hold them and its held-out shards
    (stats only)."""

    source: str
    language: str
    tokens: int
    shards: tuple[dict[str, Any], ...] = ()
    heldout: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Counts:
    """Token counts with their provenance.

    ``origin`` (kind, path, sha256 of the input, and the bytes-per-token table
    when tokens were estimated) goes into the manifest verbatim. ``data_root``
    is the directory shard paths are relative to (None when planning from a
    CSV); ``phase``, ``tokenizer`` and ``recipe_sha256`` are what the build recorded.
    """

    streams: tuple[Stream, ...]
    origin: dict[str, Any]
    data_root: Path | str | None = None  # a str: a URL (s3://, hf://) the build was published to
    phase: str | None = None
    tokenizer: dict[str, Any] = field(
        default_factory=lambda: {"name": None, "sha256": None, "vocab_size": None, "special_ids": None}
    )
    recipe_sha256: str | None = None


def changed_shards(counts: Counts) -> list[str]:
    """The shards of a build, held-out ones too, that are missing or not the size its ``stats.json`` records.

    One ``stat`` per shard. A build's rerun skips its finished tasks, so without this a
    shard damaged after it was written would pass into a manifest silently (and be
    refused only when a trainer opens it). Empty for counts that are not a build's.
    """
    if counts.data_root is None:
        return []
    problems: list[str] = []
    listed = sizes(counts.data_root) if is_remote(counts.data_root) else None  # one listing, not a HEAD each
    for shard in (shard for stream in counts.streams for shard in (*stream.shards, *stream.heldout)):
        path, recorded = shard["path"], shard["bytes"]
        try:
            size = listed[path] if listed is not None else (counts.data_root / path).stat().st_size
        except KeyError:
            problems.append(f"missing shard: {path} (no object {join(counts.data_root, path)})")
            continue
        except OSError as err:
            problems.append(f"missing shard: {path} ({err.strerror or err})")
            continue
        if size != recorded:
            problems.append(f"changed shard: {path} has {size:,} bytes, stats.json records {recorded:,}")
    return problems


def heldout_shards(counts: Counts) -> dict[tuple[str, str], list[Path]]:
    """Each (source, language) stream's held-out shards, as paths under the build's phase directory
    (streams that hold none out are left out): the documents to evaluate a model on, never trained on."""
    if counts.data_root is None:
        return {}
    return {
        (stream.source, stream.language): [counts.data_root / shard["path"] for shard in stream.heldout]
        for stream in counts.streams
        if stream.heldout
    }


def damaged_build(counts: Counts, problems: list[str]) -> MixtureError:
    """The one-line error for a build whose shards are not those its stats.json describes."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return MixtureError(
        f"{counts.data_root}: {problems[0]}{more}; the build's shards changed after it wrote them: "
        "build the phase again with --overwrite"
    )


def load_stats(path: str | Path) -> dict[str, Any]:
    """A build's ``stats.json`` (or the one in a phase directory) as written; format and version checked."""
    return _read_stats_file(path)[2]


def read_stats(path: str | Path) -> Counts:
    """Read a build's ``stats.json`` (or the phase directory holding it) as counts."""
    path, raw_bytes, raw = _read_stats_file(path)
    where = str(path)
    phase = _string(raw, "phase", where)
    tokenizer = check_tokenizer(raw.get("tokenizer"), where)
    recipe = _mapping(raw, "recipe", where)
    streams_raw = raw.get("streams")
    if not isinstance(streams_raw, list):
        raise MixtureError(f"{where}: streams: expected a list")
    streams = tuple(_stream(item, f"{where}: streams[{i}]") for i, item in enumerate(streams_raw))
    _check_unique(streams, where)
    return Counts(
        streams=streams,
        origin={
            "kind": "stats",
            "path": path if isinstance(path, str) else str(path.resolve()),
            "sha256": hashlib.sha256(raw_bytes).hexdigest(),
            "phase": phase,  # the build's: a decay variant's manifest reads the decay build
        },
        data_root=path.rsplit("/", 1)[0] if isinstance(path, str) else path.parent.resolve(),
        phase=phase,
        tokenizer=tokenizer,
        recipe_sha256=_string(recipe, "sha256", f"{where}: recipe"),
    )


def _read_stats_file(path: str | Path) -> tuple[Path | str, bytes, dict[str, Any]]:
    """The one reader of ``stats.json``: the file read (a URL as given), its bytes, and its content
    (format and version checked); every problem is a :class:`MixtureError` naming the file."""
    if is_remote(path):
        url = str(path) if str(path).endswith(".json") else join(path, "stats.json")
        try:
            return url, *_parsed_stats(url, read_bytes(url))
        except StorageError as err:
            raise MixtureError(f"cannot read build statistics: {err}") from err
    path = Path(path)
    if path.is_dir():
        phases = sorted(str(found.parent) for found in path.glob("*/stats.json"))
        if phases and not (path / "stats.json").exists():  # OUTPUT given for OUTPUT/PHASE
            raise MixtureError(
                f"{path} is a build's output, not one of its phases: pass {' or '.join(phases)}"
            )
        within = next((up for up in path.parents[:3] if (up / "stats.json").is_file()), None)
        if within is not None and not (path / "stats.json").exists():  # e.g. PHASE/heldout
            raise MixtureError(f"{path} is inside the build phase {within}: pass {within}")
        path = path / "stats.json"
    try:
        raw_bytes = path.read_bytes()
    except OSError as err:
        raise MixtureError(
            f"cannot read build statistics {path}: {err.strerror or err}; "
            "pass a build's phase directory (OUTPUT/PHASE, which holds stats.json)"
        ) from err
    return path, *_parsed_stats(path, raw_bytes)


def _parsed_stats(path: Path | str, raw_bytes: bytes) -> tuple[bytes, dict[str, Any]]:
    try:
        raw = loads(raw_bytes)
    except JSONDecodeError as err:
        raise MixtureError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if isinstance(raw, dict) and raw.get("format") == MANIFEST_FORMAT:
        built = (raw.get("counts") or {}).get("path")
        where = f": its build is {Path(built).parent}" if isinstance(built, str) else ""
        raise MixtureError(f"{path} is a manifest, not a build's statistics{where}")
    if not isinstance(raw, dict) or raw.get("format") != STATS_FORMAT:
        raise MixtureError(f"{path}: format: expected {STATS_FORMAT!r}; is this a build's stats.json?")
    if raw.get("version") != STATS_VERSION:
        raise MixtureError(
            f"{path}: version: expected {STATS_VERSION}, got {raw.get('version')!r}; "
            "build the phase again with this version (`mmbert-data build ... --overwrite`)"
        )
    return raw_bytes, raw


def read_counts_csv(
    path: str | Path, source: str, bytes_per_token: Mapping[str, float] | None = None
) -> Counts:
    """Read FineWeb2's distribution table or a ``language,tokens`` CSV as counts of ``source``."""
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as err:
        raise MixtureError(f"cannot read counts {path}: {err.strerror or err}") from err
    try:
        text = raw_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise MixtureError(f"{path}: not UTF-8 text ({err})") from err
    reader = csv.DictReader(text.splitlines())
    columns = set(reader.fieldnames or ())
    origin = {"path": str(path.resolve()), "sha256": hashlib.sha256(raw_bytes).hexdigest()}
    if columns >= FINEWEB2_COLUMNS:
        table = {**BYTES_PER_TOKEN, **(bytes_per_token or {})}
        tokens = _fineweb2_rows(reader, path, table)
        origin.update(
            kind="fineweb2-table",
            bytes_per_token=table,
            default_bytes_per_token=DEFAULT_BYTES_PER_TOKEN,
            small_subset_bytes=SMALL_SUBSET_BYTES,
            small_bytes_per_token=SMALL_BYTES_PER_TOKEN,
        )
    elif columns >= PLAIN_COLUMNS:
        tokens = _plain_rows(reader, path)
        origin.update(kind="csv")
    else:
        raise MixtureError(
            f"{path}: line 1: unrecognised header {sorted(columns)}; expected FineWeb2's distribution table "
            f"(columns {', '.join(sorted(FINEWEB2_COLUMNS))}, ...) or 'language,tokens'"
        )
    if not tokens:
        raise MixtureError(f"{path}: no language rows")
    streams = tuple(Stream(source, language, count) for language, count in sorted(tokens.items()))
    return Counts(streams=streams, origin=origin)


def parse_bytes_per_token(items: Iterable[str]) -> dict[str, float]:
    """Parse ``SCRIPT=BYTES`` overrides such as ``Latn=3.8``."""
    table = {}
    for item in items:
        script, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not sep or not re.fullmatch(r"[A-Z][a-z]{3}", script) or not number > 0:
            raise MixtureError(f"--bytes-per-token {item!r}: expected SCRIPT=BYTES, e.g. Latn=3.8")
        table[script] = number
    return table


def _fineweb2_rows(reader: csv.DictReader, path: Path, table: Mapping[str, float]) -> dict[str, int]:
    tokens: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        subset = row["subset"]
        if row["split"] != "train" or subset.endswith("_removed"):
            continue
        value = row["utf8_bytes"]
        if not value.isdigit():
            raise MixtureError(f"{path}: line {line}: utf8_bytes: expected an integer, got {value!r}")
        if subset in tokens:
            raise MixtureError(f"{path}: line {line}: subset {subset!r} appears twice in the train split")
        size = int(value)
        per_token = (
            SMALL_BYTES_PER_TOKEN
            if size < SMALL_SUBSET_BYTES
            else table.get(row["script"], DEFAULT_BYTES_PER_TOKEN)
        )
        tokens[subset] = round(size / per_token)
    return tokens


def _plain_rows(reader: csv.DictReader, path: Path) -> dict[str, int]:
    tokens: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        language = (row["language"] or "").strip()
        if not language:
            raise MixtureError(f"{path}: line {line}: language: empty")
        try:
            tokens_here = parse_tokens(row["tokens"] or "")
        except ValueError as err:
            raise MixtureError(f"{path}: line {line}: tokens: {err}") from err
        if language in tokens:
            raise MixtureError(f"{path}: line {line}: language {language!r} appears twice")
        tokens[language] = tokens_here
    return tokens


def _stream(raw: Any, where: str) -> Stream:
    if not isinstance(raw, dict):
        raise MixtureError(f"{where}: expected an object")
    source = _string(raw, "source", where)
    language = _string(raw, "language", where)
    where = f"{where} ({source}/{language})"
    tokens = _count(raw, "tokens", where)
    shards = shard_entries(raw.get("shards"), where)
    heldout = shard_entries(raw.get("heldout"), where, "heldout")
    for key, listed in (("tokens", shards), ("heldout_tokens", heldout)):
        recorded, held = _count(raw, key, where), sum(map(_TOKENS, listed))
        if held != recorded:
            raise MixtureError(f"{where}: {key} is {recorded} but its shards hold {held}")
    return Stream(source, language, tokens, shards, heldout)


def _check_unique(streams: tuple[Stream, ...], where: str) -> None:
    seen = set()
    for stream in streams:
        key = (stream.source, stream.language)
        if key in seen:
            raise MixtureError(f"{where}: streams: {stream.source}/{stream.language} appears twice")
        seen.add(key)


def _mapping(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise MixtureError(f"{where}: {key}: expected an object")
    return value


def _string(raw: dict, key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise MixtureError(f"{where}: {key}: expected a string, got {value!r}")
    return value


def _count(raw: dict, key: str, where: str) -> int:
    value = raw.get(key)
    if type(value) is not int or value < 0:
        raise MixtureError(f"{where}: {key}: expected an integer >= 0, got {value!r}")
    return value
