"""The build's fast word splitting decides as datatrove's own segmenters do, document by document.

The reference is today's path kept here: datatrove's ``SpaCyTokenizer`` and ``WhitespaceTokenizer``
as they are (a spaCy memory zone per text, every word split afresh) and its Gopher filters. The
fast path (``pipeline.words.CachingSpaCyTokenizer``: one zone over many texts, each chunk's words
remembered; ``pipeline.gopher``: n-grams sliced from one text, words classified once) must keep
and drop the same documents for the same reasons and write the same token ids, over
every language of the bundled sample and the benchmark generator's documents.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.utils.word_tokenizers import SpaCyTokenizer, WhitespaceTokenizer

import pipeline.quality
import pipeline.words
from bench.pipeline import generate_corpus
from mixtures.recipe import load_recipe
from pipeline.build import Build
from pipeline.build_options import BuildOptions
from tests.fixtures import shard_rows

SAMPLE_HUB = Path(__file__).resolve().parents[2] / "pipeline" / "sample" / "hub"


def decisions(phase_dir: Path) -> dict[str, tuple[str, object]]:
    """Each document id -> ("kept", its token ids) or ("dropped", the filter's reason)."""
    found: dict[str, tuple[str, object]] = {}
    for heldout in (False, True):
        for rows in shard_rows(phase_dir, heldout=heldout).values():
            found.update((doc_id, ("kept", ids)) for doc_id, ids in rows)
    for path in sorted(phase_dir.glob("removed/**/*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for record in map(json.loads, lines):
                found[record["id"]] = ("dropped", record["metadata"].get("filter_reason"))
    return found


def build(hub: Path, out: Path, sources: tuple[str, ...] | None) -> Path:
    options = BuildOptions(
        recipe=load_recipe(),
        phase="decay",  # every language
        output=out,
        input_root=str(hub),
        tokenizer=f"sample:{SAMPLE_HUB}",
        sources=sources,
        dedup=False,
        keep_removed=True,
        on_error="skip",
        tasks=2,
    )
    plan = Build(options)
    plan.run()
    return plan.phase_dir


@pytest.fixture
def reference_path(monkeypatch):
    """Today's path: datatrove's spaCy word tokenizers, loaded afresh, and its Gopher filters."""
    monkeypatch.setattr(pipeline.quality, "RepetitionFilter", GopherRepetitionFilter)
    monkeypatch.setattr(pipeline.quality, "QualityFilter", GopherQualityFilter)
    monkeypatch.setitem(pipeline.words._DATATROVE_CLASSES, "SpaCyTokenizer", SpaCyTokenizer)
    monkeypatch.setitem(pipeline.words._DATATROVE_CLASSES, "WhitespaceTokenizer", WhitespaceTokenizer)
    pipeline.words._tokenizer.cache_clear()
    pipeline.words.word_splitting.cache_clear()
    yield
    pipeline.words._tokenizer.cache_clear()
    pipeline.words.word_splitting.cache_clear()


def test_the_fast_path_keeps_drops_and_tokenizes_as_the_reference(tmp_path, request):
    generated = tmp_path / "generated"
    generate_corpus(generated, megabytes=1)
    corpora = {"sample": (SAMPLE_HUB, None), "generated": (generated, ("fineweb2",))}
    fast = {
        name: decisions(build(hub, tmp_path / f"fast-{name}", sources))
        for name, (hub, sources) in corpora.items()
    }
    request.getfixturevalue("reference_path")
    for name, (hub, sources) in corpora.items():
        reference = decisions(build(hub, tmp_path / f"reference-{name}", sources))
        assert fast[name].keys() == reference.keys(), name
        differ = [doc_id for doc_id in reference if fast[name][doc_id] != reference[doc_id]]
        assert differ == [], f"{name}: {len(differ)} documents decided otherwise, e.g. {differ[:5]}"
        dropped = {reason for kind, reason in reference.values() if kind == "dropped"}
        assert len(reference) > 100 and dropped, name  # both outcomes, several reasons, were compared
