"""`mmbert-data inspect SHARD`: what a token shard says of itself, and its first documents as text.

A shard's schema metadata names its tokenizer (name and sha256 of its
``tokenizer.json``), source, language and phase (``mixtures.formats``). The
documents are decoded with that tokenizer, found as `mmbert-train export` finds it
(``pipeline.tokenizer.find_tokenizer``), and refused when the file found is not the
one the shard was made with.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import typer

from mixtures.formats import SHARD_METADATA


def inspect(
    shard: Path = typer.Argument(..., help="A token shard (OUTPUT/PHASE/SOURCE/LANGUAGE/*.arrow)."),
    documents: int = typer.Option(3, "--documents", "-n", min=0, help="How many documents to print."),
    chars: int = typer.Option(400, "--chars", min=1, help="Print at most this many characters of each."),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="Decode with this tokenizer.json, directory, hub name or sample:DIR instead of the shard's.",
    ),
) -> None:
    """Print a shard's metadata (tokenizer, source, language, phase) and a few decoded documents."""
    from pipeline.tokenizer import find_tokenizer, load_tokenizer

    try:
        metadata, rows, total_tokens, head = _read(shard, documents)
        name, sha256 = metadata["mmbert.tokenizer.name"], metadata["mmbert.tokenizer.sha256"]
        loaded = load_tokenizer(tokenizer or find_tokenizer(name, sha256))
        if tokenizer is None and loaded.sha256 != sha256:
            raise ValueError(
                f"{shard}: tokenizer {name} found here has sha256 {loaded.sha256[:16]}..., the shard was "
                f"made with {sha256[:16]}...; pass --tokenizer with the file it was made with"
            )
    except (OSError, ValueError, pa.ArrowInvalid) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(str(shard))
    for key in SHARD_METADATA:
        typer.echo(f"  {key.removeprefix('mmbert.')}: {metadata[key]}")
    typer.echo(f"  documents: {rows:,}, tokens: {total_tokens:,}")
    for index, (doc_id, ids) in enumerate(head):
        text = loaded.tokenizer.decode(ids, skip_special_tokens=True)
        more = f" ... ({len(text) - chars:,} more characters)" if len(text) > chars else ""
        typer.echo(f"\n[{index}] id {doc_id} ({len(ids):,} tokens)\n{text[:chars]}{more}")


def _read(path: Path, documents: int) -> tuple[dict[str, str], int, int, list[tuple[str, list[int]]]]:
    """Schema metadata, document and token counts, and the first ``documents`` (id, token ids) rows."""
    if path.is_dir():
        shard = min(path.rglob("*.arrow"), default=None)
        example = f"such as {shard}" if shard else "OUTPUT/PHASE/SOURCE/LANGUAGE/*.arrow"
        raise ValueError(f"{path} is a directory; inspect takes one shard, {example}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        reader = pyarrow.ipc.open_stream(pa.memory_map(str(path)))
        metadata = {key.decode(): value.decode() for key, value in (reader.schema.metadata or {}).items()}
        batches = list(reader)
    except (OSError, pa.ArrowInvalid) as err:
        raise ValueError(f"{path}: not a token shard (an Arrow IPC stream file): {err}") from err
    missing = [key for key in SHARD_METADATA if key not in metadata]
    if missing or not {"id", "input_ids"} <= set(reader.schema.names):
        raise ValueError(
            f"{path}: not an mmbert-data token shard (no {', '.join(missing) or 'id/input_ids columns'})"
        )
    rows = sum(batch.num_rows for batch in batches)
    tokens = sum(len(batch.column("input_ids").values) for batch in batches)
    table = pa.Table.from_batches(batches, reader.schema).slice(0, documents)
    head = list(zip(table.column("id").to_pylist(), table.column("input_ids").to_pylist(), strict=True))
    return metadata, rows, tokens, head
