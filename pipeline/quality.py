"""Per-language quality filtering with FineWeb2's per-language configs.

FineWeb2 tuned the Gopher repetition, Gopher quality and FineWeb quality rules per
language and published the thresholds and stop words as one YAML file per
``{lang}_{Script}`` (github.com/huggingface/fineweb-2, ``configs/``). The package ships
all 1,929 of them (``pipeline/fineweb2/``, read in place from one archive) and uses them
by default; ``--filter-configs DIR`` reads a directory of such files instead. Languages
without a config get :func:`default_thresholds` (language-agnostic: no stop-word rule).

The filters are datatrove's own classes (the Gopher ones computing their statistics faster, with
the same decisions: ``pipeline.gopher``), set up as FineWeb2's pipeline set them up
(``fineweb-2-pipeline.py``, step 5): paragraph and duplicate-character rules of Gopher
repetition off, FineWeb's short-line rule off, its duplicate-line-character ratio 0.1,
two stop words required. Each language's words are split as FineWeb2 split them when it
computed the thresholds (``pipeline.words``); rules a language's split cannot serve are
skipped and counted (``stream/.../skipped/{config key}``).

Gopher's word-count limits (50 to 100,000 words; Rae et al. 2021, arXiv 2112.11446) are
FineWeb2's for every language, except that the upper one counts two units per word for
scripts written without spaces and for Korean: their segmenters split below the word
(morphemes, syllables, and single characters for text outside their dictionaries), and a
count inflated that way can only trip the upper limit.
"""

from __future__ import annotations

import functools
import io
import tarfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml
from datatrove.data import Document
from datatrove.pipeline.filters import FineWebQualityFilter
from datatrove.pipeline.filters.base_filter import BaseFilter

from pipeline.gopher import QualityFilter, RepetitionFilter
from pipeline.labels import is_language_label
from pipeline.streams import SKIPPED, StreamFilter, stream_label
from pipeline.words import WordSplitting, word_splitting

# FineWeb2's configs, unchanged, in one archive (license and source beside it).
FINEWEB2_CONFIGS = Path(__file__).parent / "fineweb2" / "filter-configs.tar.xz"
SHIPPED = "fineweb2"  # the recipe's `filter_configs` value naming them


@dataclass(frozen=True)
class LanguageThresholds:
    """One language's thresholds, with FineWeb2's config keys as field names."""

    language_score: float = 0.5
    dup_line_frac: float = 0.3
    dup_n_grams: tuple[tuple[int, float], ...] = (
        (5, 0.15),
        (6, 0.14),
        (7, 0.13),
        (8, 0.12),
        (9, 0.11),
        (10, 0.1),
    )
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    line_punct_thr: float = 0.12
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_non_alpha_words_ratio: float = 0.8
    new_line_ratio: float = 0.3
    stopwords: tuple[str, ...] = field(default=())


# Scripts written without spaces, and Korean: their segmenters split below the word.
SUBWORD_SCRIPTS = ("Hani", "Hans", "Hant", "Jpan", "Thai", "Laoo", "Khmr", "Mymr", "Tibt", "Hang")

# Gopher's English-centric mean word length (3..10) is widened: FineWeb2's per-language
# configs range from 1 to 23 for most languages, and e.g. Hawaiian or Korean average under 3
# characters; a word of a script written without spaces can be one character.
DEFAULTS = LanguageThresholds(min_avg_word_length=2, max_avg_word_length=14)
SUBWORD_DEFAULTS = replace(DEFAULTS, min_avg_word_length=1)
# Thai and Tibetan end sentences with a space or a shad, not with punctuation FineWeb's line rule knows.
UNPUNCTUATED_SCRIPTS = ("Thai", "Tibt")

# Gopher's word-count limits, kept by FineWeb2; the upper one counts this many units per word
# where segmenters split below the word (see the module docstring).
MIN_DOC_WORDS = 50
MAX_DOC_WORDS = 100_000
SUBWORD_UNITS_PER_WORD = 2


