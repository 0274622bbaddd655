"""Language labels: ISO 639 mapping, script detection, normalization, hostile labels."""

import csv
import importlib.resources
from pathlib import Path

import iso639
import pytest
from fasttext.FastText import _FastText
from iso639.exceptions import DeprecatedLanguageValue

from mixtures.languages import CODE, language_code
from pipeline.labels import (
    SCRIPT_SAMPLE_CHARS,
    LanguageSelection,
    NoScriptError,
    detect_script,
    is_language_label,
    normalize_label,
    parse_label,
    to_iso639_3,
)
from pipeline.lid import lid176_model_path

FINEWEB2_TABLE = Path(__file__).resolve().parents[2] / "../shared/data/fineweb2-language-distribution.csv"
LANGUAGE_CODES = Path(__file__).parent / "data" / "language_codes.tsv"
# FineWeb2's languages as datatrove assigns them word tokenizers (datatrove ships the table).
TOKENIZER_ASSIGNMENT = importlib.resources.files("datatrove") / "assets" / "tokenizer_assignment.csv"
HOSTILE = [
    "../../x",
    "",
    "   ",
    "fr/../../etc",
    "fra_Latn/..",
    "fra_Latn\n",
    "__label__",
    "x",
    "zzz",
    "fra_latn",
    "FRA_Latn",
    "fr_Latn_x",
    "ab cd",
    "fra\x00",
    "C:\\fr",
    "fr;rm -rf",
    "qaa",
]


@pytest.mark.parametrize("label", ["fra_Latn", "cmn_Hani", "jpn_Jpan", "srp_Cyrl", "und_Kana"])
def test_is_language_label_accepts_labels(label):
    assert is_language_label(label)


@pytest.mark.parametrize("value", HOSTILE + ["fra", "fr_Latn", None, 42, "fra_Latnn"])
def test_is_language_label_rejects_everything_else(value):
    assert not is_language_label(value)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("fr", "fra"),
        ("de", "deu"),
        ("en", "eng"),
        ("ru", "rus"),
        ("ja", "jpn"),
        ("ko", "kor"),
        ("fre", "fra"),
        ("ger", "deu"),
        ("fra", "fra"),
        ("yue", "yue"),
        ("als", "als"),
        ("nah", "nah"),
        ("FR", "fra"),
        ("iw", "heb"),
        ("in", "ind"),
        ("sh", "hbs"),
        ("mo", "ron"),
        ("eml", "eml"),
        ("kzj", "kzj"),
    ],  # retired three-letter codes FineWeb2 still uses stay
)
def test_to_iso639_3_maps_iso_codes(code, expected):
    assert to_iso639_3(code) == expected


MACROLANGUAGES = [
    ("ar", "arb"),
    ("zh", "cmn"),
    ("ms", "zsm"),
    ("sw", "swh"),
    ("et", "ekk"),
    ("lv", "lvs"),
    ("mn", "khk"),
    ("ne", "npi"),
    ("ps", "pbt"),
    ("az", "azj"),
    ("uz", "uzn"),
    ("mg", "plt"),
    ("sq", "als"),
    ("no", "nob"),
    ("fa", "fas"),
    ("yi", "ydd"),
    ("ku", "kmr"),
    ("or", "ory"),
    ("zho", "cmn"),
    ("ara", "arb"),
    ("chi", "cmn"),
    ("tl", "fil"),
]


@pytest.mark.parametrize(("code", "expected"), MACROLANGUAGES)
def test_to_iso639_3_prefers_fineweb2_individual_languages(code, expected):
    assert to_iso639_3(code) == expected


@pytest.mark.skipif(not FINEWEB2_TABLE.exists(), reason="FineWeb2 reference table not available")
def test_fineweb2_labels_are_fixed_points_and_macrolanguages_map_into_them():
    with FINEWEB2_TABLE.open(encoding="utf-8") as f:
        subsets = {row["subset"] for row in csv.DictReader(f) if row["split"] == "train"}
    labels = {subset for subset in subsets if not subset.endswith("_removed")}
    assert len(labels) > 1800
    assert [label for label in sorted(labels) if normalize_label(label) != label] == []
    codes = {language_code(label) for label in labels}
    assert {to_iso639_3(code) for code, _ in MACROLANGUAGES} <= codes


