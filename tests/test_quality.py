"""Per-language thresholds and script-aware word splitting behind the quality filters."""

from __future__ import annotations

import pytest
from datatrove.data import Document

from pipeline.quality import (
    DEFAULTS,
    WORD_TOKENIZER,
    FilterConfigError,
    FilterConfigs,
    LanguageQualityFilter,
    default_thresholds,
)


def test_words_split_by_script():
    assert WORD_TOKENIZER.word_tokenize("L'homme est là, n'est-ce pas?") == [
        "L'",
        "homme",
        "est",
        "là",
        ",",
        "n'",
        "est",
        "-",
        "ce",
        "pas",
        "?",
    ]
    assert WORD_TOKENIZER.word_tokenize("我爱北京。") == ["我", "爱", "北", "京", "。"]
    assert WORD_TOKENIZER.word_tokenize("ภาษา") == ["ภ", "า", "ษ", "า"]
    assert WORD_TOKENIZER.word_tokenize("བོད་ཡིག") == ["བོ", "ད", "ཡི", "ག"]  # tsheg separates, like a space
    assert WORD_TOKENIZER.word_tokenize("संस्कृत भाषा") == ["संस्कृत", "भाषा"]


def test_defaults_depend_on_the_script():
    assert default_thresholds("Latn") == DEFAULTS
    assert default_thresholds("Hani").chars_per_word == 2
    assert default_thresholds("Thai").line_punct_thr == 0.0
    assert DEFAULTS.stopwords == ()  # no stop-word rule without a config


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


def test_curated_sources_skip_the_web_text_rules():
    latex = r"\begin{equation} x^2 + y^2 = z^2 \end{equation} " * 30
    quality = LanguageQualityFilter("gopher_quality", FilterConfigs(), sources=frozenset({"fineweb2"}))
    assert quality.filter(Document(latex, "a", metadata={"language": "eng_Latn", "source": "arxiv"})) is True
    web = Document(latex, "b", metadata={"language": "eng_Latn", "source": "fineweb2"})
    assert quality.filter(web)[0] is False
