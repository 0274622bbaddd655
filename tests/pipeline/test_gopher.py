"""The Gopher filters decide as datatrove's GopherRepetitionFilter and GopherQualityFilter do."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.gopher_repetition_filter import (
    find_all_duplicate,
    find_top_duplicate,
    get_n_grams,
)

from pipeline.gopher import NGrams, QualityFilter, RepetitionFilter
from pipeline.words import word_splitting
from tests.conftest import SAMPLE


def random_words(rng: random.Random) -> list[str]:
    """Words from a tiny vocabulary (many repeats, ties), some that join alike ("ab"+"c", "a"+"bc")."""
    vocabulary = ["a", "b", "c", "ab", "bc", "abc", "chat", "ça", ""]
    return [rng.choice(vocabulary) for _ in range(rng.randint(0, 60))]


def test_n_gram_statistics_equal_datatrove_s_on_repeats_ties_and_words_that_join_alike():
    rng = random.Random(0)
    for _ in range(3000):
        words, n = random_words(rng), rng.randint(1, 10)
        grams = get_n_grams(words, n)
        assert NGrams(words).top_chars(n) == (find_top_duplicate(grams) if grams else 0), (words, n)
        assert NGrams(words).duplicated_chars(n) == find_all_duplicate(words, n), (words, n)


def sample_texts() -> list[str]:
    """The sample's FineWeb2 texts, and texts made of their lines repeated."""
    files = sorted((SAMPLE / "hub" / "datasets" / "HuggingFaceFW" / "fineweb-2").rglob("*.parquet"))
    texts = [
        text for path in files for text in pq.read_table(path, columns=["text"]).column("text").to_pylist()
    ]
    rng = random.Random(1)
    texts += ["\n\n".join(rng.choice(texts[:50]).split("\n")[:3] * rng.randint(1, 4)) for _ in range(200)]
    texts += ["\n", "a a a a a a a a a a a a", "x\n\nx\n\ny", "# … - •\n" * 60, "1 2 3 ! ? " * 40]
    return texts


def test_decisions_equal_datatrove_s_filters_with_every_rule_on():
    words = word_splitting("eng_Latn").words  # the same words for both
    repetition = {
        "top_n_grams": ((2, 0.2), (3, 0.18), (4, 0.16)),
        "dup_line_char_frac": 0.2,
        "language": words,
    }
    quality = {"min_stop_words": 2, "max_doc_words": 300, "language": words}
    pairs = [
        (RepetitionFilter(**repetition), GopherRepetitionFilter(**repetition)),
        (QualityFilter(**quality), GopherQualityFilter(**quality)),
    ]
    texts = sample_texts()
    for ours, theirs in pairs:
        decided = [ours.filter(Document(text=t, id=str(i))) for i, t in enumerate(texts)]
        assert decided == [theirs.filter(Document(text=t, id=str(i))) for i, t in enumerate(texts)]
        reasons = {d[1] for d in decided if d is not True}
        assert True in decided and len(reasons) >= 3, reasons  # both outcomes, several reasons, compared
