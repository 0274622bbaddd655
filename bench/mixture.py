"""Benchmark: compile and validate a decay manifest of 1,833 languages x 100 shards, on one core.

Generates a build the shape of FineWeb2's decay phase in a temporary directory:
1,833 language-script streams (datatrove's language table, sizes falling
log-linearly from 1T to 300 tokens like FineWeb2's), 100 Arrow shards each, plus
the fixed-budget sources (Wikipedia in 20 languages, arXiv, Dolmino, code; 100
shards each), and a stats.json of the build's format. Shards are small real Arrow IPC
streams (one body per stream, so 100 files share a hash); their token counts
are declared in stats.json, for the compiler, and validate reads a copy of the
manifest whose shard entries hold the files' own counts (validate checks them
against the files). Goals: compile < 1 s, validate without hashing < 1 s, and
validate with hashing at most 1.5x its peer. Each figure is the best of --repeat
runs, with the page cache warm, and comes with its peer measured in the same run:

* compile (read stats.json, allocate, build and write the manifest) against a
  bare JSON round trip of the same stats.json (read, parse, dump, write; orjson,
  as the compiler uses);
* the one-pass capped allocation against the issue's "cap, redistribute,
  repeat" loop on the same 1,833 languages;
* validate without hashing (fingerprint, one stat per shard, one schema per
  stream) against a bare os.stat loop over the same shard paths;
* validate with hashing (sha256 of every byte, schema and counts of every shard,
  each file read once) against a bare serial hashlib loop over the same files.
  Validate hashes in ``mixtures.manifest.hash_workers()`` threads, one per core
  it may run on: one here, since the bench pins itself to one core, so both
  figures are serial (the printed line says how many threads). Both come after
  one untimed read of every shard: the first read of a file since it was written
  updates its atime (relatime), which would fall on whichever ran first.

Run: `.venv/bin/python bench/mixture.py [--languages 1833] [--shards 100] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.ipc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.peers import redistribute_until_stable  # noqa: E402
from mixtures.compiler import compile_phase  # noqa: E402
from mixtures.counts import read_stats  # noqa: E402
from mixtures.formats import (  # noqa: E402
    SHARD_SCHEMA,
    STATS_FORMAT,
    STATS_VERSION,
    shard_counts,
    shard_metadata,
)
from mixtures.languages import CODE, language_table  # noqa: E402
from mixtures.manifest import build_manifest, hash_workers, validate_manifest, write_manifest  # noqa: E402
from mixtures.recipe import load_recipe  # noqa: E402
from mixtures.sampling import capped_allocation, temperature_weights  # noqa: E402

TOKENIZER = {"name": "jhu-clsp/mmBERT-base", "sha256": hashlib.sha256(b"bench tokenizer").hexdigest()}
GOAL_SECONDS = 1.0
GOAL_HASH_RATIO = 1.5  # hashed validate against the bare sha256 loop


def shard_body(source: str, language: str) -> bytes:
    """A real (tiny) Arrow IPC stream with the build's schema and metadata."""
    schema = SHARD_SCHEMA.with_metadata(
        shard_metadata(TOKENIZER["name"], TOKENIZER["sha256"], source, language, "decay")
    )
    sink = pa.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, schema) as writer:
        writer.write_table(pa.table({"id": ["doc-0"], "input_ids": [[2, 17, 4242, 1]]}, schema=schema))
    return sink.getvalue().to_pybytes()


def generate(phase_dir: Path, languages: int, shards: int) -> int:
    """Write shards and stats.json; return the number of shard files."""
    pool = sorted(name for name in language_table() if "_" in name)[:languages]
    if len(pool) < languages:
        raise SystemExit(
            f"only {len(pool)} language-script names are known; use --languages {len(pool)} or fewer"
        )
    streams = [
        ("fineweb2", name, 10 ** (12 - 9.5 * i / max(1, len(pool) - 1))) for i, name in enumerate(pool)
    ]
    streams += [("wikipedia", name, 2e9) for name in pool[:20]]
    streams += [("arxiv", "eng_Latn", 1e10), ("dolmino", "eng_Latn", 1e10), ("code", CODE, 1e10)]
    entries, files = [], 0
    for source, language, tokens in streams:
        body = shard_body(source, language)
        digest = hashlib.sha256(body).hexdigest()
        directory = phase_dir / source / language
        directory.mkdir(parents=True)
        per_shard = max(1, round(tokens / shards))
        entry_shards = []
        for index in range(shards):
            (directory / f"{index:05d}.arrow").write_bytes(body)
            entry_shards.append(
                {
                    "path": f"{source}/{language}/{index:05d}.arrow",
                    "documents": 1,
                    "tokens": per_shard,
                    "bytes": len(body),
                    "sha256": digest,
                }
            )
        files += shards
        entries.append(
            {
                "source": source,
                "language": language,
                "documents_read": shards,
                "documents_kept": shards,
                "documents_heldout": 0,
                "drops": {},
                "tokens": per_shard * shards,
                "bytes": per_shard * shards * 4,
                "shards": entry_shards,
                "heldout_tokens": 0,
                "heldout": [],
            }
        )
    stats = {
        "format": STATS_FORMAT,
        "version": STATS_VERSION,
        "phase": "decay",
        "recipe": {"path": str(ROOT / "mixtures/recipes/mmbert.yaml"), "sha256": load_recipe().sha256},
        "tokenizer": TOKENIZER,
        "streams": entries,
        "errors": {"count": 0, "report": None},
    }
    (phase_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    return files


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def compile_manifest(phase_dir: Path, manifest: Path) -> int:
    recipe = load_recipe()
    counts = read_stats(phase_dir)
    mixture = compile_phase(recipe, "decay", counts)
    write_manifest(build_manifest(mixture, recipe, counts, seed=0), manifest)
    return sum(t.capped for t in mixture.targets)


def json_round_trip(phase_dir: Path, out: Path) -> None:
    data = orjson.loads((phase_dir / "stats.json").read_bytes())
    out.write_bytes(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))


