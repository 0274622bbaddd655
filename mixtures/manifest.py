"""The phase manifest: a compiled mixture as a versioned, self-checking JSON document.

The trainer learns everything about a phase's data from this file: the phase,
the recipe (path and sha256), the tokenizer (name and sha256 of its
tokenizer.json), the training settings, the seed, the sampling settings that
produced it, the counts it was compiled from, the data root, and one stream per
(source, language) with its target tokens, weight, expected epochs and shards
(path relative to the data root, tokens, bytes, sha256).

The data root is written relative to the manifest's own directory (``.`` for the
``manifest.json`` a build's phase directory holds), and read back as an absolute
path: a data directory moved or copied together with its manifests, to another
disk or another machine, stays valid, and so does the fingerprint, so a training
run resumes on the moved data. A data root in an object store or on the hub is
written as its URL. The manifest itself may be a local file or an ``s3://``
object (``hf://`` is read, not written); a relative data root in a manifest
read from a URL is taken relative to the URL's directory.

Canonical form. Keys sorted, compact separators, UTF-8, floats in their
shortest round-trip form (weights and epochs are ratios of integers, so their
digits do not depend on the platform), nothing taken from the clock: the same
inputs give the same bytes. The ``fingerprint`` is the sha256 of the canonical
JSON of everything else. The file is that canonical JSON with the fingerprint
spliced in first, ``{"fingerprint":"<hex>",`` + body[1:], so checking an
untouched file costs one hash over its bytes; a file re-formatted by some tool
(same content, other bytes) is checked by re-serialising what was parsed.

Validation has two levels, because hashing reads every byte of the data (a
phase of real shards is terabytes) while the rest costs one ``stat`` per shard:

- always: the structure and invariants (targets sum to the phase's tokens, no
  stream beyond its epoch cap, each weight the stream's share of the tokens),
  the fingerprint, every shard present with the recorded size, its path inside
  the data root once links are resolved, no more tokens than its size can hold
  (4 bytes each), and the schema (column types; tokenizer, source, language,
  phase) and document and token counts of the first shard of each stream, read
  from its Arrow message headers only. The field checks of each shard entry are
  skipped for an untouched file, whose bytes are the ones checked when it was
  written; the checks against the files are not, since anyone can compute a
  fingerprint;
- ``check_hashes=True``: also the sha256 of every shard's content, and the
  schema and counts of every shard, parsed from the bytes read to hash it (the
  streams in threads, see ``data_problems``). A same-size edit is caught only here.

Reading. ``load_manifest`` parses the file once and checks it and its data in
that one pass, returning a frozen :class:`Manifest` (shard entries are compact
tuples: a phase lists 100k+); it raises on problems. ``validate_manifest``
makes the same checks and returns every problem instead. Both say the same
thing of a shard's schema and counts as the trainer's reader does
(``mixtures.formats.schema_problems``, ``count_problems``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import posixpath
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.ipc

from mixtures.errors import MixtureError
from mixtures.files import file_sha256
from mixtures.formats import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    BatchLayout,
    TokenizerRecord,
    batch_layout,
    check_shards,
    count_problems,
    expected_metadata,
    schema_message,
    schema_problems,
    shard_counts,
)
from mixtures.recipe import RecipeError, TrainingSpec
from mixtures.storage import (
    StorageError,
    cached_path,
    fetch,
    is_remote,
    join,
    read_bytes,
    sizes,
    write_bytes,
)

if TYPE_CHECKING:  # the compiler's types, named for the writer only: reading needs none of it
    from mixtures.compiler import Mixture
    from mixtures.counts import Counts
    from mixtures.recipe import Recipe

try:  # orjson reads and writes a 185k-shard manifest ~5-8x faster (see bench/mixture.py)
    import orjson

    JSONDecodeError, loads = orjson.JSONDecodeError, orjson.loads

    def _dumps(doc: dict[str, Any]) -> bytes:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

except ImportError:  # a GPU node with only the trainer's dependencies
    from json import JSONDecodeError, dumps, loads

    def _dumps(doc: dict[str, Any]) -> bytes:
        return dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_NONE = type(None)
_TOP_FIELDS = {
    "phase": str,
    "recipe": dict,
    "tokenizer": dict,
    "training": dict,
    "sampling": dict,
    "seed": int,
    "counts": dict,
    "data_root": (str, _NONE),
    "streams": list,
}
_STREAM_FIELDS = {
    "source": str,
    "language": str,
    "available_tokens": (int, _NONE),
    "target_tokens": int,
    "weight": (int, float),
    "expected_epochs": (int, float, _NONE),
    "capped": bool,
    "shards": list,
}
# sampling's fields besides tokens and max_epochs: what the compiler did, each optional
_SAMPLING_FIELDS = {
    "sampler": (str, _NONE),
    "temperature": (int, float, _NONE),
    "multilingual_source": (str, _NONE),
    "multilingual_tokens": (int, _NONE),
    "fixed_budgets": (dict, _NONE),
    "languages_without_data": (list, _NONE),
}
PROBLEMS_SHOWN = 10  # in the message of a manifest whose data has problems
_HEAD_BYTES = 1 << 16  # a shard this small is parsed from one read, a larger one memory-mapped
_READ_BYTES = 1 << 20  # when hashing
_HASH_WORKERS = 8
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # see _read_whole


def build_manifest(mixture: Mixture, recipe: Recipe, counts: Counts, seed: int) -> dict[str, Any]:
    """The manifest document (without its fingerprint, which ``write_manifest`` adds).

    The phase's training settings are scaled like its budgets: a mixture compiled for
    another total (``--tokens``) keeps the schedule's proportions (warmup, batch warmup).
    """
    spec = recipe.phase(mixture.phase)
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "phase": mixture.phase,
        "recipe": {"name": recipe.name, "path": str(recipe.path.resolve()), "sha256": recipe.sha256},
        "tokenizer": {**counts.tokenizer, "name": counts.tokenizer["name"] or recipe.tokenizer},
        "training": spec.training.scaled(mixture.tokens / spec.tokens).to_dict(),
        "sampling": {
            "sampler": mixture.sampler,
            "temperature": mixture.temperature,
            "tokens": mixture.tokens,
            "multilingual_source": mixture.multilingual_source,
            "multilingual_tokens": mixture.multilingual_tokens,
            "fixed_budgets": mixture.budgets,
            "max_epochs": mixture.max_epochs,
            "languages_without_data": list(mixture.languages_without_data),
        },
        "seed": seed,
        "counts": counts.origin,
        "data_root": str(counts.data_root) if counts.data_root else None,
        "streams": [
            {
                "source": t.source,
                "language": t.language,
                "available_tokens": t.available_tokens,
                "target_tokens": t.target_tokens,
                "weight": mixture.weight(t),
                "expected_epochs": t.expected_epochs,
                "capped": t.capped,
                "shards": list(t.shards),
            }
            for t in mixture.targets
        ],
    }


def canonical_json(doc: dict[str, Any]) -> bytes:
    """Sorted keys, compact separators, UTF-8: one byte string per document.

    Written by orjson where it is installed (it is a dependency of the package) and
    by the standard library otherwise; the fingerprint covers the bytes written, so
    a file is checked the same way whichever wrote it.
    """
    return _dumps(doc)


def write_manifest(doc: dict[str, Any], path: str | Path) -> str:
    """Check ``doc``, add its fingerprint, write it atomically; return the fingerprint.

    ``path`` is a local file (temporary name, then rename) or an ``s3://`` URL (one PUT).
    ``doc``'s local data root (absolute, or relative to the working directory) is written relative
    to ``path``'s directory (see the module docstring); a manifest at a URL needs its data root
    at one too (MixtureError otherwise).
    """
    doc = {key: value for key, value in doc.items() if key != "fingerprint"}
    root = doc.get("data_root")
    if isinstance(root, str) and not is_remote(root):
        if is_remote(path):
            raise MixtureError(
                f"{path}: a manifest in an object store needs its data there too, and the build is at "
                f"{root}; write the manifest to a local path, or build with --output s3://..."
            )
        doc["data_root"] = os.path.relpath(Path(root).resolve(), Path(path).parent.resolve())
    check_manifest(doc, str(path))
    body = canonical_json(doc)
    fingerprint = hashlib.sha256(body).hexdigest()
    try:  # one copy of 100+ MB
        write_bytes(path, b"".join((_prefix(fingerprint), memoryview(body)[1:], b"\n")))
    except StorageError as err:
        raise MixtureError(str(err)) from err
    return fingerprint


class ShardEntry(NamedTuple):
    """One shard of a stream: a tuple, since a phase lists 100k+ of them."""

    path: str  # relative to the data root
    documents: int | None  # None in files written before documents were recorded
    tokens: int
    bytes: int
    sha256: str


_SHARD_FIELDS = itemgetter(*ShardEntry._fields)  # a manifest's shard entry (a dict) in ShardEntry's order
_SHARD_ENTRY = partial(tuple.__new__, ShardEntry)  # ShardEntry._make without its Python frame


@dataclass(frozen=True)
class StreamEntry:
    """One (source, language) stream of the phase: its target and the shards that hold its data."""

    source: str
    language: str
    available_tokens: int | None
    target_tokens: int
    weight: float
    expected_epochs: float | None
    capped: bool
    shards: tuple[ShardEntry, ...]

    @property
    def name(self) -> str:
        return f"{self.source}/{self.language}"


@dataclass(frozen=True)
class Sampling:
    """How the phase's targets were drawn (see ``mixtures.compiler``)."""

    sampler: str | None
    temperature: float | None
    tokens: int  # the phase's total: the targets sum to it
    multilingual_source: str | None
    multilingual_tokens: int | None
    fixed_budgets: dict[str, int]
    max_epochs: float | None
    languages_without_data: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    """A phase manifest as read from its file: checked, fingerprinted, its data root absolute."""

    path: Path | str  # a str: a URL (s3://, hf://)
    phase: str
    seed: int
    fingerprint: str
    data_root: Path | str | None  # a str: a URL (s3://, hf://); None: compiled for planning, no shards
    tokenizer: TokenizerRecord
    training: TrainingSpec
    sampling: Sampling
    streams: tuple[StreamEntry, ...]
    recipe: dict[str, Any]  # name, path and sha256 of the recipe file
    counts: dict[str, Any]  # what the targets were compiled from

    @property
    def built_as(self) -> str:
        """The phase of the build the shards come from, which their metadata names: a decay variant's
        manifest reads the decay build (``counts.phase``; the manifest's own phase before that)."""
        phase = self.counts.get("phase")
        return phase if isinstance(phase, str) and phase else self.phase

    @property
    def location(self) -> str:
        """Where the manifest was read from, as another directory names it: an absolute path, or its URL."""
        return self.path if isinstance(self.path, str) else str(self.path.resolve())


