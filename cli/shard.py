"""`mmbert-data inspect SHARD`: what a token shard says of itself, and its first documents as text.

A shard's schema metadata names its tokenizer (name and sha256 of its
``tokenizer.json``), source, language and phase (``mixtures.formats``). The
documents are decoded with that tokenizer, found as `mmbert-train export` finds it
(``pipeline.tokenizer.find_tokenizer``), and refused when the file found is not the
one the shard was made with.

The shard's structure is checked as the trainer checks it on open (schema,
offsets, ids within the tokenizer's vocabulary: ``mixtures.formats``), so a
damaged shard is an error, not a normal-looking listing. ``--verify`` also
hashes it and compares it, with its counts, with what its build recorded (the
phase directory's ``stats.json``) or with a manifest (``--manifest``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import typer

from cli.options import local_path, location
from mixtures.errors import MixtureError
from mixtures.files import file_sha256
from mixtures.formats import (
    HELDOUT_DIR,
    SHARD_METADATA,
    count_problems,
    input_ids_problem,
    schema_problems,
)
from mixtures.storage import is_remote


def inspect(
    shard: Path = typer.Argument(
        ..., help="A token shard (OUTPUT/PHASE/SOURCE/LANGUAGE/*.arrow).", callback=local_path
    ),
    documents: int = typer.Option(3, "--documents", "-n", min=0, help="How many documents to print."),
    chars: int = typer.Option(400, "--chars", min=1, help="Print at most this many characters of each."),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="Decode with this tokenizer.json, directory, hub name or sample:DIR instead of the shard's.",
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Also hash the shard and compare it and its counts with its entry in the build's stats.json "
        "(in its phase directory) or in --manifest.",
    ),
    manifest: str | None = typer.Option(
        None,
        "--manifest",
        "-m",
        help="With --verify: compare with this manifest's entry instead (a path or URL).",
        callback=location,
    ),
) -> None:
    """Print a shard's metadata (tokenizer, source, language, phase) and a few decoded documents."""
    from pipeline.tokenizer import find_tokenizer, load_tokenizer

    try:
        metadata, table = _read(shard)
        name, sha256 = metadata["mmbert.tokenizer.name"], metadata["mmbert.tokenizer.sha256"]
        loaded = load_tokenizer(tokenizer or find_tokenizer(name, sha256))
        if tokenizer is None and loaded.sha256 != sha256:
            raise ValueError(
                f"{shard}: tokenizer {name} found here has sha256 {loaded.sha256[:16]}..., the shard was "
                f"made with {sha256[:16]}...; pass --tokenizer with the file it was made with"
            )
        rows, total_tokens = _check(shard, table, loaded.tokenizer.get_vocab_size(with_added_tokens=True))
        verified = _verify(shard, manifest, (rows, total_tokens)) if verify else None
    except (OSError, ValueError, pa.ArrowInvalid) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(str(shard))
    for key in SHARD_METADATA:
        typer.echo(f"  {key.removeprefix('mmbert.')}: {metadata[key]}")
    typer.echo(f"  documents: {rows:,}, tokens: {total_tokens:,}")
    if verified:
        typer.echo(f"  verified: sha256 and counts as {verified} records them")
    table = table.slice(0, documents)
    head = zip(table.column("id").to_pylist(), table.column("input_ids").to_pylist(), strict=True)
    for index, (doc_id, ids) in enumerate(head):
        text = loaded.tokenizer.decode(ids, skip_special_tokens=True)
        more = f" ... ({len(text) - chars:,} more characters)" if len(text) > chars else ""
        typer.echo(f"\n[{index}] id {doc_id} ({len(ids):,} tokens)\n{text[:chars]}{more}")


def _read(path: Path) -> tuple[dict[str, str], pa.Table]:
    """Schema metadata and the rows (memory-mapped, a chunk per record batch), the column types checked."""
    if path.is_dir():
        shard = min(path.rglob("*.arrow"), default=None)
        example = f"such as {shard}" if shard else "OUTPUT/PHASE/SOURCE/LANGUAGE/*.arrow"
        raise ValueError(f"{path} is a directory; inspect takes one shard, {example}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        reader = pyarrow.ipc.open_stream(pa.memory_map(str(path)))
        metadata = {key.decode(): value.decode() for key, value in (reader.schema.metadata or {}).items()}
        problems = schema_problems(reader.schema, str(path), dict.fromkeys(SHARD_METADATA))
        table = reader.read_all()
    except (OSError, pa.ArrowInvalid) as err:
        raise ValueError(f"{path}: not a token shard (an Arrow IPC stream file): {err}") from err
    missing = [key for key in SHARD_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"{path}: not an mmbert-data token shard (no {', '.join(missing)})")
    if problems:
        raise ValueError(problems[0])
    return metadata, table


def _check(path: Path, table: pa.Table, vocab_size: int) -> tuple[int, int]:
    """Documents and tokens, once the offsets and ids are checked as the trainer checks them on open."""
    rows = tokens = 0
    for column in table.column("input_ids").chunks:
        offsets, values = column.offsets.to_numpy(), column.values.to_numpy()
        problem = input_ids_problem(str(path), offsets, values, rows, vocab_size)
        if problem:
            raise ValueError(problem)
        rows, tokens = rows + len(column), tokens + len(values)
    return rows, tokens


def _verify(path: Path, manifest: Path | str | None, counts: tuple[int, int]) -> str:
    """Compare the shard with its recorded entry (sha256, documents, tokens); return the record's name."""
    from mixtures.counts import load_stats
    from mixtures.manifest import load_manifest

    file = path.resolve()
    try:
        if manifest is None:
            # OUTPUT/PHASE/SOURCE/LANGUAGE/NAME.arrow, or OUTPUT/PHASE/heldout/SOURCE/LANGUAGE/NAME.arrow
            phase_dir = file.parents[3] if file.parents[2].name == HELDOUT_DIR else file.parents[2]
            record = phase_dir / "stats.json"
            relative = file.relative_to(phase_dir).as_posix()
            streams = load_stats(record)["streams"]
            listed = (e for stream in streams for e in (*stream["shards"], *stream["heldout"]))
            entries = [entry for entry in listed if entry["path"] == relative]
        else:
            record, loaded = manifest, load_manifest(manifest)
            root = loaded.data_root

            def lists(entry_path: str) -> bool:  # a remote root's shard is a copy: matched by its path
                if is_remote(root):
                    return file.as_posix().endswith(f"/{entry_path}")
                return (root / entry_path).resolve() == file

            entries = [
                entry._asdict() for stream in loaded.streams for entry in stream.shards if lists(entry.path)
            ]
    except (MixtureError, IndexError) as err:
        raise ValueError(f"{path}: --verify needs its build's stats.json or --manifest: {err}") from err
    if not entries:
        raise ValueError(f"{path}: not listed in {record}; pass --manifest with a manifest that lists it")
    entry = entries[0]
    digest = file_sha256(file)
    if digest != entry["sha256"]:
        raise ValueError(
            f"changed shard: {path} content sha256 {digest[:16]}... differs from {record}'s "
            f"{entry['sha256'][:16]}...; it changed after the build wrote it: restore it, or rebuild the "
            "phase with `mmbert-data build --overwrite`"
        )
    problems = count_problems(str(path), (entry.get("documents"), entry["tokens"]), counts)
    if problems:
        raise ValueError(problems[0])
    return str(record)
