"""Normalised text and per-language word splitting: the words FineWeb2's thresholds were computed on."""

from __future__ import annotations

import random
import subprocess
import sys
import unicodedata

import pyarrow.parquet as pq
import pytest
from datatrove.data import Document
from datatrove.utils.word_tokenizers import SpaCyTokenizer

from pipeline import words
from pipeline.quality import FILTER_FAMILIES, FilterConfigs, LanguageQualityFilter
from pipeline.words import (
    SHINGLE_WORDS,
    SYLLABLE_SKIPPED_RULES,
    LanguageWords,
    WordSplittingError,
    normalize_text,
    word_splitting,
)
from tests.conftest import SAMPLE, sample_documents

FINEWEB2 = SAMPLE / "hub" / "datasets" / "HuggingFaceFW" / "fineweb-2" / "data"
STARCODER = SAMPLE / "hub" / "datasets" / "bigcode" / "starcoderdata"


def split(language: str, text: str) -> list[str]:
    return word_splitting(language).words.word_tokenize(normalize_text(text))


def test_normalisation_gives_nfc_text_with_plain_blank_lines():
    decomposed = unicodedata.normalize("NFD", "Mọi người đều có quyền")
    assert decomposed != "Mọi người đều có quyền"
    assert normalize_text(decomposed) == "Mọi người đều có quyền"
    assert normalize_text("one\r\ntwo\rthree\u2028four\x85five") == "one\ntwo\nthree\nfour\nfive"
    assert normalize_text("a \t\n \n\u3000\n  indented\nb  ") == "a\n\n\n  indented\nb"
    text = "Un paragraphe.\r\n \r\n\tDeux.\n"
    assert normalize_text(normalize_text(text)) == normalize_text(text) == "Un paragraphe.\n\n\tDeux.\n"


def test_normalisation_keeps_code_as_its_files_hold_it():
    """Indentation (spaces, tabs), blank lines, escapes and non-ASCII strings are untouched; only what no
    program means by itself goes: CRLF line ends and spaces at the end of a line."""
    for path in sorted(STARCODER.glob("*/*.parquet")):
        for text in pq.read_table(path).column("content").to_pylist():
            assert normalize_text(text) == text, path.parent.name
    program = 'func f() {\r\n\tif x {  \r\n\r\n\t\treturn "\\n, naïve"\r\n\t}\r\n}\r\n'
    assert normalize_text(program) == 'func f() {\n\tif x {\n\n\t\treturn "\\n, naïve"\n\t}\n}\n'


def test_blank_line_style_never_decides_a_documents_fate():
    paragraphs = [
        "Le conseil municipal s'est réuni mardi soir pour discuter du budget de la commune et des travaux.",
        "Les habitants ont pu poser leurs questions sur le calendrier des travaux, qui commencent en mai.",
        "Le maire a rappelé que la rénovation de l'école reste la priorité de l'équipe et des élus présents.",
        "Plusieurs associations ont demandé que la salle des fêtes reste accessible pendant toute la durée.",
        "La séance s'est terminée par le vote du budget, adopté à une large majorité des élus dans la salle.",
    ]
    styles = ["\n\n", "\n\n\n", "\n \n\t\n", "\r\n\r\n", "\r\r", "\n\u00a0\n"]
    configs = FilterConfigs()
    filters = [LanguageQualityFilter(family, configs) for family in FILTER_FAMILIES]
    for style in styles:
        doc = Document(normalize_text(style.join(paragraphs)), style, metadata={"language": "fra_Latn"})
        assert [f.filter(doc) for f in filters] == [True] * len(filters), repr(style)


def test_languages_get_the_segmenter_fineweb2_used():
    assert split("tha_Thai", "การสมรสจะกระทำกันก็แต่ด้วยความยินยอม") == [
        "การสมรส", "จะ", "กระทำ", "กัน", "ก็", "แต่", "ด้วย", "ความยินยอม",
    ]  # fmt: skip
    assert split("kor_Hang", "모든 사람은 교육을 받을 권리를")[:5] == ["모든", "사람", "은", "교육", "을"]
    decomposed = unicodedata.normalize("NFD", "Mọi người đều có quyền được học hành.")
    assert split("vie_Latn", decomposed) == ["Mọi", "người", "đều", "có", "quyền", "được", "học hành", "."]
    assert split("cmn_Hani", "人人有享有休息和闲暇的权利。") == [
        "人人", "有", "享有", "休息", "和", "闲暇", "的", "权利", "。",
    ]  # fmt: skip
    assert split("jpn_Jpan", "すべて人は、教育を受ける権利を有する。")[:6] == [
        "すべて",
        "人",
        "は",
        "、",
        "教育",
        "を",
    ]
    assert split("lao_Laoo", "ຄົນຜູ້ໃດກໍ່ມີສິດ") == ["ຄົນ", "ຜູ້ໃດ", "ກໍ່", "ມີ", "ສິດ"]
    for language, segmenter in [
        ("tha_Thai", "ThaiTokenizer"),
        ("kor_Hang", "KiwiTokenizer"),
        ("vie_Latn", "SpaCyTokenizer(vi)"),
        ("cmn_Hani", "SpaCyTokenizer(zh)"),
        ("div_Thaa", "WhitespaceTokenizer"),
        ("hin_Deva", "IndicNLPTokenizer(hi)"),
    ]:
        splitting = word_splitting(language)
        assert (splitting.fineweb2, splitting.segmenter, splitting.skipped) == (segmenter, segmenter, {})


