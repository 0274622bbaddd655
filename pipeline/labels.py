"""Language labels: one spelling, ``xxx_Script`` (ISO 639-3 + ISO 15924), for every source.

FineWeb2 and GlotLID already speak ``fra_Latn``; Wikipedia names wikis ``fr``,
``simple`` or ``zh-yue``; fastText LID-176 predicts ``__label__fr``. The mixture
compiler counts tokens per label and the writer uses labels as directory names,
so every label is mapped to the FineWeb2 spelling here and anything that is not
strictly ``[a-z]{3}_[A-Z][a-z]{3}`` is rejected before it can reach a path. Source code is
``zxx_Zyyy`` (``mixtures.languages.CODE``), the one label in a script of no writing system.
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from iso639 import Lang
from iso639.exceptions import DeprecatedLanguageValue, InvalidLanguageValue

from mixtures.languages import CODE, language_code, selecting_names

_LABEL_RE = re.compile(r"[a-z]{3}_[A-Z][a-z]{3}")
_CODE_SCRIPT_RE = re.compile(r"([a-z]{2,3})_([A-Z][a-z]{3})")
_CODE_RE = re.compile(r"[a-z]{2,3}")
_ASCII_LETTER_RE = re.compile(r"[A-Za-z]")
_FASTTEXT_PREFIX = "__label__"

# ISO 639-3 macrolanguages -> the individual language FineWeb2 (GlotLID) files their text under,
# so that `zh`, `zho` and `cmn` all land in cmn_Hani. Macrolanguages FineWeb2 keeps as such
# (fas, san, srd, hbs, ...) are absent and stay unchanged.
_FINEWEB2_INDIVIDUAL = {
    "aka": "twi", "ara": "arb", "aym": "ayr", "aze": "azj", "est": "ekk", "grn": "gug",
    "iku": "ike", "ipk": "esk", "kau": "knc", "kom": "kpv", "kon": "kng", "kur": "kmr",
    "lav": "lvs", "mlg": "plt", "mon": "khk", "msa": "zsm", "nep": "npi", "nor": "nob",
    "oji": "ojb", "ori": "ory", "orm": "gaz", "pus": "pbt", "sqi": "als", "swa": "swh",
    "uzb": "uzn", "yid": "ydd", "zha": "zyb", "zho": "cmn",
    "tgl": "fil",  # an individual language, but FineWeb2 files Tagalog text as Filipino
}  # fmt: skip

# Withdrawn two-letter ISO 639-1 codes whose registry entry names no single replacement.
_WITHDRAWN = {"sh": "hbs", "mo": "ron"}

# Wikipedia / LID-176 language codes that are not ISO 639 codes of the same language: `als` is
# Alemannic there but Tosk Albanian in ISO 639-3, `nrm` Norman (ISO `nrf`) but Narom, a language
# of Sarawak. Wikipedia's `eml` (Emilian-Romagnol) is absent on purpose: ISO 639-3 has retired the
# code, and FineWeb2 files that language under it. tests/pipeline/data/language_codes.tsv checks every code.
_WIKI_CODES = {
    "simple": "eng", "als": "gsw", "bh": "bho", "nrm": "nrf",
    "zh-yue": "yue", "zh-classical": "lzh", "zh-min-nan": "nan",
    "be-tarask": "bel", "be-x-old": "bel", "bat-smg": "sgs", "fiu-vro": "vro",
    "roa-rup": "rup", "roa-tara": "nap", "map-bms": "jav", "nds-nl": "nds", "cbk-zam": "cbk",
}  # fmt: skip

# ISO 15924 codes that name no writing system: inherited (Zinh: combining marks), unwritten
# (Zxxx), common (Zyyy: digits, punctuation) and uncoded (Zzzz). A text "in" one of them has no
# letters, so it has no language label.
NO_WRITING_SYSTEM = frozenset({"Zinh", "Zxxx", "Zyyy", "Zzzz"})
# Script detection: only the first characters are read (it runs once per document), and
# characters of no writing system (digits, punctuation, combining marks) do not vote.
SCRIPT_SAMPLE_CHARS = 2000
_UNDETERMINED_SCRIPT = "Zyyy"
# Japanese mixes kana with Han; a text counts as Japanese once kana reach 1/20 of its Han+kana.
_KANA_SHARE_FOR_JAPANESE = 20
# Languages whose Han-only text is still filed under their usual script.
_HAN_SCRIPT_OF = {"jpn": "Jpan", "kor": "Hang"}


class NoScriptError(ValueError):
    """A label whose script, given or detected from the text, names no writing system (``Zyyy``...)."""


def is_language_label(value: object) -> bool:
    """Whether ``value`` is a ``xxx_Script`` label of a writing system, or code's ``zxx_Zyyy`` (and so
    safe as a path component)."""
    return value == CODE or (
        isinstance(value, str)
        and _LABEL_RE.fullmatch(value) is not None
        and value[4:] not in NO_WRITING_SYSTEM
    )


@functools.lru_cache(maxsize=8192)
def to_iso639_3(code: str) -> str:
    """Map an ISO 639-1/-2/-3 code to the ISO 639-3 code FineWeb2 uses for that language.

    Macrolanguages become FineWeb2's individual language (``zh`` -> ``cmn``, ``no`` -> ``nob``,
    ``ar`` -> ``arb``). Three-letter codes ISO has since retired stay as they are, because
    FineWeb2 and GlotLID still file text under some of them (``eml``, ``kzj``); collective codes
    FineWeb2 uses (``nah``) are kept too.
    """
    if not isinstance(code, str) or not _CODE_RE.fullmatch(code.lower()):
        raise ValueError(f"not an ISO 639 language code: {code!r}")
    code = code.lower()
    if code in _WITHDRAWN:
        return to_iso639_3(_WITHDRAWN[code])
    try:
        lang = Lang(code)
    except DeprecatedLanguageValue as err:
        if len(code) == 3:
            return code
        replacement = getattr(err, "change_to", "")
        if not replacement:
            raise ValueError(f"withdrawn ISO 639 code with no single replacement: {code!r}") from None
        return to_iso639_3(replacement)
    except InvalidLanguageValue:
        raise ValueError(f"unknown ISO 639 language code: {code!r}") from None
    iso3 = lang.pt3 or lang.pt5
    if not iso3:  # a few ISO 639-2 groups (`him`) have no ISO 639-3/-5 code
        raise ValueError(f"ISO 639 code {code!r} has no ISO 639-3 equivalent")
    return _FINEWEB2_INDIVIDUAL.get(iso3, iso3)


class _ScriptTable(NamedTuple):
    """Script id of every Unicode code point (0: shared by all scripts), from GlotScript's ranges."""

    script_of_point: np.ndarray
    names: tuple[str, ...]