def load_manifest(
    path: str | Path,
    check_hashes: bool = False,
    cache_dir: Path | None = None,
    fetched: Callable[[str, int], None] | None = None,
) -> Manifest:
    """Read a manifest (parsed once) and check it and its data; raises MixtureError naming the problems.

    Checked: the structure, the fingerprint, and every shard at its recorded size
    (``check_hashes``: also its sha256; see the module docstring). A planning
    manifest, which lists no shards, is read as it is.

    With ``cache_dir`` (a trainer's), a data root in an object store or on the hub is read from
    local copies there (`mixtures.storage.fetch`: each fetched once, size and sha256 checked):
    ``check_hashes`` fetches every shard first and hashes the copies; otherwise nothing is read
    now, and each shard is fetched and checked when it is first opened. ``fetched`` hears of each
    download (its URL and bytes).
    """
    manifest, mismatch = _parse(_location(path))
    if mismatch:
        raise MixtureError(mismatch)
    if cache_dir is not None and is_remote(manifest.data_root or ""):
        if not check_hashes:
            return manifest
        problems = data_problems(_fetched_copy(manifest, cache_dir, fetched), check_hashes)
    else:
        problems = data_problems(manifest, check_hashes)
    if problems:
        shown = "\n  ".join(problems[:PROBLEMS_SHOWN])
        raise MixtureError(f"{path}: {len(problems)} problem(s) with its data:\n  {shown}")
    return manifest


