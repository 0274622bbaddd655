"""Per-language thresholds: FineWeb2's shipped configs, overrides, defaults and FineWeb2's filter settings."""

from __future__ import annotations

import random

import pytest
from datatrove.data import Document

from mixtures.recipe import load_recipe
from pipeline.quality import (
    DEFAULTS,
    FINEWEB2_CONFIGS,
    MAX_DOC_WORDS,
    FilterConfigError,
    FilterConfigs,
    LanguageQualityFilter,
    default_thresholds,
    max_doc_words,
)
from tests.conftest import SAMPLE
from tests.corpus import prose


def test_fineweb2_configs_ship_compressed_and_are_the_default():
    configs = FilterConfigs()
    fra = configs("fra_Latn")
    assert (fra.language_score, fra.dup_line_frac, fra.min_avg_word_length) == (0.824, 0.264, 2)
    assert fra.stopwords[:3] == ("de", "la", "le") and "l'" in fra.stopwords
    assert fra.dup_n_grams[0] == (5, 0.15)
    assert configs("tha_Thai").line_punct_thr == 0.0
    assert configs("eng_Latn") == DEFAULTS  # FineWeb2 has no English config
    assert FINEWEB2_CONFIGS.stat().st_size < 400_000
    assert (FINEWEB2_CONFIGS.parent / "LICENSE").read_text().startswith(" " * 33 + "Apache License")
    assert all(load_recipe().phase(p).processing.filter_configs == "fineweb2" for p in ("pretrain", "decay"))
    assert FilterConfigs(None)("fra_Latn") == DEFAULTS


def test_a_directory_of_configs_replaces_the_shipped_set():
    directory = FilterConfigs(SAMPLE / "filter-configs")  # seven of FineWeb2's files
    assert directory("fra_Latn") == FilterConfigs()("fra_Latn")
    assert directory("kor_Hang") == default_thresholds("Hang") != FilterConfigs()("kor_Hang")


def test_defaults_depend_on_the_script():
    assert default_thresholds("Latn") == DEFAULTS
    assert default_thresholds("Hani").min_avg_word_length == 1
    assert default_thresholds("Thai").line_punct_thr == 0.0
    assert DEFAULTS.stopwords == ()  # no stop-word rule without a config


def test_the_upper_word_count_allows_subword_units():
    assert max_doc_words("fra_Latn") == MAX_DOC_WORDS
    assert max_doc_words("cmn_Hani") == max_doc_words("kor_Hang") == 2 * MAX_DOC_WORDS


def test_config_overrides_defaults_and_rejects_unknown_keys(tmp_path):
    (tmp_path / "fra_Latn.yml").write_text(
        "language_score: 0.8\nstopwords: [le, la]\ndup_n_grams: [[5, 0.1]]\nmin_avg_word_length: 3\n"
    )
    (tmp_path / "deu_Latn.yml").write_text("language_scroe: 0.8\n")
    (tmp_path / "rus_Cyrl.yml").write_text("language_score: high\n")
    configs = FilterConfigs(tmp_path)
    fra = configs("fra_Latn")
    assert (fra.language_score, fra.stopwords, fra.dup_n_grams) == (0.8, ("le", "la"), ((5, 0.1),))
    assert fra.max_avg_word_length == DEFAULTS.max_avg_word_length
    assert configs("spa_Latn") == DEFAULTS
    with pytest.raises(FilterConfigError, match=r"deu_Latn.yml.*language_scroe"):
        configs("deu_Latn")
    with pytest.raises(FilterConfigError, match=r"rus_Cyrl.yml.*language_score"):
        configs("rus_Cyrl")
    with pytest.raises(FilterConfigError, match="does not exist"):
        FilterConfigs(tmp_path / "missing")


def test_each_language_gets_its_own_thresholds(tmp_path):
    (tmp_path / "fra_Latn.yml").write_text("stopwords: [le, la, les]\n")
    quality = LanguageQualityFilter("gopher_quality", FilterConfigs(tmp_path))
    text = " ".join(["Le chat dort sur la table et les enfants jouent dehors."] * 8)
    unrelated = " ".join(["Der Hund schläft unter dem Tisch und die Kinder spielen."] * 8)
    assert quality.filter(Document(text, "a", metadata={"language": "fra_Latn"})) is True
    assert quality.filter(Document(unrelated, "b", metadata={"language": "fra_Latn"})) == (
        False,
        "gopher_enough_stop_words",
    )
    assert quality.filter(Document(unrelated, "c", metadata={"language": "deu_Latn"})) is True


def test_filters_are_set_up_as_fineweb2s_pipeline():
    """Paragraph rules off, FineWeb's duplicate-line-character ratio 0.1 (fineweb-2-pipeline.py)."""
    rng = random.Random(0)
    paragraphs = ["\n".join(prose(rng, "fra_Latn", sentences=1) for _ in range(5)) for _ in range(6)]
    # 4 of 11 paragraphs repeat a one-line "read more": 36% of the paragraphs (Gopher's limit is 30%),
    # 4 of 35 lines and 3% of the characters (FineWeb's 0.01 would drop it; FineWeb2 allows 0.1).
    text = "\n\n".join(paragraphs + ["Lire la suite."] * 5)
    doc = Document(text, "a", metadata={"language": "fra_Latn", "source": "fineweb2"})
    for family in ("gopher_repetition", "fineweb_quality"):
        assert LanguageQualityFilter(family, FilterConfigs()).filter(doc) is True, family


def test_curated_sources_skip_the_web_text_rules():
    latex = r"\begin{equation} x^2 + y^2 = z^2 \end{equation} " * 30
    quality = LanguageQualityFilter("gopher_quality", FilterConfigs(), sources=frozenset({"fineweb2"}))
    assert quality.filter(Document(latex, "a", metadata={"language": "eng_Latn", "source": "arxiv"})) is True
    web = Document(latex, "b", metadata={"language": "eng_Latn", "source": "fineweb2"})
    assert quality.filter(web)[0] is False
