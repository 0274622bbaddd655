"""Per-language quality filtering with FineWeb2-format configs.

FineWeb2 tuned the Gopher repetition, Gopher quality and FineWeb quality rules per
language and published the thresholds as one YAML file per ``{lang}_{Script}``.
This module reads such a directory and runs datatrove's own filter classes with
each document's language's thresholds. Languages without a config get
:data:`DEFAULTS` (language-agnostic: no stop-word rule, FineWeb's short-line rule
off as in FineWeb2 for non-English data).

Words are split by :class:`ScriptAwareWordTokenizer`: a fast regex split on
spaces and punctuation, keeping elided articles (``l'``) as words, and one word per
character for scripts written without spaces (Han, kana, Thai, Lao, Khmer,
Myanmar, Tibetan). For those scripts a mean word length of 1..4 characters is
accepted and the n-gram repetition rules count two characters per word (a word
of those languages averages about two characters), so FineWeb2's word n-gram
thresholds keep their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import regex
import yaml
from datatrove.data import Document
from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.utils.word_tokenizers import WordTokenizer

from pipeline.languages import is_language_label

UNSEGMENTED_SCRIPTS = ("Hani", "Hans", "Hant", "Jpan", "Thai", "Laoo", "Khmr", "Mymr", "Tibt")
_UNSEG = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
# Tibetan's tsheg (U+0F0B/0C) separates syllables the way a space separates words.
_WORD_RE = regex.compile(
    rf"(?=\p{{L}})[{_UNSEG}]\p{{M}}*|[^\W{_UNSEG}]+['’](?=\w)|[^\W{_UNSEG}]+|[^\w\s\u0F0B\u0F0C]+"
)
_SENTENCE_RE = regex.compile(r"[^.!?。！？\n]*(?:[.!?。！？]+|\n|$)")


class ScriptAwareWordTokenizer(WordTokenizer):
    """Regex word splitting that works for every script without per-language models."""

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD_RE.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE_RE.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _SENTENCE_RE.finditer(text) if m.group().strip()]


WORD_TOKENIZER = ScriptAwareWordTokenizer()


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
    chars_per_word: int = 1  # not a config key: 2 for scripts split into one word per character


# Gopher's English-centric mean word length (3..10) is widened: FineWeb2's per-language
# configs range from 1 to 23, and e.g. Hawaiian or Korean average under 3 characters.
DEFAULTS = LanguageThresholds(min_avg_word_length=2, max_avg_word_length=14)
UNSEGMENTED_DEFAULTS = replace(DEFAULTS, min_avg_word_length=1, max_avg_word_length=4, chars_per_word=2)
# Thai and Tibetan end sentences with a space or a shad, not with punctuation FineWeb's line rule knows.
UNPUNCTUATED_SCRIPTS = ("Thai", "Tibt")


def default_thresholds(script: str) -> LanguageThresholds:
    """The language-agnostic thresholds for a language without a config, by its script."""
    if script not in UNSEGMENTED_SCRIPTS:
        return DEFAULTS
    if script in UNPUNCTUATED_SCRIPTS:
        return replace(UNSEGMENTED_DEFAULTS, line_punct_thr=0.0)
    return UNSEGMENTED_DEFAULTS


_KEYS = {f.name for f in fields(LanguageThresholds)} - {"chars_per_word"}


class FilterConfigError(ValueError):
    """A filter config file that cannot be used; the message names the file and key."""


class FilterConfigs:
    """A directory of FineWeb2-format ``{lang}_{Script}.yml`` files, read lazily per language."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else None
        if self.directory is not None and not self.directory.is_dir():
            raise FilterConfigError(f"filter config directory {self.directory} does not exist")
        self._cache: dict[str, LanguageThresholds] = {}

    def __call__(self, language: str) -> LanguageThresholds:
        if language not in self._cache:
            self._cache[language] = self._load(language)
        return self._cache[language]

    def language_score(self, language: str) -> float:
        return self(language).language_score

    def _load(self, language: str) -> LanguageThresholds:
        default = default_thresholds(language.rsplit("_", 1)[-1])
        if self.directory is None or not is_language_label(language):
            return default
        path = self.directory / f"{language}.yml"
        if not path.exists():
            return default
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
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


def stream_key(doc: Document) -> str:
    """The (source, language) stream a document belongs to, as used in stats labels."""
    return f"{doc.metadata.get('source')}/{doc.metadata.get('language')}"


class StreamFilter(BaseFilter):
    """A filter that also counts its drops per (source, language) stream and reason."""

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        results = super().filter_batch(batch)
        for doc, result in zip(batch, results, strict=True):
            keep, reason = get_filter_result(result)
            if not keep:
                self.stat_update(f"stream/{stream_key(doc)}/dropped/{reason or self.name}")
        return results


def _gopher_repetition(t: LanguageThresholds) -> BaseFilter:
    scale = t.chars_per_word
    return GopherRepetitionFilter(
        dup_line_frac=t.dup_line_frac,
        top_n_grams=tuple((n * scale, frac) for n, frac in t.top_n_grams),
        dup_n_grams=tuple((n * scale, frac) for n, frac in t.dup_n_grams),
        language=WORD_TOKENIZER,
    )


def _fineweb_quality(t: LanguageThresholds) -> BaseFilter:
    return FineWebQualityFilter(
        line_punct_thr=t.line_punct_thr,
        short_line_thr=999,
        new_line_ratio=t.new_line_ratio,
        language=WORD_TOKENIZER,
    )


def _gopher_quality(t: LanguageThresholds) -> BaseFilter:
    return GopherQualityFilter(
        min_avg_word_length=t.min_avg_word_length,
        max_avg_word_length=t.max_avg_word_length,
        max_non_alpha_words_ratio=t.max_non_alpha_words_ratio,
        stop_words=list(t.stopwords),
        min_stop_words=2 if t.stopwords else None,
        language=WORD_TOKENIZER,
    )


FILTER_FAMILIES = {
    "gopher_repetition": _gopher_repetition,
    "fineweb_quality": _fineweb_quality,
    "gopher_quality": _gopher_quality,
}


class LanguageQualityFilter(StreamFilter):
    """One of datatrove's quality filters, instantiated per language with that language's thresholds.

    ``sources`` limits it to documents of those sources (the others pass untouched).
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
        self._by_language: dict[str, BaseFilter] = {}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.sources is not None and doc.metadata.get("source") not in self.sources:
            return True
        language = doc.metadata["language"]
        if language not in self._by_language:
            self._by_language[language] = FILTER_FAMILIES[self.family](self.configs(language))
        return self._by_language[language].filter(doc)


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