def _fetched_copy(
    manifest: Manifest, cache_dir: Path, fetched: Callable[[str, int], None] | None
) -> Manifest:
    """The manifest over local copies of its remote shards, every one fetched into ``cache_dir``."""
    root = str(manifest.data_root)
    for shard in (shard for stream in manifest.streams for shard in stream.shards):
        url = join(root, shard.path)
        try:
            _, downloaded = fetch(url, cache_dir, shard.bytes, shard.sha256)
        except StorageError as err:
            raise MixtureError(str(err)) from err
        if downloaded and fetched:
            fetched(url, shard.bytes)
    return dataclasses.replace(manifest, data_root=cached_path(root, cache_dir))


def validate_manifest(
    path: str | Path, check_hashes: bool = True, tokenizer: str | Path | None = None
) -> list[str]:
    """Every problem found in a manifest and the shards it lists, in order (empty when all is well).

    ``tokenizer`` (a tokenizer.json, a directory holding one, or a name) must
    match the manifest's tokenizer. See the module docstring for what
    ``check_hashes`` adds.
    """
    path = _location(path)
    try:
        manifest, mismatch = _parse(path)
    except MixtureError as err:
        return [str(err)]
    problems = [mismatch] if mismatch else []
    if tokenizer is not None:
        problems += _tokenizer_problems(manifest.tokenizer, tokenizer)
    if manifest.data_root is None:
        return [*problems, f"{path}: compiled from counts for planning, so it lists no shards to check"]
    return problems + data_problems(manifest, check_hashes)


