"""`bench/departures.py`: how the benchmark names the cause of each ours-vs-stock difference."""

from __future__ import annotations

import pyarrow.parquet as pq

from bench.departures import UNEXPLAINED, StockReplay, attribute
from bench.pipeline import SAMPLE, stock_language_filter
from pipeline.quality import FilterConfigs
from pipeline.words import normalize_text


class ScriptedReplay:
    """A replay whose decisions are given: ``{text: {departures: decision}}``, stock's otherwise."""

    def __init__(self, script: dict[str, dict[frozenset[str], str | None]], stock: dict[str, str | None]):
        self.script, self.stock = script, stock

    def decide(self, text: str, departures: frozenset[str]) -> str | None:
        return self.script[text].get(departures, self.stock[text])


def test_the_cause_is_the_smallest_set_of_departures_that_gives_ours_decision():
    both = frozenset({"no config", "word limit"})
    texts = {f"<urn:uuid:xxx_Latn-{i}>": f"text {i}" for i in range(4)}
    ids = sorted(texts)
    ours = dict.fromkeys(ids, None)
    stock = dict.fromkeys(ids, "gopher_long_doc")
    by_text = {texts[i]: stock[i] for i in ids}
    script = {
        texts[ids[0]]: {frozenset({"normalised"}): None, frozenset({"normalised", "no_script"}): None},
        texts[ids[1]]: {both: None, frozenset({"no config"}): "gopher_enough_stop_words"},
        texts[ids[2]]: {},  # no departure keeps it
        texts[ids[3]]: {frozenset(): "duplicated_5_n_grams"},  # the replay does not reproduce stock
    }
    causes = attribute(texts, ours, stock, ScriptedReplay(script, by_text))
    assert causes == {
        ("xxx_Latn", "kept", "gopher_long_doc", "normalised"): 1,
        ("xxx_Latn", "kept", "gopher_long_doc", "no config+word limit"): 1,
        ("xxx_Latn", "kept", "gopher_long_doc", UNEXPLAINED): 1,
        ("xxx_Latn", "kept", "gopher_long_doc", "REPLAY MISMATCH"): 1,
    }


def test_a_decomposed_vietnamese_text_is_a_normalisation_departure():
    """Stock judges the text as read, whose NFD accents split words; ours judges it normalised (NFC)."""
    table = pq.read_table(next((SAMPLE / "vie_Latn" / "train").glob("*.parquet")), columns=["text"])
    text = next(t for t in table.column("text").to_pylist() if t != normalize_text(t))
    replay = StockReplay(stock_language_filter(), FilterConfigs())
    stock = replay.decide(text, frozenset())
    assert stock is not None
    assert replay.decide(text, frozenset({"normalised"})) is None
    causes = attribute(
        {"<urn:uuid:vie_Latn-0>": text},
        {"<urn:uuid:vie_Latn-0>": None},
        {"<urn:uuid:vie_Latn-0>": stock},
        replay,
    )
    assert causes == {("vie_Latn", "kept", stock, "normalised"): 1}
