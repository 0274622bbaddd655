"""Which of our documented departures from FineWeb2 makes each of `bench/pipeline.py`'s differences.

A document that our build and the stock datatrove pipeline decide differently (one keeps it, the
other drops it, or they drop it for different reasons) is replayed through stock's own classes
(datatrove's ``LanguageFilter`` with fastText LID-176, routed to the predicted language's config
and word tokenizer, then FineWeb2's three quality filters) with our departures switched on one
set at a time, smallest sets first. The first set under which stock decides as ours did is the
cause; a document no set explains is printed as unexplained: a bug, not a departure. The replay
without any departure must give stock's recorded decision, or the replay itself is wrong.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

# Our departures from FineWeb2's filtering, as `pipeline.words`, `pipeline.quality` and
# `pipeline.lid` document them.
DEPARTURES = {
    "normalised": "line endings and blank lines normalised (NFC, CRLF -> LF, no trailing spaces) "
    "before LID and every rule",
    "word limit": "Gopher's upper word-count limit counts 2 units per word for scripts written "
    "without spaces and for Korean",
    "skipped rules": "rules a syllable split cannot serve (Tibetan: word-length and n-gram rules) "
    "are not applied",
    "no config": "a label FineWeb2 has no config for (e.g. spa_Cher: LID-176's language, the "
    "text's script) gets default thresholds without the stop-word rule",
    "no_script": "a text without letters of any writing system is dropped as no_script, not "
    "filed under a language",
}
UNEXPLAINED = "UNEXPLAINED"
NO_SCRIPT_SCRIPT = "Zyyy"  # where stock files a text without letters (ft176 label, no writing system)


def stock_label(predicted: str, text: str) -> str:
    """The ``xxx_Script`` label stock routes a document to, from LID-176's ISO 639-1 prediction.

    FineWeb2's GlotLID predicts ``xxx_Script`` itself; LID-176 names no script, so it is detected
    from the text as our build does. A text without letters keeps the prediction's language under
    ``Zyyy``, where stock's filters judge it.
    """
    from pipeline.labels import NoScriptError, normalize_label, to_iso639_3

    try:
        return normalize_label(predicted, text)
    except NoScriptError:
        return f"{to_iso639_3(predicted)}_{NO_SCRIPT_SCRIPT}"


def stock_words(language: str) -> Any:
    """The word tokenizer stock datatrove uses for a language: its own, or, where that needs a
    download (Stanza, botok) or where datatrove assigns none (a label such as ``jpn_Cher`` that
    only script detection produces), the one our build uses (in datatrove's class where it is a
    spaCy one)."""
    from datatrove.utils.word_tokenizers import SpaCyTokenizer

    from pipeline.words import load_tokenizer_assignments, word_splitting

    splitting = word_splitting(language)
    substitute = splitting.words
    if splitting.segmenter == splitting.fineweb2 and language in load_tokenizer_assignments():
        return language
    if substitute.class_name == "SpaCyTokenizer":
        return SpaCyTokenizer(substitute.code)
    return substitute.tokenizer


class StockReplay:
    """Stock's decision on one text, with a set of our departures applied.

    ``decide(text, departures)`` returns None (kept) or the drop reason, in stock's names.
    """

    def __init__(self, language_filter: Any, configs: Any):
        self.language_filter = language_filter  # a label-only LanguageFilter with LID-176 loaded
        self.configs = configs
        self._filters: dict[tuple[str, frozenset[str]], list] = {}

    def decide(self, text: str, departures: frozenset[str]) -> str | None:
        from datatrove.data import Document

        from pipeline.labels import NO_WRITING_SYSTEM, detect_script
        from pipeline.words import normalize_text

        if "normalised" in departures:
            text = normalize_text(text)
        doc = Document(text=text, id="replay")
        self.language_filter.filter(doc)
        if "no_script" in departures and detect_script(text) in NO_WRITING_SYSTEM:
            return "no_script"
        label = stock_label(doc.metadata["language"], text)
        if doc.metadata["language_score"] < self.configs(label).language_score:
            return "language_score"
        for step in self.filters(label, departures):
            result = step.filter(doc)
            kept, reason = result if isinstance(result, tuple) else (result, None)
            if not kept:
                return reason
        return None

    def filters(self, label: str, departures: frozenset[str]) -> list:
        from bench.peers import fineweb2_quality_filters
        from pipeline.quality import max_doc_words
        from pipeline.words import word_splitting

        key = (label, departures & {"word limit", "skipped rules", "no config"})
        if key not in self._filters:
            config = self.configs(label)
            self._filters[key] = fineweb2_quality_filters(
                stock_words(label),
                config,
                max_doc_words=max_doc_words(label) if "word limit" in departures else 100_000,
                skipped=frozenset(word_splitting(label).skipped if "skipped rules" in departures else ()),
                # every shipped FineWeb2 config lists stop words; only the defaults list none
                min_stop_words=None if "no config" in departures and not config.stopwords else 2,
            )
        return self._filters[key]


def attribute(
    texts: dict[str, str], ours: dict[str, str | None], stock: dict[str, str | None], replay: StockReplay
) -> Counter:
    """Per (corpus language, ours' decision, stock's decision, cause): how many documents.

    ``texts`` maps each differing document's id to its text as read; ``ours`` and ``stock`` map
    ids to their decisions (None = kept). The cause is the smallest set of departures (joined
    by ``+``) under which the replay decides as ours did, ``UNEXPLAINED`` if none does, or
    ``REPLAY MISMATCH`` if the replay without departures does not reproduce stock.
    """
    from bench.pipeline import folder_language

    sizes = range(1, len(DEPARTURES) + 1)
    sets = [frozenset(c) for n in sizes for c in itertools.combinations(DEPARTURES, n)]
    causes: Counter = Counter()
    for doc_id, text in sorted(texts.items()):
        if replay.decide(text, frozenset()) != stock[doc_id]:
            cause = "REPLAY MISMATCH"
        else:
            found = (d for d in sets if replay.decide(text, d) == ours[doc_id])
            cause = "+".join(sorted(next(found, frozenset()))) or UNEXPLAINED
        causes[folder_language(doc_id), ours[doc_id] or "kept", stock[doc_id] or "kept", cause] += 1
    return causes


def print_attribution(causes: Counter, total: int) -> None:
    """The differences by corpus language and decisions, each with its departure."""
    differing = sum(causes.values())
    print(f"documents decided differently: {differing:,d} of {total:,d}; each replayed through stock with")
    print("our departures switched on, smallest set first (the first giving ours' decision is the cause):")
    for name, meaning in DEPARTURES.items():
        print(f"  {name:14} {meaning}")
    print(f"  {'language':10} {'ours':26} {'stock':26} {'docs':>5}  cause")
    for (language, ours, stock, cause), n in sorted(causes.items()):
        print(f"  {language:10} {ours:26} {stock:26} {n:>5}  {cause}")
    by_cause = Counter()
    for (*_, cause), n in causes.items():
        by_cause[cause] += n
    print("  by cause: " + ", ".join(f"{cause} {n:,d}" for cause, n in sorted(by_cause.items())))
    unexplained = by_cause[UNEXPLAINED] + by_cause["REPLAY MISMATCH"]
    print(f"  every difference a documented departure: {unexplained == 0}")