def data_problems(manifest: Manifest, check_hashes: bool) -> list[str]:
    """Problems with the shards a manifest lists: missing, outside the data root, resized, rehashed,
    of other counts or columns, or made for another stream.

    Sizes come from ``lstat`` relative to the open data root, which spares the
    kernel a walk of the full path for each of 100k+ shards. The schema and
    counts are read from the first shard of each stream (every shard with
    ``check_hashes``). Hashing reads every byte, so its streams are checked in
    :func:`hash_workers` threads (reads and sha256 release the GIL), the problems
    listed in stream order whatever order the threads finish in.
    """
    if manifest.data_root is None:
        return []
    if is_remote(manifest.data_root):
        return _remote_data_problems(manifest, str(manifest.data_root), check_hashes)
    root = str(manifest.data_root)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        if isinstance(manifest.path, str):
            return [f"missing data root: {root} ({err.strerror}), which {manifest.path} names"]
        relative = os.path.relpath(root, manifest.path.parent.resolve())
        return [
            f"missing data root: {root} ({err.strerror}); the manifest finds its data at "
            f"{relative!r} from its own directory, so move manifests and data together"
        ]
    inside = _Inside(root)

    def check(stream: StreamEntry) -> list[str]:
        expected = stream_metadata(manifest, stream)
        return _stream_problems(root_fd, root, stream.shards, expected, check_hashes, inside)

    workers = hash_workers() if check_hashes else 1
    try:
        if workers == 1:
            found = list(map(check, manifest.streams))
        else:
            with ThreadPoolExecutor(workers) as pool:
                found = list(pool.map(check, manifest.streams))
    finally:
        os.close(root_fd)
    return [problem for problems in found for problem in problems]


def hash_workers() -> int:
    """Threads that hash shards: one per core this process may run on, at most ``_HASH_WORKERS``
    (beyond a few, the disk is the limit)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, _HASH_WORKERS))


def stream_metadata(manifest: Manifest, stream: StreamEntry) -> dict[str, str | None]:
    """The schema metadata each shard of ``stream`` must carry."""
    tokenizer = manifest.tokenizer
    return expected_metadata(
        tokenizer.name, tokenizer.sha256, stream.source, stream.language, manifest.built_as
    )


def _location(path: str | Path) -> Path | str:
    """A manifest's location: a local ``Path``, or a URL kept as a string (``Path`` would fold its ``//``)."""
    return str(path) if is_remote(path) else Path(path)