def test_fineweb2_stop_words_are_found_in_the_samples_clean_text():
    """Two stop words per document is FineWeb2's rule: its lists only match its own word splitting."""
    clean = {row["id"] for row in sample_documents() if row["kind"] == "clean"}
    configs = FilterConfigs()
    for language in ("tha_Thai", "kor_Hang", "vie_Latn", "cmn_Hani", "jpn_Jpan", "lao_Laoo", "khm_Khmr",
                     "mya_Mymr", "div_Thaa", "bod_Tibt"):  # fmt: skip
        stopwords = set(configs(language).stopwords)
        rows = pq.read_table(next((FINEWEB2 / language).glob("train/*.parquet"))).to_pylist()
        found = [len(stopwords & set(split(language, row["text"]))) for row in rows if row["id"] in clean]
        assert found and min(found) >= 2, (language, found)


def test_words_are_split_once_per_document_and_segmenters_load_once():
    splitting = word_splitting("fra_Latn")
    text = normalize_text("Le chat dort sur la table.")
    assert splitting.words.word_tokenize(text) is splitting.words.word_tokenize(text)
    # Asturian and Occitan are split with spaCy's Spanish class, as Spanish itself: loaded once.
    assert word_splitting("ast_Latn").words.tokenizer is word_splitting("spa_Latn").words.tokenizer
    assert word_splitting("fra_Latn") is splitting


def test_spacy_segmenters_load_without_torch_which_still_imports_afterwards():
    check = (
        "import sys; from pipeline.words import word_splitting; "
        "assert word_splitting('fra_Latn').words.word_tokenize(\"l'homme\") == [\"l'\", 'homme']; "
        "assert 'torch' not in sys.modules, 'spaCy imported torch'; "
        "import torch, thinc.compat; assert torch.ones(2).sum() == 2 and not thinc.compat.has_torch"
    )
    command = [sys.executable, "-c", check]
    done = subprocess.run(command, cwd=SAMPLE.parents[1], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_tibetan_falls_back_to_syllables_and_skips_word_rules():
    splitting = word_splitting("bod_Tibt")
    assert (splitting.fineweb2, splitting.segmenter) == ("TibetanTokenizer", "TibetanSyllables")
    assert splitting.skipped == SYLLABLE_SKIPPED_RULES
    assert set(splitting.skipped) == {
        "min_avg_word_length",
        "max_avg_word_length",
        "top_n_grams",
        "dup_n_grams",
    }
    # syllables keep their tsheg and shads cluster, as in botok (and FineWeb2's stop words `དང་`, `། །`)
    assert split("bod_Tibt", "བོད་ཀྱི་སྐད་ཡིག་དང་། །ཡི་གེ།") == [
        "བོད་", "ཀྱི་", "སྐད་", "ཡིག་", "དང་", "། །", "ཡི་", "གེ", "།",
    ]  # fmt: skip
    texts = pq.read_table(next((FINEWEB2 / "bod_Tibt").glob("train/*.parquet"))).column("text").to_pylist()
    configs = FilterConfigs()
    filters = [LanguageQualityFilter(family, configs) for family in FILTER_FAMILIES]
    for i, text in enumerate(texts):
        doc = Document(normalize_text(text), str(i), metadata={"language": "bod_Tibt"})
        assert all(f.filter(doc) is True for f in filters), i


def test_stanza_languages_get_a_spacy_class_that_splits_the_same_words():
    for language, fineweb2, segmenter in [
        ("cym_Latn", "StanzaTokenizer(cy)", "SpaCyTokenizer(xx)"),
        ("kmr_Latn", "StanzaTokenizer(kmr)", "SpaCyTokenizer(kmr)"),
        ("gla_Latn", "StanzaTokenizer(gd)", "SpaCyTokenizer(gd)"),
        ("lzh_Hani", "StanzaTokenizer(lzh)", "SpaCyTokenizer(zh)"),
    ]:
        splitting = word_splitting(language)
        assert (splitting.fineweb2, splitting.segmenter, splitting.skipped) == (fineweb2, segmenter, {})
    assert split("cym_Latn", "Mae'r hawl gan bawb i gael addysg.") == [
        "Mae'r", "hawl", "gan", "bawb", "i", "gael", "addysg", ".",
    ]  # fmt: skip
    assert split("gla_Latn", "Tha an-diugh a' chòir aig gach neach.")[:3] == ["Tha", "an-diugh", "a'"]


def test_languages_without_an_assignment_get_their_scripts_segmenter():
    assert word_splitting("xyz_Thai").segmenter == "ThaiTokenizer"
    assert word_splitting("xyz_Hant").segmenter == "SpaCyTokenizer(zh)"
    assert word_splitting("xyz_Latn").segmenter == "WhitespaceTokenizer"


def test_a_segmenter_that_cannot_load_stops_the_build_naming_the_fix(monkeypatch):
    def broken(class_name: str, code: str):
        raise OSError("Cannot open required files for skipbigram model")

    monkeypatch.setattr(words, "_tokenizer", broken)
    with pytest.raises(WordSplittingError, match=r"kor_Hang: cannot load KiwiTokenizer.*kiwipiepy<0.22"):
        LanguageWords("kor_Hang", "KiwiTokenizer", "").word_tokenize("모든 사람은")


def test_shingles_use_the_fast_script_aware_split():
    assert SHINGLE_WORDS.word_tokenize("L'homme est là, n'est-ce pas?") == [
        "L'", "homme", "est", "là", ",", "n'", "est", "-", "ce", "pas", "?",
    ]  # fmt: skip
    assert SHINGLE_WORDS.word_tokenize("我爱北京。") == ["我", "爱", "北", "京", "。"]
    assert SHINGLE_WORDS.word_tokenize("संस्कृत भाषा") == ["संस्कृत", "भाषा"]


def _tricky_texts(rules: list[str], count: int, seed: int) -> list[str]:
    """Texts of special cases, words and punctuation, some split by whitespace of every kind."""
    rng = random.Random(seed)
    spaces = [" ", "  ", "\n", "\n\n", "\t", "\u00a0", "\u3000", " \n "]
    punctuation = list(".,;:!?()[]\"'«»-–/…") + [":)", ";-)", "...", "''"]
    plain = ["chat", "l'", "aujourd'hui", "Mr.", "т.ч.", "в", "1", "Kor.", "e.g.", "n't", "12:30", "U.S.A."]
    texts = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(1, 30)):
            r = rng.random()
            piece = (
                rng.choice(rules) if r < 0.4 else rng.choice(plain) if r < 0.7 else rng.choice(punctuation)
            )
            if rng.random() < 0.3:
                piece = rng.choice(punctuation) + piece
            if rng.random() < 0.3 and len(piece) > 1:  # a special case cut by whitespace
                cut = rng.randint(1, len(piece) - 1)
                piece = piece[:cut] + rng.choice(spaces) + piece[cut:]
            pieces += [piece, rng.choice(spaces) if rng.random() < 0.85 else ""]
        texts.append("".join(pieces))
    return texts