@pytest.mark.parametrize("code", ["xyz", "qaa", "e", "", "../x", "fr/x", "bh", "him"])
def test_to_iso639_3_rejects_unknown_codes_by_name(code):
    with pytest.raises(ValueError) as err:
        to_iso639_3(code)
    assert repr(code) in str(err.value)


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("The quick brown fox jumps over the lazy dog.", "Latn"),
        ("Ça coûte 12,50 € — très cher !", "Latn"),
        ("Съешь же ещё этих мягких французских булок.", "Cyrl"),
        ("Η γλώσσα είναι ζωντανή.", "Grek"),
        ("اللغة العربية جميلة", "Arab"),
        ("עברית היא שפה", "Hebr"),
        ("हिन्दी एक भाषा है।", "Deva"),
        ("ภาษาไทยเป็นภาษาที่สวยงาม", "Thai"),
        ("Հայերենը գեղեցիկ լեզու է", "Armn"),
        ("ქართული ენა ლამაზია", "Geor"),
        ("我们明天去北京看朋友。", "Hani"),
        ("私は明日東京へ行きます。", "Jpan"),
        ("ひらがなだけのぶんしょう", "Jpan"),
        ("한국어(韓國語)는 아름다운 언어입니다.", "Hang"),
        ("текст \ud800 с одиноким суррогатом", "Cyrl"),
        ("𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀 𐌰𐌱𐌲𐌳", "Goth"),
        ("1234 5678 !!! ... ---", "Zyyy"),
        ("", "Zyyy"),
    ],
)
def test_detect_script(text, script):
    assert detect_script(text) == script


def test_detect_script_chinese_with_a_stray_kana_stays_han():
    text = "这家店的招牌上写着の字，但是整篇文章都是用中文写的，没有别的日文。" * 3
    assert detect_script(text) == "Hani"


def test_detect_script_reads_only_the_leading_sample():
    text = "a" * SCRIPT_SAMPLE_CHARS + "Ж" * (5 * SCRIPT_SAMPLE_CHARS)
    assert detect_script(text) == "Latn"
    assert detect_script("Ж" + text) == "Latn"
    assert detect_script("Ж" * SCRIPT_SAMPLE_CHARS + text) == "Cyrl"


@pytest.mark.parametrize(
    ("raw", "text", "expected"),
    [
        ("fra_Latn", None, "fra_Latn"),
        ("__label__fra_Latn", None, "fra_Latn"),
        ("__label__zho_Hani", None, "cmn_Hani"),
        ("fr_Latn", None, "fra_Latn"),
        ("eml_Latn", None, "eml_Latn"),
        ("fra", "Bonjour à tous", "fra_Latn"),
        ("fr", "Bonjour à tous", "fra_Latn"),
        ("__label__fr", "Bonjour à tous", "fra_Latn"),
        ("zh", "我们明天去北京", "cmn_Hani"),
        ("simple", "Simple English", "eng_Latn"),
        ("zh-yue", "廣東話係一種語言", "yue_Hani"),
        ("zh_yue", "廣東話係一種語言", "yue_Hani"),
        ("be-tarask", "Беларуская мова", "bel_Cyrl"),
        ("als", "Alemannisch isch e Sprooch", "gsw_Latn"),
        ("sr", "Српски језик", "srp_Cyrl"),
        ("sr", "Srpski jezik", "srp_Latn"),
        ("ja", "東京都庁", "jpn_Jpan"),
        ("ko", "大韓民國", "kor_Hang"),
        ("no", "Norsk språk", "nob_Latn"),
        ("ar", "اللغة العربية", "arb_Arab"),
    ],
)
def test_normalize_label(raw, text, expected):
    assert normalize_label(raw, text) == expected


def test_normalize_label_keeps_a_given_script_over_the_text():
    assert normalize_label("srp_Latn", "Српски језик") == "srp_Latn"


def test_normalize_label_needs_text_when_label_names_no_script():
    with pytest.raises(ValueError, match="'fr'.*no script"):
        normalize_label("fr")


@pytest.mark.parametrize("raw", HOSTILE + ["zh-unknown", "__label__../x"])
def test_normalize_label_rejects_hostile_labels_by_name(raw):
    with pytest.raises(ValueError) as err:
        normalize_label(raw, "some text")
    assert repr(raw) in str(err.value)