@functools.cache
def _script_table() -> _ScriptTable:
    from GlotScript.GlotScript import SCRIPT_RANGES

    names = ("", *sorted((set(SCRIPT_RANGES) - NO_WRITING_SYSTEM) | {"Jpan"}))
    script_of_point = np.zeros(sys.maxunicode + 1, dtype=np.uint16)
    for script, ranges in SCRIPT_RANGES.items():
        if script not in NO_WRITING_SYSTEM:
            for low, high in ranges:
                script_of_point[low : high + 1] = names.index(script)
    return _ScriptTable(script_of_point, names)


def detect_script(text: str) -> str:
    """The dominant ISO 15924 script of ``text``, read from its first characters.

    Japanese (kana with Han) is ``Jpan``, Korean ``Hang``, Chinese ``Hani``; text without any
    letters is ``Zyyy`` (ISO 15924 "common").
    """
    sample = text[:SCRIPT_SAMPLE_CHARS]
    if sample.isascii():
        return "Latn" if _ASCII_LETTER_RE.search(sample) else _UNDETERMINED_SCRIPT
    table = _script_table()
    points = np.frombuffer(sample.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    votes = np.bincount(table.script_of_point[points], minlength=len(table.names))
    votes[0] = 0
    if not votes.any():
        return _UNDETERMINED_SCRIPT
    hira, kata, hani, jpan = (table.names.index(name) for name in ("Hira", "Kana", "Hani", "Jpan"))
    kana = votes[hira] + votes[kata]
    votes[hira] = votes[kata] = 0
    if kana and kana * _KANA_SHARE_FOR_JAPANESE >= kana + votes[hani]:
        votes[jpan], votes[hani] = kana + votes[hani], 0
    return table.names[int(votes.argmax())]


def parse_label(raw: str) -> tuple[str, str | None]:
    """Any source's language label as (ISO 639-3 code, script or None when it names none).

    Accepts ``fra_Latn``, ``__label__fra_Latn``, ``fra``, ``fr``, ``__label__fr`` and Wikipedia
    codes (``simple``, ``zh-yue``/``zh_yue``, ``be-tarask``). Bare codes follow Wikipedia and
    LID-176, which is where they come from (``als`` is Alemannic there, not Tosk Albanian).
    Raises ValueError naming ``raw`` for anything else.
    """
    if not isinstance(raw, str):
        raise ValueError(f"language label must be a string, got {raw!r}")
    try:
        return _parse_label(raw)
    except ValueError as err:
        raise ValueError(f"not a language label: {raw!r} ({err})") from None


@functools.lru_cache(maxsize=8192)
def _parse_label(raw: str) -> tuple[str, str | None]:
    label = raw.removeprefix(_FASTTEXT_PREFIX)
    match = _CODE_SCRIPT_RE.fullmatch(label)
    if match:
        return to_iso639_3(match[1]), match[2]
    code = label.lower().replace("_", "-")
    if code in _WIKI_CODES:
        return _WIKI_CODES[code], None
    return to_iso639_3(code), None


def normalize_label(raw: str, text: str | None = None) -> str:
    """Turn any source's language label into FineWeb2's ``xxx_Script`` spelling.

    Labels `parse_label` accepts; when the label names no script, it is detected from ``text``
    (Han-only text of a Japanese or Korean label keeps that language's usual script). Raises
    NoScriptError when the script names no writing system (a text without letters: ``Zyyy``), except
    for code's own label, which stays as it is.
    """
    if raw == CODE:
        return CODE
    code, script = parse_label(raw)
    if script is None:
        if text is None:
            raise ValueError(f"language label {raw!r} names no script and no text was given to detect it")
        script = detect_script(text)
        if script == "Hani":
            script = _HAN_SCRIPT_OF.get(code, script)
    if script in NO_WRITING_SYSTEM:
        raise NoScriptError(f"language label {raw!r}: script {script} names no writing system (no letters)")
    return f"{code}_{script}"


def _check_script(script: str) -> None:
    """A script a selection names must be a script of some text (GlotScript's ISO 15924 table)."""
    known = _script_table().names
    if script not in known:
        near = "".join(f" (did you mean {m}?)" for m in difflib.get_close_matches(script, known, n=1))
        raise ValueError(f"unknown ISO 15924 script {script!r}{near}")


@dataclass(frozen=True)
class LanguageSelection:
    """Which languages a phase (or ``--languages``) takes: ISO 639-3 codes match every script
    (``srp`` = srp_Cyrl + srp_Latn; ``mixtures.languages.selecting_names``), full labels match one
    script; ``everything`` for "all"."""

    codes: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    everything: bool = False

    @classmethod
    def parse(cls, languages: Iterable[str] | None) -> LanguageSelection:
        if languages is None:
            return cls(everything=True)
        codes, labels = set(), set()
        for entry in languages:
            try:
                if entry == CODE:
                    labels.add(CODE)
                elif is_language_label(entry):
                    _check_script(entry[4:])
                    labels.add(normalize_label(entry))
                else:
                    codes.add(to_iso639_3(entry))
            except ValueError as err:
                raise ValueError(f"language selection entry {entry!r}: {err}") from None
        return cls(frozenset(codes), frozenset(labels))

    def matches(self, label: str) -> bool:
        return self.everything or any(
            name in self.labels or name in self.codes for name in selecting_names(label)
        )

    def may_match_code(self, code: str) -> bool:
        """Whether some script of language ``code`` could be selected (for per-language file lists)."""
        if self.everything or code in self.codes:
            return True
        return any(language_code(label) == code for label in self.labels)

    def selects(self, language: str | None) -> bool:
        """Whether a file of ``language`` holds selected text: a label, a bare ISO 639-3 code (a
        source whose script is known per document only), or None (unknown: only "all" takes it)."""
        if language is None:
            return self.everything
        return self.matches(language) if is_language_label(language) else self.may_match_code(language)