def default_thresholds(script: str) -> LanguageThresholds:
    """The language-agnostic thresholds for a language without a config, by its script."""
    base = SUBWORD_DEFAULTS if script in SUBWORD_SCRIPTS else DEFAULTS
    return replace(base, line_punct_thr=0.0) if script in UNPUNCTUATED_SCRIPTS else base


def max_doc_words(language: str) -> int:
    """Gopher's upper word-count limit for a language, in its segmenter's units."""
    script = language.rsplit("_", 1)[-1]
    return MAX_DOC_WORDS * (SUBWORD_UNITS_PER_WORD if script in SUBWORD_SCRIPTS else 1)


_KEYS = {f.name for f in fields(LanguageThresholds)}


class FilterConfigError(ValueError):
    """A filter config file that cannot be used; the message names the file and key."""


@functools.cache
def _shipped_configs() -> dict[str, str]:
    """``{lang}_{Script}`` -> YAML text of every config in the shipped archive (read once per process)."""
    with tarfile.open(FINEWEB2_CONFIGS, "r:xz") as archive:
        return {
            Path(member.name).stem: io.TextIOWrapper(archive.extractfile(member), encoding="utf-8").read()
            for member in archive
            if member.isfile() and member.name.endswith(".yml")
        }


class FilterConfigs:
    """Per-language thresholds from FineWeb2-format ``{lang}_{Script}.yml`` configs, read lazily.

    ``source`` is ``"fineweb2"`` (FineWeb2's own configs, shipped with the package), a
    directory of config files, or None (no configs: every language gets the defaults).
    """

    def __init__(self, source: str | Path | None = SHIPPED):
        self.directory = None if source in (None, SHIPPED) else Path(source)
        self.shipped = source == SHIPPED
        if self.directory is not None and not self.directory.is_dir():
            raise FilterConfigError(f"filter config directory {self.directory} does not exist")
        self._cache: dict[str, LanguageThresholds] = {}

    def __call__(self, language: str) -> LanguageThresholds:
        if language not in self._cache:
            self._cache[language] = self._load(language)
        return self._cache[language]

    def language_score(self, language: str) -> float:
        return self(language).language_score

    def _text(self, language: str) -> tuple[str, str] | None:
        """(where, YAML text) of a language's config, or None if it has none."""
        if self.shipped:
            text = _shipped_configs().get(language)
            return None if text is None else (f"{FINEWEB2_CONFIGS}:{language}.yml", text)
        if self.directory is None:
            return None
        path = self.directory / f"{language}.yml"
        if not path.exists():
            return None
        try:
            return str(path), path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise FilterConfigError(f"{path}: not valid YAML: {err}") from err

    def _load(self, language: str) -> LanguageThresholds:
        default = default_thresholds(language.rsplit("_", 1)[-1])
        found = self._text(language) if is_language_label(language) else None
        if found is None:
            return default
        path, text = found
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise FilterConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise FilterConfigError(f"{path}: expected a mapping of thresholds")
        unknown = set(raw) - _KEYS
        if unknown:
            raise FilterConfigError(f"{path}: unknown key(s) {sorted(unknown)}; known keys: {sorted(_KEYS)}")
        values = {}
        for key, value in raw.items():
            try:
                if key in ("dup_n_grams", "top_n_grams"):
                    values[key] = tuple((int(n), float(frac)) for n, frac in value)
                elif key == "stopwords":
                    values[key] = tuple(str(word) for word in value or ())
                else:
                    values[key] = float(value)
            except (TypeError, ValueError) as err:
                raise FilterConfigError(f"{path}: bad value for {key!r}: {value!r} ({err})") from err
        return replace(default, **values)


def _gopher_repetition(t: LanguageThresholds, words: WordSplitting) -> BaseFilter:
    return RepetitionFilter(
        dup_line_frac=t.dup_line_frac,
        dup_para_frac=0,
        dup_line_char_frac=0,
        dup_para_char_frac=0,
        top_n_grams=() if "top_n_grams" in words.skipped else t.top_n_grams,
        dup_n_grams=() if "dup_n_grams" in words.skipped else t.dup_n_grams,
        language=words.words,
    )


