"""The demo's builds of the bundled sample: every stage at work, and shards that load as datasets."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from bench.peers import fineweb2_quality_filters
from mixtures.manifest import load_manifest
from mixtures.recipe import load_recipe
from pipeline.heldout import HELDOUT_TOKENS
from tests.conftest import SAMPLE, sample_documents


@pytest.fixture(scope="module")
def decay(sample_builds) -> tuple[Path, dict]:
    return sample_builds["decay"]


def test_decay_covers_many_languages_and_every_shard_loads(decay):
    phase_dir, stats = decay
    languages = {s["language"] for s in stats["streams"] if s["documents_kept"]}
    scripts = {language.split("_")[1] for language in languages}
    assert len(languages) >= 20 and len(scripts) >= 6
    for stream in stats["streams"]:
        training, heldout = (
            sum(len(datasets.Dataset.from_file(str(phase_dir / s["path"]))) for s in stream[listed])
            for listed in ("shards", "heldout")
        )
        assert (training + heldout, heldout) == (stream["documents_kept"], stream["documents_heldout"])


def _ids(phase_dir: Path, shards: list[dict]) -> dict[str, int]:
    """id -> tokens over the given shard entries."""
    found = {}
    for shard in shards:
        table = datasets.Dataset.from_file(str(phase_dir / shard["path"]))
        found.update(zip(table["id"], map(len, table["input_ids"]), strict=True))
    return found


def test_every_stream_that_can_spare_a_document_holds_some_out_and_never_trains_on_them(sample_builds):
    for phase, (phase_dir, stats) in sample_builds.items():
        for stream in stats["streams"]:
            where = f"{phase} {stream['source']}/{stream['language']}"
            training, heldout = _ids(phase_dir, stream["shards"]), _ids(phase_dir, stream["heldout"])
            assert not set(training) & set(heldout), where
            assert (len(training) + len(heldout), len(heldout)) == (
                stream["documents_kept"],
                stream["documents_heldout"],
            ), where
            # one at least where the stream has two documents or more, and never its only one
            assert (len(heldout) >= 1) == (len(training) + len(heldout) >= 2), where
            assert stream["heldout_tokens"] == sum(heldout.values()) <= HELDOUT_TOKENS, where
            assert stream["documents_read"] == stream["documents_kept"] + sum(stream["drops"].values()), where
            assert all(
                s["path"].startswith(f"heldout/{stream['source']}/{stream['language']}/")
                for s in stream["heldout"]
            )


def test_no_manifest_trains_on_a_heldout_shard(sample_builds, sample_manifests):
    for phase, path in sample_manifests.items():  # the decay variants' too, from the decay build
        manifest = load_manifest(path)
        listed = {shard.path for stream in manifest.streams for shard in stream.shards}
        built = sample_builds[manifest.built_as][1]
        heldout = {shard["path"] for stream in built["streams"] for shard in stream["heldout"]}
        assert listed and len(heldout) >= 20 and not listed & heldout, phase


def test_every_deliberately_bad_document_is_dropped_with_a_reason(decay):
    phase_dir, stats = decay
    kept_ids = set()  # trained on or held out: what passed every filter
    for path in (*phase_dir.glob("*/*/*.arrow"), *phase_dir.glob("heldout/*/*/*.arrow")):
        kept_ids.update(datasets.Dataset.from_file(str(path))["id"])
    documents = sample_documents()
    bad = [d for d in documents if d["kind"] not in ("clean", "near_duplicate") and d["source"] == "fineweb2"]
    assert bad and not {f"fineweb2/{d['id']}" for d in bad} & kept_ids
    reasons = {reason for s in stats["streams"] for reason in s["drops"]}
    assert {"near_duplicate", "language_score"} <= reasons  # dedup and LID at work
    assert reasons & {"dup_line_frac", "dup_para_frac", "top_2_gram", "top_3_gram"}  # Gopher repetition
    assert reasons & {"line_punct_ratio", "char_dup_ratio", "list_ratio"}  # FineWeb quality
    assert reasons & {"gopher_short_doc", "gopher_below_alpha_threshold", "gopher_enough_stop_words"}
    assert stats["errors"]["count"] == sum(d["kind"] == "empty" for d in documents)
    # each cluster of near-duplicates, or of exact ones (code), keeps exactly one document
    clusters: dict[str, set[str]] = {}
    built = {s["source"] for s in stats["streams"]}
    assert "code" in built
    for d in documents:
        if d["kind"] in ("near_duplicate", "duplicate") and d["source"] in built:
            original = f"{d['source']}/" + d["detail"].split(",")[0].removeprefix("copy of ")
            clusters.setdefault(original, {original}).add(f"{d['source']}/{d['id']}")
    assert clusters and all(len(members & kept_ids) == 1 for members in clusters.values())


def test_phases_differ_as_the_recipe_says(sample_builds):
    _, decay_stats = sample_builds["decay"]
    _, pretrain_stats = sample_builds["pretrain"]
    pretrain = {s["language"] for s in pretrain_stats["streams"]}
    everything = {s["language"] for s in decay_stats["streams"]}
    recipe = load_recipe()
    assert pretrain < everything
    assert {recipe.phase_that_added(language) for language in pretrain} == {"pretrain"}
    assert {"fao_Latn", "tir_Ethi"} <= everything - pretrain


def _fineweb2_rejects(language: str, text: str, score: float) -> bool:
    """FineWeb2's own verdict (fineweb-2-pipeline.py, steps 3 and 5): stock datatrove filters with the
    language's config and datatrove's own word tokenizer for it."""
    from datatrove.data import Document

    from pipeline.quality import FilterConfigs
    from pipeline.words import normalize_text

    config = FilterConfigs()(language)
    if score < config.language_score:
        return True
    stock = fineweb2_quality_filters(language, config)
    doc = Document(normalize_text(text), "doc")
    return any(step.filter(doc) is not True for step in stock)


def test_fineweb2s_configs_keep_the_clean_documents_of_every_language(decay):
    """The demo's build with FineWeb2's configs keeps >= 80% of the clean documents, and some in every
    language, unless FineWeb2's own pipeline (stock datatrove, its word tokenizer) rejects them all too."""
    import pyarrow.parquet as pq

    phase_dir, stats = decay
    kept_ids = set()  # trained on or held out: what passed every filter
    for path in (*phase_dir.glob("fineweb2/*/*.arrow"), *phase_dir.glob("heldout/fineweb2/*/*.arrow")):
        kept_ids.update(datasets.Dataset.from_file(str(path))["id"])
    clean: dict[str, list[str]] = {}
    for d in sample_documents():
        if d["source"] == "fineweb2" and d["kind"] == "clean":
            clean.setdefault(d["language"], []).append(f"fineweb2/{d['id']}")
    drops = {s["language"]: s["drops"] for s in stats["streams"] if s["source"] == "fineweb2"}
    print(f"\n{'language':10}{'clean':>6}{'kept':>6}  drops of the stream")
    wiped = []
    for language, ids in sorted(clean.items()):
        kept = len(set(ids) & kept_ids)
        print(f"{language:10}{len(ids):>6}{kept:>6}  {drops.get(language, {})}")
        if not kept:
            wiped.append(language)
    total, kept_total = (
        sum(map(len, clean.values())),
        len(kept_ids & {i for ids in clean.values() for i in ids}),
    )
    print(f"{'total':10}{total:>6}{kept_total:>6}  ({kept_total / total:.0%})")
    assert kept_total >= 0.8 * total
    for language in wiped:  # a language is wiped only where FineWeb2 itself would wipe it
        path = next(
            (SAMPLE / "hub" / "datasets/HuggingFaceFW/fineweb-2/data" / language).glob("train/*.parquet")
        )
        rows = {f"fineweb2/{r['id']}": r for r in pq.read_table(path).to_pylist()}
        for doc_id in clean[language]:
            row = rows[doc_id]
            assert _fineweb2_rejects(language, row["text"], row["language_score"]), (language, doc_id)