def _parse(path: Path | str) -> tuple[Manifest, str | None]:
    """The manifest, and its fingerprint problem (None: the file is as written)."""
    doc, recorded, actual = _read(path)
    where = str(path)
    try:
        training = TrainingSpec.from_dict(doc["training"], f"{where}: training")
    except RecipeError as err:
        raise MixtureError(str(err)) from err
    sampling = doc["sampling"]
    manifest = Manifest(
        path=path,
        phase=doc["phase"],
        seed=doc["seed"],
        fingerprint=recorded,
        data_root=_absolute_root(doc, path),
        tokenizer=TokenizerRecord.from_dict(doc["tokenizer"], where, planned=doc["data_root"] is None),
        training=training,
        sampling=Sampling(
            sampler=sampling.get("sampler"),
            temperature=sampling.get("temperature"),
            tokens=sampling["tokens"],
            multilingual_source=sampling.get("multilingual_source"),
            multilingual_tokens=sampling.get("multilingual_tokens"),
            fixed_budgets=dict(sampling.get("fixed_budgets") or {}),
            max_epochs=sampling.get("max_epochs"),
            languages_without_data=tuple(sampling.get("languages_without_data") or ()),
        ),
        streams=tuple(
            StreamEntry(
                source=stream["source"],
                language=stream["language"],
                available_tokens=stream["available_tokens"],
                target_tokens=stream["target_tokens"],
                weight=stream["weight"],
                expected_epochs=stream["expected_epochs"],
                capped=stream["capped"],
                shards=_shard_entries(stream["shards"]),
            )
            for stream in doc["streams"]
        ),
        recipe=doc["recipe"],
        counts=doc["counts"],
    )
    return manifest, None if recorded == actual else _fingerprint_problem(recorded, actual, path)


def _shard_entries(shards: list[dict[str, Any]]) -> tuple[ShardEntry, ...]:
    """A stream's shard entries as tuples: built in C (``map``) when every entry records its documents,
    one by one otherwise (a manifest written before documents were recorded)."""
    try:
        return tuple(map(_SHARD_ENTRY, map(_SHARD_FIELDS, shards)))
    except KeyError:
        return tuple(
            ShardEntry(s["path"], s.get("documents"), s["tokens"], s["bytes"], s["sha256"]) for s in shards
        )


def _absolute_root(doc: dict[str, Any], path: Path | str) -> Path | str | None:
    """The manifest's data root as an absolute path, the file's own directory standing for ``.``
    (a URL as written; a relative root of a manifest at a URL, joined to its directory)."""
    root = doc["data_root"]
    if root is None or is_remote(root):
        return root
    if isinstance(path, Path):
        return Path(os.path.normpath(path.parent.resolve() / root))
    if os.path.isabs(root):
        return Path(root)
    scheme, _, key = path.partition("://")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(key), root))
    if joined == ".." or joined.startswith("../"):
        raise MixtureError(f"{path}: data_root: {root!r} leads out of its bucket or repository")
    return f"{scheme}://{joined}"


def _remote_data_problems(manifest: Manifest, root: str, check_hashes: bool) -> list[str]:
    """`data_problems` for a data root in an object store: sizes from one listing of the root; the
    first shard of each stream (every shard with ``check_hashes``) read whole, for its sha256,
    schema and counts. Keys are paths under the root, so no shard can point outside it."""
    try:
        listed = sizes(root)
    except StorageError as err:
        return [f"unreadable data root: {err}"]
    problems = []
    for stream in manifest.streams:
        expected = stream_metadata(manifest, stream)
        for index, shard in enumerate(stream.shards):
            size = listed.get(shard.path)
            if size is None:
                problems.append(f"missing shard: {shard.path} (no object {join(root, shard.path)})")
                continue
            if size != shard.bytes:
                problems.append(
                    f"changed shard: {shard.path} has {size:,} bytes, the manifest records {shard.bytes:,}"
                )
                continue
            if not (check_hashes or index == 0):
                continue
            try:
                data = read_bytes(join(root, shard.path))
            except StorageError as err:
                problems.append(f"unreadable shard: {shard.path} ({err})")
                continue
            digest = hashlib.sha256(data).hexdigest()
            if check_hashes and digest != shard.sha256:
                problems.append(
                    f"changed shard: {shard.path} content sha256 {digest[:16]}... differs from the "
                    f"manifest's {shard.sha256[:16]}..."
                )
                continue
            problems += _shard_problems(pa.py_buffer(data), shard, expected)
    return problems