def _fineweb_quality(t: LanguageThresholds, words: WordSplitting) -> BaseFilter:
    return FineWebQualityFilter(
        line_punct_thr=t.line_punct_thr,
        short_line_thr=999,
        char_duplicates_ratio=0.1,
        new_line_ratio=t.new_line_ratio,
        language=words.words,
    )


def _gopher_quality(t: LanguageThresholds, words: WordSplitting) -> BaseFilter:
    return QualityFilter(
        min_doc_words=MIN_DOC_WORDS,
        max_doc_words=max_doc_words(words.language),
        min_avg_word_length=None if "min_avg_word_length" in words.skipped else t.min_avg_word_length,
        max_avg_word_length=None if "max_avg_word_length" in words.skipped else t.max_avg_word_length,
        max_non_alpha_words_ratio=t.max_non_alpha_words_ratio,
        stop_words=list(t.stopwords),
        min_stop_words=2 if t.stopwords else None,
        language=words.words,
    )


# Each family, and the config keys of the rules it applies (for reporting skipped ones).
FILTER_FAMILIES = {
    "gopher_repetition": _gopher_repetition,
    "fineweb_quality": _fineweb_quality,
    "gopher_quality": _gopher_quality,
}
FAMILY_RULES = {
    "gopher_repetition": ("dup_line_frac", "top_n_grams", "dup_n_grams"),
    "fineweb_quality": ("line_punct_thr", "new_line_ratio"),
    "gopher_quality": (
        "min_avg_word_length",
        "max_avg_word_length",
        "max_non_alpha_words_ratio",
        "stopwords",
    ),
}


class LanguageQualityFilter(StreamFilter):
    """One of datatrove's quality filters, instantiated per language with that language's thresholds
    and word splitting.

    ``sources`` limits it to documents of those sources (the others pass untouched). A rule the
    language's word splitting cannot serve is not applied, and every document judged without it
    is counted as ``stream/{source}/{language}/skipped/{config key}``. Expects normalised text
    (:class:`pipeline.words.TextNormalizer` runs first in the build).
    """

    type = "🔻 - FILTER"

    def __init__(
        self,
        family: str,
        configs: FilterConfigs,
        sources: frozenset[str] | None = None,
        exclusion_writer=None,
    ):
        if family not in FILTER_FAMILIES:
            raise ValueError(f"unknown filter family {family!r} (known: {', '.join(FILTER_FAMILIES)})")
        self.name = family.replace("_", " ")  # before super().__init__, which names the stats after it
        super().__init__(exclusion_writer)
        self.family = family
        self.configs = configs
        self.sources = sources  # None: every source
        self._by_language: dict[str, tuple[BaseFilter, tuple[str, ...]]] = {}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.sources is not None and doc.metadata.get("source") not in self.sources:
            return True
        language = doc.metadata["language"]
        if language not in self._by_language:
            words = word_splitting(language)
            skipped = tuple(rule for rule in FAMILY_RULES[self.family] if rule in words.skipped)
            self._by_language[language] = (
                FILTER_FAMILIES[self.family](self.configs(language), words),
                skipped,
            )
        step, skipped = self._by_language[language]
        for rule in skipped:
            self.stat_update(stream_label(doc, SKIPPED, rule))
        return step.filter(doc)


class DocumentSizeFilter(StreamFilter):
    """Drops documents above a byte limit before any expensive work (reason ``too_large``)."""

    name = "📏 size limit"

    def __init__(self, max_bytes: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.max_bytes = max_bytes

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        # UTF-8 takes at most 4 bytes per character: skip the encode for clearly small texts.
        if len(doc.text) * 4 <= self.max_bytes or len(doc.text.encode("utf-8")) <= self.max_bytes:
            return True
        return False, "too_large"