def test_rules_a_languages_word_splitting_cannot_serve_are_reported(decay, capsys):
    from rich.console import Console

    from pipeline.stats import print_stats, stats_summary
    from pipeline.words import SYLLABLE_SKIPPED_RULES

    _, stats = decay
    reported = {
        (s["source"], s["language"]): s["skipped_rules"] for s in stats["streams"] if "skipped_rules" in s
    }
    assert set(reported) == {("fineweb2", "bod_Tibt")}  # botok's Tibetan; every other segmenter loads
    tibetan = next(s for s in stats["streams"] if s["language"] == "bod_Tibt")
    skipped = reported[("fineweb2", "bod_Tibt")]
    assert set(skipped) == set(SYLLABLE_SKIPPED_RULES)
    for rule, entry in skipped.items():
        assert entry["why"] == SYLLABLE_SKIPPED_RULES[rule] and "botok" in entry["why"]
        assert tibetan["documents_kept"] <= entry["documents"] <= tibetan["documents_read"]
    summary = stats_summary(stats)  # what `mmbert-data stats --json` prints
    assert next(r for r in summary["rows"] if r["language"] == "bod_Tibt")["skipped_rules"] == skipped
    print_stats(stats, Console(width=200))
    assert "fineweb2/bod_Tibt: dup_n_grams, top_n_grams not applied: botok" in capsys.readouterr().out