def _stream_problems(
    root_fd: int,
    root: str,
    shards: tuple[ShardEntry, ...],
    expected: dict[str, str | None],
    check_hashes: bool,
    inside: _Inside,
) -> list[str]:
    """Problems with one stream's shards (see :func:`data_problems`).

    With ``check_hashes``, each shard is read once (:func:`_read_whole`) and its hash, schema
    and counts come from those bytes. Its schema and counts are read with pyarrow until one shard
    of the stream passes; a later shard whose schema message is the same bytes has the same
    schema, and its counts are read from its batch headers by that shard's layout
    (``BatchLayout``), without opening a reader. A shard that is anything but as its entry says
    takes the full path, for the message.
    """
    problems = []
    known: tuple[bytes, BatchLayout] | None = None  # of a shard of this stream that passed every check
    for index, shard in enumerate(shards):
        data = _read_whole(root_fd, shard, inside) if check_hashes else None
        if data is None:
            problems += _shard_check(root_fd, root, index, shard, expected, check_hashes, inside)
            continue
        if known is not None and data.startswith(known[0]):
            counts = known[1].counts(data, len(known[0]))
            if counts and counts[1] == shard.tokens and shard.documents in (None, counts[0]):
                continue
        found = _shard_problems(pa.py_buffer(data), shard, expected)
        if not found and known is None:
            schema = schema_message(data)
            layout = schema and batch_layout(data, len(schema))
            known = (schema, layout) if layout else None
        problems += found
    return problems


def _read_whole(root_fd: int, shard: ShardEntry, inside: _Inside) -> bytes | None:
    """A small shard's content, read once, when it is a file (not a link) inside the data root of the
    size and sha256 its entry records; None for anything else, which :func:`_shard_check` then words.

    One ``open`` relative to the data root (refusing a link, not blocking on a pipe) and one
    ``read`` of a byte more than the recorded size (to see a file that grew) stand for the
    ``stat`` of the full check. A shard of ``_READ_BYTES`` or more takes the full check, which
    hashes it in chunks: its reading costs far more than the few calls saved here.
    """
    if shard.bytes >= _READ_BYTES or not inside[shard.path.rpartition("/")[0]]:
        return None
    try:
        fd = os.open(shard.path, _OPEN_FLAGS, dir_fd=root_fd)
    except OSError:
        return None
    try:
        data = os.read(fd, shard.bytes + 1)
    except OSError:  # a directory, say
        return None
    finally:
        os.close(fd)
    if len(data) != shard.bytes or hashlib.sha256(data).hexdigest() != shard.sha256:
        return None
    return data


def _shard_check(
    root_fd: int,
    root: str,
    index: int,
    shard: ShardEntry,
    expected: dict[str, str | None],
    check_hashes: bool,
    inside: _Inside,
) -> list[str]:
    """Problems with one shard, every check made in turn and worded (see :func:`data_problems`)."""
    try:
        status = os.stat(shard.path, dir_fd=root_fd, follow_symlinks=False)
        link = stat.S_ISLNK(status.st_mode)
        directory = shard.path.rpartition("/")[0]
        outside = inside.problem(shard.path) if link or not inside[directory] else None
        if link and not outside:
            status = os.stat(shard.path, dir_fd=root_fd)
    except FileNotFoundError:
        return [f"missing shard: {shard.path} (no file {os.path.join(root, shard.path)})"]
    if outside:
        return [outside]
    if status.st_size != shard.bytes:
        return [
            f"changed shard: {shard.path} has {status.st_size:,} bytes, the manifest records {shard.bytes:,}"
        ]
    if check_hashes or index == 0:
        try:
            digest, source = _read_shard(os.path.join(root, shard.path), shard.bytes, check_hashes)
        except OSError as err:  # a directory, say, or a file this user may not read
            return [f"unreadable shard: {shard.path} ({err.strerror or err})"]
        if check_hashes and digest != shard.sha256:
            return [
                f"changed shard: {shard.path} content sha256 {digest[:16]}... differs from the "
                f"manifest's {shard.sha256[:16]}..."
            ]
        return _shard_problems(source, shard, expected)
    if 4 * shard.tokens > shard.bytes:  # the ids are uncompressed uint32: at most bytes / 4 of them
        return [
            f"count mismatch: shard {shard.path} of {shard.bytes:,} bytes cannot hold the "
            f"{shard.tokens:,} tokens the manifest records (4 bytes each); "
            "the manifest does not describe this file; compile it again from the build"
        ]
    return []