@pytest.mark.parametrize("raw", [None, 3, b"fr", ["fr"], {"fr": 1}])
def test_normalize_label_rejects_non_strings(raw):
    with pytest.raises(ValueError):
        normalize_label(raw, "text")


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("fra_Latn", ("fra", "Latn")),
        ("__label__fr", ("fra", None)),
        ("zh-yue", ("yue", None)),
        ("simple", ("eng", None)),
        ("als", ("gsw", None)),
        ("als_Latn", ("als", "Latn")),
    ],
)
def test_parse_label_needs_no_text(raw, parsed):
    assert parse_label(raw) == parsed


@pytest.mark.parametrize("label", ["fra_Zyyy", "und_Zyyy", "eng_Zinh", "fra_Zzzz", "zxx_Zxxx"])
def test_labels_of_no_writing_system_are_not_language_labels(label):
    assert not is_language_label(label)
    with pytest.raises(NoScriptError, match=label):
        normalize_label(label)


def test_code_is_the_one_label_of_a_script_of_no_writing_system():
    """``zxx_Zyyy`` (no linguistic content, common script) labels code, in any selection that names it."""
    assert is_language_label(CODE)
    assert normalize_label(CODE) == normalize_label(CODE, "x = 1\n") == CODE
    assert LanguageSelection.parse([CODE, "fra"]).matches(CODE)
    assert LanguageSelection.parse([CODE]).selects(CODE)
    assert not LanguageSelection.parse(["fra", "eng"]).matches(CODE)


@pytest.mark.parametrize("text", ["1234 5678 !!! ... ---", "", "\u0301\u0301", "🙂🙂 2024"])
def test_a_text_without_letters_gets_no_label(text):
    with pytest.raises(NoScriptError, match="no writing system"):
        normalize_label("__label__en", text)


def read_language_codes() -> list[dict[str, str]]:
    lines = LANGUAGE_CODES.read_text(encoding="utf-8").splitlines()
    return list(csv.DictReader((line for line in lines if not line.startswith("#")), delimiter="\t"))


def iso639_3_name(code: str) -> str:
    """ISO 639-3's reference name of a code, retired ones included (FineWeb2 still uses `eml`)."""
    try:
        return iso639.Lang(code).name
    except DeprecatedLanguageValue as retired:
        return retired.name


def fineweb2_codes() -> set[str]:
    with TOKENIZER_ASSIGNMENT.open(encoding="utf-8") as f:
        return {row["code_3"] for row in csv.DictReader(f)}


def test_every_wikipedia_and_lid176_code_names_its_language():
    rows = read_language_codes()
    assert len([row for row in rows if "wikipedia" in row["in"].split()]) == 323
    wrong = [(row["code"], parse_label(row["code"])[0], row["language"]) for row in rows]
    assert [entry for entry in wrong if entry[1] != entry[2]] == []
    # the table's names are ISO 639-3's own for its codes, so a wrong code reads as the wrong language
    names = [(row["language"], row["name"], iso639_3_name(row["language"])) for row in rows]
    assert [entry for entry in names if entry[1] != entry[2]] == []
    assert normalize_label("nrm", "Jèrri est eune île dans la Manche.") == "nrf_Latn"


def test_the_code_table_holds_every_lid176_label():
    labels = {label.removeprefix("__label__") for label in _FastText(str(lid176_model_path())).get_labels()}
    assert len(labels) == 176
    assert labels == {row["code"] for row in read_language_codes() if "lid176" in row["in"].split()}


# Wikipedias in languages FineWeb2 does not cover: their streams have no FineWeb2 counterpart.
NOT_IN_FINEWEB2 = {"arc", "cdo", "chy", "gan", "gpe", "pih", "pli"}


def test_wikipedia_languages_are_fineweb2_languages():
    languages = {row["language"] for row in read_language_codes()}
    assert languages - fineweb2_codes() == NOT_IN_FINEWEB2


def test_macrolanguages_map_to_themselves_or_one_of_their_languages():
    fineweb2 = fineweb2_codes()
    macrolanguages = [lang for lang in iso639.iter_langs() if lang.scope() == "Macrolanguage"]
    assert len(macrolanguages) > 50
    for macro in macrolanguages:
        mapped = to_iso639_3(macro.pt3)
        if mapped != macro.pt3:
            assert mapped in {lang.pt3 for lang in macro.individuals()}, macro
            assert mapped in fineweb2, macro