def stat_all(root: Path, paths: list[str]) -> int:
    prefix = str(root) + "/"
    return sum(os.stat(prefix + path).st_size for path in paths)


def hash_all(root: Path, paths: list[str]) -> int:
    prefix = str(root) + "/"
    for path in paths:
        with open(prefix + path, "rb") as handle:
            hashlib.sha256(handle.read()).hexdigest()
    return len(paths)


def report(
    name: str, ours: float, peer_name: str, peer: float, goal: float | None = None, ratio: float | None = None
) -> None:
    """One line: our figure, the peer's, their ratio, and the verdict on the goal (seconds or ratio)."""
    verdict = ""
    if goal is not None:
        verdict = f"  (goal < {goal:g} s: {'met' if ours < goal else 'MISSED'})"
    if ratio is not None:
        verdict = f"  (goal <= {ratio:g}x: {'met' if ours <= ratio * peer else 'MISSED'})"
    print(f"{name:<38} {ours:8.3f} s   {peer_name:<30} {peer:8.3f} s   ratio {ours / peer:6.2f}x{verdict}")


def bench_compile(phase_dir: Path, manifest: Path, repeat: int) -> int:
    compile_s, capped = best_of(repeat, lambda: compile_manifest(phase_dir, manifest))
    peer_s, _ = best_of(repeat, lambda: json_round_trip(phase_dir, manifest.with_name("copy.json")))
    report("compile (stats.json -> manifest)", compile_s, "bare JSON round trip", peer_s, GOAL_SECONDS)
    return capped


def bench_allocation(phase_dir: Path, repeat: int) -> None:
    pool = [s for s in read_stats(phase_dir).streams if s.source == "fineweb2"]
    weights = temperature_weights([s.tokens for s in pool], 0.3)
    caps = [s.tokens * 5 for s in pool]
    budget = 83_700_000_000
    ours_s, allocation = best_of(repeat, lambda: capped_allocation(budget, weights, caps))
    loop_s, reference = best_of(repeat, lambda: redistribute_until_stable(budget, weights, caps))
    assert all(abs(a - b) <= 1 for a, b in zip(allocation.targets, reference, strict=True))
    report("capped allocation (one pass)", ours_s, "cap-redistribute-repeat loop", loop_s)


def describing_the_files(manifest: Path) -> Path:
    """A copy of ``manifest`` beside it whose shard entries hold the tiny files' own counts."""
    doc = orjson.loads(manifest.read_bytes())
    del doc["fingerprint"]
    doc["data_root"] = str((manifest.parent / doc["data_root"]).resolve())
    documents, tokens = shard_counts(pyarrow.ipc.open_stream(shard_body("fineweb2", "fra_Latn")))
    for stream in doc["streams"]:
        for shard in stream["shards"]:
            shard["documents"], shard["tokens"] = documents, tokens
    path = manifest.with_name("validate.json")
    write_manifest(doc, path)
    return path


def bench_validate(phase_dir: Path, manifest: Path, repeat: int) -> tuple[list[str], float]:
    manifest = describing_the_files(manifest)
    doc = orjson.loads(manifest.read_bytes())
    paths = [shard["path"] for stream in doc["streams"] for shard in stream["shards"]]
    quick_s, problems = best_of(repeat, lambda: validate_manifest(manifest, check_hashes=False))
    assert problems == [], problems[:3]
    stat_s, _ = best_of(repeat, lambda: stat_all(phase_dir, paths))
    report("validate, sizes (--no-hash)", quick_s, "bare os.stat of every shard", stat_s, GOAL_SECONDS)
    hash_all(phase_dir, paths)  # untimed: the first read since writing updates each file's atime (relatime)
    full_s, problems = best_of(1, lambda: validate_manifest(manifest, check_hashes=True))
    assert problems == [], problems[:3]
    hash_s, _ = best_of(1, lambda: hash_all(phase_dir, paths))
    threads = hash_workers()
    name = f"validate, content (--hash, {threads} thread{'s' if threads > 1 else ''})"
    report(name, full_s, "bare serial sha256 of each shard", hash_s, ratio=GOAL_HASH_RATIO)
    return paths, full_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", type=int, default=1833)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    with tempfile.TemporaryDirectory(prefix="mmbert-mixture-bench-") as tmp:
        phase_dir, manifest = Path(tmp) / "data" / "decay", Path(tmp) / "decay.json"
        start = time.perf_counter()
        files = generate(phase_dir, args.languages, args.shards)
        print(
            f"generated {args.languages} languages x {args.shards} shards ({files:,} shard files, "
            f"stats.json {(phase_dir / 'stats.json').stat().st_size / 1e6:.1f} MB) "
            f"in {time.perf_counter() - start:.1f} s; one core, warm page cache, "
            f"best of {args.repeat} (hashing: 1 run)"
        )
        capped = bench_compile(phase_dir, manifest, args.repeat)
        bench_allocation(phase_dir, args.repeat)
        paths, full_s = bench_validate(phase_dir, manifest, args.repeat)
        print(
            f"manifest: {manifest.stat().st_size / 1e6:.1f} MB, {len(paths):,} shards, "
            f"{capped} streams capped at 5 epochs; hashing costs "
            f"{full_s / len(paths) * 1e6:.0f} us per (tiny) shard plus reading every byte"
        )


if __name__ == "__main__":
    main()
