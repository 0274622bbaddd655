"""Build outputs for the tests: fake builds (real Arrow shards and a stats.json of the build's format)
for the mixture tests, a manifest compiled from one, a real build's shards read back, and a small
tokenizer.json for the trainer's exports."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from mixtures.compiler import compile_phase
from mixtures.counts import read_stats
from mixtures.formats import HELDOUT_DIR, SHARD_SCHEMA, STATS_FORMAT, STATS_VERSION, shard_metadata
from mixtures.manifest import build_manifest, write_manifest
from mixtures.recipe import load_recipe

TOKENIZER_NAME = "jhu-clsp/mmBERT-base"
TOKENIZER_JSON = b'{"model": {"type": "BPE"}, "version": "test"}'
TOKENIZER_SHA256 = hashlib.sha256(TOKENIZER_JSON).hexdigest()
TOKENIZER = {
    "name": TOKENIZER_NAME,
    "sha256": TOKENIZER_SHA256,
    "vocab_size": 256_000,
    "special_ids": {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4},
}

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # Gemma 2's ids 0..4
CORPUS = ["the cat sat on the mat", "a dog ran in the park", "my bird sang in a tree"]

# (source, language) -> token count of each shard; the decay phase of the bundled recipe.
DECAY_STREAMS = {
    ("fineweb2", "fra_Latn"): [3000, 2000],
    ("fineweb2", "deu_Latn"): [3000],
    ("fineweb2", "srp_Cyrl"): [800],
    ("fineweb2", "srp_Latn"): [200],
    ("fineweb2", "fao_Latn"): [20],
    ("wikipedia", "fra_Latn"): [1500],
    ("wikipedia", "deu_Latn"): [500],
    ("arxiv", "eng_Latn"): [1000],
    ("dolmino", "eng_Latn"): [1200],
    ("code", "zxx_Zyyy"): [800],
}


def write_shard(
    path: Path,
    tokens: int,
    source: str,
    language: str,
    phase: str,
    tokenizer_sha256: str = TOKENIZER_SHA256,
) -> dict:
    """An Arrow IPC stream shard of ``tokens`` tokens in documents of up to 100; returns its stats entry."""
    lengths = [100] * (tokens // 100) + ([tokens % 100] if tokens % 100 else [])
    ids = [f"{language}-{i}" for i in range(len(lengths))]
    input_ids = [[(i * 7 + j) % 256000 for j in range(length)] for i, length in enumerate(lengths)]
    schema = SHARD_SCHEMA.with_metadata(
        shard_metadata(TOKENIZER_NAME, tokenizer_sha256, source, language, phase)
    )
    table = pa.table({"id": ids, "input_ids": input_ids}, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    data = path.read_bytes()
    return {
        "documents": len(lengths),
        "tokens": tokens,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def write_build(
    output: Path,
    phase: str = "decay",
    streams: dict[tuple[str, str], list[int]] | None = None,
    recipe_sha256: str = "0" * 64,
    shard_tokenizer_sha256: str = TOKENIZER_SHA256,
) -> Path:
    """Write ``output/phase`` with shards and stats.json as `mmbert-data build` does; return the phase dir."""
    phase_dir = output / phase
    entries = []
    for (source, language), shard_tokens in (streams or DECAY_STREAMS).items():
        shards = []
        for index, tokens in enumerate(shard_tokens):
            relative = f"{source}/{language}/{index:05d}.arrow"
            shard = write_shard(phase_dir / relative, tokens, source, language, phase, shard_tokenizer_sha256)
            shards.append({"path": relative, **shard})
        entries.append(
            {
                "source": source,
                "language": language,
                "documents_read": sum(s["documents"] for s in shards) + 3,
                "documents_kept": sum(s["documents"] for s in shards),
                "documents_heldout": 0,
                "drops": {"language_score": 2, "gopher_repetition": 1},
                "tokens": sum(s["tokens"] for s in shards),
                "bytes": sum(s["tokens"] for s in shards) * 4,
                "shards": shards,
                "heldout_tokens": 0,
                "heldout": [],
            }
        )
    stats = {
        "format": STATS_FORMAT,
        "version": STATS_VERSION,
        "phase": phase,
        "recipe": {"path": "/abs/mixtures/recipes/mmbert.yaml", "sha256": recipe_sha256},
        "tokenizer": TOKENIZER,
        "streams": entries,
        "errors": {"count": 0, "report": None},
    }
    (phase_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    return phase_dir


def write_last_build(cache: Path, output: Path, phases: list[str]) -> None:
    """A "last build" pointer in the shared cache, as another tool or an older version may leave one:
    nothing may read it."""
    cache.mkdir(parents=True, exist_ok=True)
    record = {"output": str(output), "phases": {phase: str(output / phase) for phase in phases}}
    (cache / "last-build.json").write_text(json.dumps(record))


def compile_to(build: Path, path: Path, seed: int = 0) -> dict:
    """The decay manifest of 10k tokens over the build at ``build``, written to ``path``."""
    recipe = load_recipe()
    counts = read_stats(build)
    doc = build_manifest(compile_phase(recipe, "decay", counts, tokens=10_000), recipe, counts, seed)
    write_manifest(doc, path)
    return doc


def shard_rows(phase_dir: Path, heldout: bool = False) -> dict[str, list[tuple[str, list[int]]]]:
    """language -> sorted (id, input_ids) over every training shard of the phase (``heldout``: every
    held-out shard)."""
    import datasets  # only the build tests read shards back this way

    rows: dict[str, list] = {}
    for path in sorted(phase_dir.glob(f"{HELDOUT_DIR}/*/*/*.arrow" if heldout else "*/*/*.arrow")):
        table = datasets.Dataset.from_file(str(path))
        language = path.parent.name
        rows.setdefault(language, []).extend(zip(table["id"], table["input_ids"], strict=True))
    return {language: sorted(r) for language, r in rows.items()}


def manifest_document(path: Path) -> dict:
    """A manifest file's JSON document as ``write_manifest`` takes it: no fingerprint, the data root
    absolute (the file holds it relative to itself), for tests that write variants of a manifest."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    del doc["fingerprint"]
    if doc["data_root"] is not None:
        doc["data_root"] = str((path.parent / doc["data_root"]).resolve())
    return doc