class _Inside(dict):
    """Whether shard paths, links resolved, stay inside the data root: one ``realpath`` per directory.

    A phase's 100k+ shards sit in a few thousand directories, so each directory
    is resolved once (``inside[directory]``: whether it resolves inside the
    root), and a file only when it is itself a link. The check holds whatever
    the manifest's fingerprint, which anyone can compute.
    """

    def __init__(self, root: str):
        super().__init__()
        self.root = os.path.realpath(root)

    def __missing__(self, directory: str) -> bool:
        self[directory] = self._contains(os.path.join(self.root, directory))
        return self[directory]

    def problem(self, path: str) -> str | None:
        """The message for a shard path that leads out of the data root (None: it stays inside)."""
        resolved = os.path.realpath(os.path.join(self.root, path))
        if self._contains(resolved):
            return None
        return (
            f"shard outside the data root: {path} resolves to {resolved}, outside {self.root}; "
            "a manifest reads only files inside its data root; compile it again from the build"
        )

    def _contains(self, path: str) -> bool:
        resolved = os.path.realpath(path)
        return resolved == self.root or resolved.startswith(self.root + os.sep)


def check_manifest(doc: Any, where: str) -> None:
    """Raise MixtureError unless ``doc`` (without fingerprint) has the manifest's structure and invariants.

    Every shard entry is checked too, whatever the fingerprint says: anyone can compute
    one, so a right fingerprint proves the file unchanged since it was fingerprinted,
    not that ``write_manifest`` wrote it (``check_shards`` does 100k+ entries in bulk).
    """
    if not isinstance(doc, dict):
        raise MixtureError(f"{where}: expected a JSON object")
    if doc.get("format") != MANIFEST_FORMAT:
        raise MixtureError(f"{where}: format: expected {MANIFEST_FORMAT!r}, got {doc.get('format')!r}")
    if doc.get("version") != MANIFEST_VERSION:
        raise MixtureError(
            f"{where}: version: this version of mmbert-data reads manifest version {MANIFEST_VERSION}, "
            f"got {doc.get('version')!r}"
        )
    _check_fields(doc, _TOP_FIELDS, where)
    if doc["seed"] < 0:
        raise MixtureError(f"{where}: seed: expected an integer >= 0, got {doc['seed']}")
    sampling = doc["sampling"]
    total = sampling.get("tokens")
    max_epochs = sampling.get("max_epochs")
    if type(total) is not int or total <= 0:
        raise MixtureError(f"{where}: sampling.tokens: expected an integer > 0, got {total!r}")
    if max_epochs is not None and not (isinstance(max_epochs, (int, float)) and max_epochs > 0):
        raise MixtureError(f"{where}: sampling.max_epochs: expected a number > 0 or null, got {max_epochs!r}")
    _check_fields({key: None for key in _SAMPLING_FIELDS} | sampling, _SAMPLING_FIELDS, f"{where}: sampling")
    for source, budget in (sampling.get("fixed_budgets") or {}).items():
        if type(budget) is not int or budget < 0:
            raise MixtureError(
                f"{where}: sampling.fixed_budgets.{source}: expected tokens >= 0, got {budget!r}"
            )
    if not all(isinstance(code, str) for code in sampling.get("languages_without_data") or ()):
        raise MixtureError(f"{where}: sampling.languages_without_data: expected a list of language codes")
    targets = 0
    for i, stream in enumerate(doc["streams"]):
        here = f"{where}: streams[{i}]"
        _check_fields(stream, _STREAM_FIELDS, here)
        here = f"{here} ({stream['source']}/{stream['language']})"
        target, available = stream["target_tokens"], stream["available_tokens"]
        if target < 0:
            raise MixtureError(f"{here}: target_tokens: expected an integer >= 0, got {target}")
        targets += target
        if max_epochs is not None and available is not None and target > math.floor(available * max_epochs):
            raise MixtureError(
                f"{here}: target_tokens {target:,} exceeds the epoch cap, "
                f"{max_epochs:g} x its {available:,} tokens"
            )
        check_shards(stream["shards"], here)
    if targets != total:
        raise MixtureError(f"{where}: streams: target tokens sum to {targets:,}, not the phase's {total:,}")
    for i, stream in enumerate(doc["streams"]):
        share = stream["target_tokens"] / total  # what the trainer draws by: the weight beside it must agree
        if not math.isclose(stream["weight"], share, rel_tol=1e-9, abs_tol=1e-15):
            raise MixtureError(
                f"{where}: streams[{i}] ({stream['source']}/{stream['language']}): weight: "
                f"{stream['weight']!r} is not the stream's share of the phase's tokens, {share!r} "
                "(target_tokens / sampling.tokens); compile the manifest again"
            )


