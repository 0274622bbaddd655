"""Shared fixtures: the bundled sample built and compiled once per session, as `make demo` does.

The data pipeline is imported inside the fixtures, so that the GPU tests (which need only
the trainer's dependencies) are collected on a machine without datatrove.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "sample"
DEMO_TOKENS = 150_000  # the mixture size `make demo` compiles for pretrain and midtrain
DECAY_TOKENS = 30_000  # and for the decays, which the sample's data holds at Decay-All's one epoch


def sample_documents() -> list[dict[str, str]]:
    """Every document of the bundled sample as its manifest.csv lists it: source, path, row, id,
    language, kind (``clean`` or how it is bad on purpose) and detail."""
    with open(SAMPLE / "manifest.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A session directory whose ``cache`` holds the sample tokenizer (set as MMBERT_DATA_CACHE)."""
    return tmp_path_factory.mktemp("sample")


@pytest.fixture(scope="session")
def sample_builds(sample_root) -> dict[str, tuple[Path, dict]]:
    """Each phase of the recipe built from the bundled sample: phase -> (phase directory, stats)."""
    from mixtures.recipe import load_recipe
    from pipeline.build import Build
    from pipeline.build_options import BuildOptions

    builds = {}
    recipe = load_recipe()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMBERT_DATA_CACHE", str(sample_root / "cache"))
        for phase in (name for name, spec in recipe.phases.items() if spec.built_as == name):
            build = Build(
                BuildOptions(
                    recipe=recipe,
                    phase=phase,
                    output=sample_root / "data",
                    input_root=str(SAMPLE / "hub"),
                    tokenizer=f"sample:{SAMPLE / 'hub'}",
                    on_error="skip",
                )
            )
            builds[phase] = (build.phase_dir, build.run())
    return builds


@pytest.fixture(scope="session")
def sample_manifests(sample_builds, sample_root) -> dict[str, Path]:
    """Each phase's manifest (the decay variants' too) compiled from its sample build at ``DEMO_TOKENS``
    tokens, or ``DECAY_TOKENS`` for the decays."""
    from mixtures.compiler import compile_phase
    from mixtures.counts import read_stats
    from mixtures.manifest import build_manifest, write_manifest
    from mixtures.recipe import load_recipe

    recipe = load_recipe()
    manifests = {}
    for phase, spec in recipe.phases.items():
        counts = read_stats(sample_builds[spec.built_as][0])
        path = sample_root / "manifests" / f"{phase}.json"
        tokens = DECAY_TOKENS if spec.built_as == "decay" else DEMO_TOKENS
        mixture = compile_phase(recipe, phase, counts, tokens=tokens)
        write_manifest(build_manifest(mixture, recipe, counts, seed=0), path)
        manifests[phase] = path
    return manifests


def write_synthetic_phase(
    root: Path,
    *,
    phase: str = "pretrain",
    documents: int = 600,
    vocab_size: int = 8192,
    seed: int = 0,
) -> Path:
    """Random documents in real shards and a manifest over them, written with the on-disk formats alone.

    Three streams of documents (log-uniform 16..2048 tokens, bos + Zipf-distributed ids + eos), each
    targeted at its own size; the training settings are the recipe's for ``phase``, scaled
    to the manifest's tokens as `mmbert-data mixture --tokens` scales them.
    Needs no part of the data pipeline, so the GPU tests can run where only the
    trainer's dependencies are installed. Returns the manifest's path.
    """
    import hashlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc

    from mixtures.formats import MANIFEST_FORMAT, MANIFEST_VERSION, SHARD_SCHEMA, shard_metadata
    from mixtures.manifest import write_manifest
    from mixtures.recipe import load_recipe

    rng = np.random.default_rng(seed)
    ids = np.arange(5, vocab_size)
    zipf = 1.0 / np.arange(1, len(ids) + 1) ** 1.1  # word-like frequencies: a model can learn them
    zipf /= zipf.sum()
    tokenizer = {
        "name": "synthetic",
        "sha256": "5" * 64,
        "vocab_size": vocab_size,
        "special_ids": {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4},
    }
    streams = []
    for source, language in (("fineweb2", "fra_Latn"), ("fineweb2", "deu_Latn"), ("dclm", "eng_Latn")):
        lengths = np.exp(rng.uniform(np.log(16), np.log(2048), documents)).astype(int)
        rows = [np.concatenate([[2], rng.choice(ids, n, p=zipf), [1]]).astype(np.uint32) for n in lengths]
        relative = f"{source}/{language}/00000-0000.arrow"
        path = root / "data" / phase / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = SHARD_SCHEMA.with_metadata(shard_metadata("synthetic", "5" * 64, source, language, phase))
        table = pa.table(
            {"id": [f"{language}/{i}" for i in range(len(rows))], "input_ids": rows}, schema=schema
        )
        with pa.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table)
        tokens = int(sum(len(r) for r in rows))
        shard = {
            "path": relative,
            "documents": len(rows),
            "tokens": tokens,
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        streams.append((source, language, tokens, shard))
    total = sum(tokens for _, _, tokens, _ in streams)
    recipe = load_recipe()
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "phase": phase,
        "recipe": {"name": recipe.name, "path": str(recipe.path), "sha256": recipe.sha256},
        "tokenizer": tokenizer,
        "training": recipe.phase(phase).training.scaled(total / recipe.phase(phase).tokens).to_dict(),
        "sampling": {"sampler": "temperature", "temperature": 1.0, "tokens": total, "max_epochs": None},
        "seed": seed,
        "counts": {"kind": "synthetic"},
        "data_root": str(root / "data" / phase),
        "streams": [
            {
                "source": source,
                "language": language,
                "available_tokens": tokens,
                "target_tokens": tokens,
                "weight": tokens / total,
                "expected_epochs": 1.0,
                "capped": False,
                "shards": [shard],
            }
            for source, language, tokens, shard in streams
        ],
    }
    path = root / "manifests" / f"{phase}.json"
    write_manifest(manifest, path)
    return path


def _cluster_or_skip() -> None:
    """Skip (fail under MMBERT_REQUIRE_SLURM=1) unless a Slurm cluster answers ``sinfo``."""
    reason = None
    if shutil.which("sinfo") is None:
        reason = "no Slurm here (sinfo not found)"
    else:
        answer = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=60)
        if answer.returncode != 0 or "up" not in answer.stdout:
            reason = f"no Slurm cluster answers sinfo ({(answer.stderr or answer.stdout).strip()[:120]})"
    if reason is None:
        return
    reason += "; start one with `.ci/slurm.sh start`"
    if os.environ.get("MMBERT_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason} (MMBERT_REQUIRE_SLURM=1 makes this a failure)")
    pytest.skip(reason)


@pytest.fixture
def cluster() -> None:
    _cluster_or_skip()