@pytest.mark.parametrize("code", ["fr", "ru", "ms", "gd", "xx"])
def test_remembered_chunks_give_datatrove_spacy_words_even_where_special_cases_span_spaces(code, monkeypatch):
    """Chunk by chunk, in windows where special cases might join chunks, or whole: datatrove's words."""
    reference = SpaCyTokenizer(code)
    fast = words.CachingSpaCyTokenizer(code)
    ways = {"windowed": 0, "whole": 0}
    for way, method in (("windowed", "_windowed_words"), ("whole", "_text_words")):
        original = getattr(fast, method)

        def counted(text, way=way, original=original):
            ways[way] += 1
            return original(text)

        monkeypatch.setattr(fast, method, counted)
    texts = _tricky_texts(list(reference.tokenizer.tokenizer.rules), 150, seed=len(code))
    texts += [":- (-8''  12:30", "voir в т.ч. ici", "Il dit : ) et part", "IS_ALPHA x"]
    for text in texts:
        assert fast.word_tokenize(text) == reference.word_tokenize(text), repr(text)
    assert ways["windowed"] > 10 and ways["whole"] >= 1, ways  # every way was compared


def test_spacy_s_strings_and_the_chunk_memo_stay_bounded_over_a_long_task(monkeypatch):
    """Zones are renewed and the memo starts afresh, so a task of many new words holds few of them."""
    monkeypatch.setattr(words, "ZONE_CHARACTERS", 2_000)
    monkeypatch.setattr(words, "CHUNK_CACHE_SIZE", 50)
    fast, reference = words.CachingSpaCyTokenizer("es"), SpaCyTokenizer("es")
    rng = random.Random(0)
    held = []
    for _ in range(150):  # 6,000 words never seen before
        text = " ".join(f"palabra{rng.randrange(10**9)}," for _ in range(40))
        assert fast.word_tokenize(text) == reference.word_tokenize(text)
        held.append((len(fast.tokenizer.vocab.strings), len(fast._chunks)))
    assert max(strings for strings, _ in held) < 2_000
    assert max(chunks for _, chunks in held) <= 50