def _read(path: Path | str) -> tuple[dict[str, Any], str, str]:
    """The parsed document, its recorded fingerprint, and the fingerprint of its content."""
    try:
        raw = read_bytes(path)
    except OSError as err:
        raise MixtureError(f"cannot read manifest {path}: {err.strerror or err}") from err
    except StorageError as err:
        raise MixtureError(f"cannot read manifest {err}") from err
    try:
        doc = loads(raw)
    except JSONDecodeError as err:
        raise MixtureError(f"{path}: not a JSON manifest: {err}") from err
    recorded = doc.pop("fingerprint", None) if isinstance(doc, dict) else None
    if not isinstance(recorded, str):
        raise MixtureError(
            f"{path}: fingerprint: missing; is this a manifest written by `mmbert-data mixture`?"
        )
    check_manifest(doc, str(path))
    if _untouched(raw, recorded):
        return doc, recorded, recorded
    return doc, recorded, hashlib.sha256(canonical_json(doc)).hexdigest()


def _untouched(raw: bytes, fingerprint: str) -> bool:
    """Whether ``raw`` is byte for byte what ``write_manifest`` wrote with this fingerprint."""
    prefix = _prefix(fingerprint)
    if not raw.startswith(prefix):
        return False
    digest = hashlib.sha256(b"{")
    digest.update(memoryview(raw)[len(prefix) : len(raw.rstrip())])
    return digest.hexdigest() == fingerprint


def _prefix(fingerprint: str) -> bytes:
    return b'{"fingerprint":"' + fingerprint.encode() + b'",'


def _fingerprint_problem(recorded: str, actual: str, path: str | Path) -> str:
    return (
        f"fingerprint mismatch: {path} was edited after it was written "
        f"(recorded {recorded[:16]}..., content hashes to {actual[:16]}...); compile it again"
    )


def _tokenizer_problems(recorded: TokenizerRecord, tokenizer: str | Path) -> list[str]:
    """Compare the manifest's tokenizer with one given as a tokenizer.json, its directory, or a name."""
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        digest = file_sha256(str(path))
        if digest != recorded.sha256:
            return [
                f"tokenizer mismatch: {path} has sha256 {digest[:16]}..., "
                "the manifest's shards were tokenized "
                f"with {recorded.name} (sha256 {str(recorded.sha256)[:16]}...)"
            ]
        return []
    if str(tokenizer) != recorded.name:
        return [
            f"tokenizer mismatch: expected {tokenizer}, "
            f"the manifest's shards were tokenized with {recorded.name}"
        ]
    return []


def _read_shard(file: str, size: int, check_hashes: bool) -> tuple[str | None, Any]:
    """One pass over a shard of ``size`` bytes: its sha256 (with ``check_hashes``, else None), and what
    to parse it from: the bytes read when they hold the whole file, else a memory map (of which
    only the message headers are then read)."""
    with open(file, "rb") as handle:
        head = handle.read(_READ_BYTES if check_hashes else _HEAD_BYTES)
        digest = hashlib.sha256(head) if check_hashes else None
        while digest and (chunk := handle.read(_READ_BYTES)):
            digest.update(chunk)
    source = pa.py_buffer(head) if len(head) >= size else pa.memory_map(file)
    return digest and digest.hexdigest(), source


def _shard_problems(source: Any, shard: ShardEntry, expected: dict[str, str | None]) -> list[str]:
    """Compare a shard's schema and its counts (from the batch headers) with what its entry says."""
    try:
        reader = pyarrow.ipc.open_stream(source)
        problems = schema_problems(reader.schema, shard.path, expected)
        found = None if problems else shard_counts(reader)
    except (OSError, pa.ArrowInvalid) as err:
        return [f"unreadable shard: {shard.path} is not an Arrow IPC stream ({err})"]
    return problems or count_problems(shard.path, (shard.documents, shard.tokens), found)


def _check_fields(obj: Any, fields: dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise MixtureError(f"{where}: expected an object")
    for key, kinds in fields.items():
        if key not in obj:
            raise MixtureError(f"{where}: {key}: missing")
        value = obj[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
            raise MixtureError(f"{where}: {key}: unexpected value {value!r}")