def rewrite_ids(path: Path, ids_type: pa.DataType, convert=lambda value: value) -> dict:
    """Rewrite a shard in place with ``input_ids`` of another element type (``convert`` maps each id);
    returns its new ``bytes`` and ``sha256``, for a manifest that records the rewritten file."""
    table = pyarrow.ipc.open_stream(path.read_bytes()).read_all()
    ids = [[convert(value) for value in row] for row in table.column("input_ids").to_pylist()]
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(ids_type))], table.schema.metadata)
    rewritten = pa.table({"id": table.column("id"), "input_ids": pa.array(ids, schema.field(1).type)}, schema)
    with pa.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_stream(sink, schema) as writer:
        writer.write_table(rewritten)
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def forge_manifest(doc: dict, path: Path) -> None:
    """Write ``doc`` with a correct fingerprint but none of ``write_manifest``'s checks, as anyone can:
    the fingerprint tells an edited file from its original, it vouches for nothing."""
    doc = {**doc, "data_root": os.path.relpath(doc["data_root"], path.parent)}
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    fingerprint = hashlib.sha256(body).hexdigest()
    path.write_bytes(b'{"fingerprint":"' + fingerprint.encode() + b'",' + body[1:] + b"\n")


def train_tokenizer(path: Path) -> Path:
    """A word-level ``tokenizer.json`` of CORPUS with Gemma 2's special ids, putting ``<bos> ... <eos>``
    around a text."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    tokenizer.save(str(path))
    return path
