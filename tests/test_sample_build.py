"""The demo's builds of the bundled sample: every stage at work, and shards that load as datasets."""

from __future__ import annotations

import csv
from pathlib import Path

import datasets
import pytest

from mixtures.recipe import load_recipe
from tests.conftest import SAMPLE


@pytest.fixture(scope="module")
def decay(sample_builds) -> tuple[Path, dict]:
    return sample_builds["decay"]


def _manifest() -> list[dict]:
    with open(SAMPLE / "manifest.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_decay_covers_many_languages_and_every_shard_loads(decay):
    phase_dir, stats = decay
    languages = {s["language"] for s in stats["streams"] if s["documents_kept"]}
    scripts = {language.split("_")[1] for language in languages}
    assert len(languages) >= 20 and len(scripts) >= 6
    for stream in stats["streams"]:
        rows = 0
        for shard in stream["shards"]:
            rows += len(datasets.Dataset.from_file(str(phase_dir / shard["path"])))
        assert rows == stream["documents_kept"]


def test_every_deliberately_bad_document_is_dropped_with_a_reason(decay):
    phase_dir, stats = decay
    kept_ids = set()
    for path in phase_dir.glob("*/*/*.arrow"):
        kept_ids.update(datasets.Dataset.from_file(str(path))["id"])
    documents = _manifest()
    bad = [d for d in documents if d["kind"] not in ("clean", "near_duplicate") and d["source"] == "fineweb2"]
    assert bad and not {f"fineweb2/{d['id']}" for d in bad} & kept_ids
    reasons = {reason for s in stats["streams"] for reason in s["drops"]}
    assert {"near_duplicate", "language_score"} <= reasons  # dedup and LID at work
    assert reasons & {"dup_line_frac", "dup_para_frac", "top_2_gram", "top_3_gram"}  # Gopher repetition
    assert reasons & {"line_punct_ratio", "char_dup_ratio", "list_ratio"}  # FineWeb quality
    assert reasons & {"gopher_short_doc", "gopher_below_alpha_threshold", "gopher_enough_stop_words"}
    assert stats["errors"]["count"] == sum(d["kind"] == "empty" for d in documents)
    # each near-duplicate cluster keeps exactly one document
    clusters: dict[str, set[str]] = {}
    built = {s["source"] for s in stats["streams"]}
    for d in documents:
        if d["kind"] == "near_duplicate" and d["source"] in built:
            original = f"{d['source']}/" + d["detail"].split(",")[0].removeprefix("copy of ")
            clusters.setdefault(original, {original}).add(f"{d['source']}/{d['id']}")
    assert clusters and all(len(members & kept_ids) == 1 for members in clusters.values())


def test_phases_differ_as_the_recipe_says(sample_builds):
    _, decay_stats = sample_builds["decay"]
    _, pretrain_stats = sample_builds["pretrain"]
    pretrain = {s["language"] for s in pretrain_stats["streams"]}
    everything = {s["language"] for s in decay_stats["streams"]}
    phase1 = set(load_recipe().phase("pretrain").languages)
    assert pretrain < everything
    assert {language.split("_")[0] for language in pretrain} <= phase1
    assert {"fao_Latn", "tir_Ethi"} <= everything - pretrain
