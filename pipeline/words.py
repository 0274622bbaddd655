"""Text normalisation and word splitting per language, the way FineWeb2 made its word statistics.

FineWeb2's per-language thresholds and stop words (``pipeline.quality``) were computed on
trafilatura's output split into words by datatrove's per-language word tokenizers
(``datatrove/assets/tokenizer_assignment.csv``: spaCy classes, jieba, SudachiPy, pyvi,
pythainlp, kiwipiepy, khmer-nltk, LaoNLP, pyidaungsu, IndicNLP, Stanza, botok). A word
statistic compared with those thresholds means something only when it is made the same way:

* :func:`normalize_text` gives the text the shape trafilatura gave FineWeb2's (its
  ``sanitize``): NFC, every line break as ``\\n``, no whitespace at the end of a line, so
  whitespace-only lines are blank lines.
* :func:`word_splitting` gives each language the tokenizer datatrove assigns it, loaded
  once per process on first use. Two kinds cannot be had offline, and are replaced:
  Stanza (its models come from the hub at first use) by the spaCy class that splits the
  same words (:data:`STANZA_SUBSTITUTES`, else spaCy ``xx``), and botok (Tibetan; its
  dictionary is fetched from GitHub) by :class:`TibetanSyllables`. Syllables are not words,
  so the rules built on word boundaries (:data:`SYLLABLE_SKIPPED_RULES`) are not applied to
  those languages, and the build's statistics say so.
* :class:`ScriptAwareWordTokenizer` is the fast, language-independent split MinHash uses for
  its shingles (``pipeline.dedup``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import regex
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.utils.word_tokenizers import (
    BurmeseTokenizer,
    IndicNLPTokenizer,
    KhmerTokenizer,
    KiwiTokenizer,
    LaoTokenizer,
    SpaCyTokenizer,
    ThaiTokenizer,
    WhitespaceTokenizer,
    WordTokenizer,
    load_tokenizer_assignments,
    simple_span_tokenize,
    strip_strings,
)

from mixtures.cache import cache_dir

# ---- normalisation ------------------------------------------------------------------------------------

# The line breaks str.splitlines() knows (trafilatura splits lines with it), \r\n first.
_LINE_BREAK = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)


def normalize_text(text: str) -> str:
    """NFC, line breaks as ``\\n``, no trailing whitespace on any line (so blank lines are empty).

    What trafilatura's ``sanitize`` did to FineWeb2's text before the filters saw it, except
    that blank lines are kept (paragraph breaks) and the inside of a line is left alone.
    """
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return _TRAILING_SPACE.sub("", _LINE_BREAK.sub("\n", text))


class TextNormalizer(BaseFormatter):
    """Normalises every document's text with :func:`normalize_text`; the build stores the result."""

    name = "🧹 normalise text"

    def format(self, text: str) -> str:
        return normalize_text(text)


# ---- the tokenizers -----------------------------------------------------------------------------------

# FineWeb2 used Stanza for these codes; the spaCy blank class named here splits the same words
# (checked on real sentences); every other Stanza code gets spaCy `xx`, which does too.
STANZA_SUBSTITUTES = {"kmr": "kmr", "gd": "gd", "lzh": "zh"}
# Languages datatrove assigns no tokenizer: the segmenter of their script, else spaCy `xx`.
SCRIPT_TOKENIZERS = {
    "Hani": ("SpaCyTokenizer", "zh"),
    "Hans": ("SpaCyTokenizer", "zh"),
    "Hant": ("SpaCyTokenizer", "zh"),
    "Jpan": ("SpaCyTokenizer", "ja"),
    "Hang": ("KiwiTokenizer", ""),
    "Thai": ("ThaiTokenizer", ""),
    "Laoo": ("LaoTokenizer", ""),
    "Khmr": ("KhmerTokenizer", ""),
    "Mymr": ("BurmeseTokenizer", ""),
    "Tibt": ("TibetanTokenizer", ""),
}
UNASSIGNED = ("WhitespaceTokenizer", "")

_TIBETAN_PUNCT = "\u0f04-\u0f0a\u0f0d-\u0f14"  # head marks, shads, gter tsheg
_SHAD_CLUSTER = rf"[{_TIBETAN_PUNCT}]+(?: +[{_TIBETAN_PUNCT}]+)*"  # `། །` is one token, as in botok
_TIBETAN_TOKEN = regex.compile(
    rf"{_SHAD_CLUSTER}"
    r"|[^\s\p{P}\p{S}]+[\u0f0b\u0f0c]?"  # a syllable with its tsheg, as botok keeps it (`དང་`)
    r"|[\p{P}\p{S}]"
)
_TIBETAN_SENTENCE = regex.compile(rf"[^{_TIBETAN_PUNCT}\n]+(?:{_SHAD_CLUSTER}|\n|$)")


class TibetanSyllables(WordTokenizer):
    """Tibetan split into tsheg-delimited syllables (botok, which merges them into words, needs a download).

    Tokens look like botok's (a syllable keeps its tsheg, a shad cluster is one token), so
    FineWeb2's Tibetan stop words, all single syllables or shads, are found as they were.
    """

    def word_tokenize(self, text: str) -> list[str]:
        return _TIBETAN_TOKEN.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _TIBETAN_SENTENCE.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return list(simple_span_tokenize(text, self.sent_tokenize(text)))


# What syllables cannot stand in for, per FineWeb2 config key: the reason the build reports.
_BOTOK = "botok (FineWeb2's Tibetan segmenter) needs a download; split into syllables"
SYLLABLE_SKIPPED_RULES = {
    "min_avg_word_length": f"{_BOTOK}, whose mean length is not a word's",
    "max_avg_word_length": f"{_BOTOK}, whose mean length is not a word's",
    "top_n_grams": f"{_BOTOK}: n syllables are not n words",
    "dup_n_grams": f"{_BOTOK}: n syllables are not n words",
}


class WordSplittingError(RuntimeError):
    """A language's word segmenter cannot be loaded; the message names the package and the fix."""


def _prepare(class_name: str, code: str) -> None:
    """Keep the segmenters' own files in the asset cache and their downloads off."""
    if class_name in ("ThaiTokenizer", "LaoTokenizer") and "PYTHAINLP_READ_MODE" not in os.environ:
        os.environ.setdefault("PYTHAINLP_READ_ONLY", "1")  # pythainlp would create ~/pythainlp-data
    if class_name == "KhmerTokenizer":
        # khmer-nltk sets its logger to DEBUG with its own console handler when imported; a filter
        # added before that stays, and keeps its "Loaded model" line off the build's console
        logging.getLogger("khmer-nltk").addFilter(lambda record: record.levelno >= logging.WARNING)
    if class_name == "SpaCyTokenizer":
        _import_thinc_without_torch()
        if code == "zh":
            import jieba

            jieba.setLogLevel(logging.WARNING)
            jieba.dt.tmp_dir = str(cache_dir())  # its dictionary cache, else in the system temp folder


def _import_thinc_without_torch() -> None:
    """Import thinc (spaCy imports it first) with torch hidden from it, unless torch is imported already.

    thinc imports torch where it is installed, to offer GPU layers that spaCy's tokenizers never
    use; torch would cost every build process about 1 s and 220 MB of memory. A ``None`` in
    ``sys.modules`` makes thinc's ``import torch`` raise ``ImportError``, which it reads as "no
    torch". Only thinc's own import sees that; torch imports as usual afterwards.
    """
    if "torch" in sys.modules or "thinc.compat" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import thinc.compat  # noqa: F401
    finally:
        if sys.modules.get("torch", False) is None:
            del sys.modules["torch"]


# Text a spaCy memory zone spans before it is renewed (characters): the lexemes made inside one
# are freed at its end, so memory stays bounded over a long task.
ZONE_CHARACTERS = 10_000_000
# Whitespace-delimited chunks whose words are remembered before the memo starts afresh.
CHUNK_CACHE_SIZE = 200_000


_CHUNK = re.compile(r"\S+")  # the chunks str.split() gives (\s is str.isspace() in str patterns)


class _ChunkWords(NamedTuple):
    """A chunk's words, and the special-case tokens it begins and ends with (``SpecialCaseSpans.edges``)."""

    words: list[str]
    starts: tuple[str, ...]
    ends: tuple[str, ...]


@dataclass(frozen=True)
class SpecialCaseSpans:
    """Where spaCy's special-case matcher could join tokens across whitespace.

    spaCy matches its special cases (``Tokenizer.rules``) over a whole text's tokens, as the token
    sequences the rules split into without special cases, and whitespace does not stop a match.
    A match over two chunks starts with tokens that end the first chunk and continues with tokens
    that begin the next; those two tokens follow each other in some rule's sequence. So a text
    can be split chunk by chunk unless two adjacent chunks end and begin with such a pair
    (``joins``), or it holds a rule sequence that has a whitespace token of its own
    (``spaced_match``).
    """

    pairs: frozenset[tuple[str, str]]  # (token, next token) inside some rule's sequence
    firsts: frozenset[str]  # the first tokens of those pairs
    seconds: frozenset[str]  # the second tokens
    lengths: tuple[int, ...]  # the lengths of firsts and seconds
    spaced: re.Pattern | None  # rule sequences with a whitespace token, however spaced

    @classmethod
    def of(cls, tokenizer) -> SpecialCaseSpans | None:
        """The spans of a spaCy ``Tokenizer``; None for another kind (its chunks may not be apart)."""
        from spacy.tokenizer import Tokenizer

        if type(tokenizer) is not Tokenizer:
            return None
        plain = Tokenizer(  # the same affixes without special cases, as spaCy builds its matcher
            tokenizer.vocab,
            prefix_search=tokenizer.prefix_search,
            suffix_search=tokenizer.suffix_search,
            infix_finditer=tokenizer.infix_finditer,
            token_match=tokenizer.token_match,
            url_match=tokenizer.url_match,
        )
        pairs, spaced = set(), []
        with tokenizer.vocab.memory_zone():
            for rule in tokenizer.rules or {}:
                if rule.isspace():  # whitespace tokens are not words, and join nothing
                    continue
                sequence = [token.text for token in plain(rule)]
                if any(token.isspace() for token in sequence):
                    spaced.append(" ?".join(map(re.escape, sequence)))  # a spaCy token may end in a space
                pairs.update(p for p in itertools.pairwise(sequence) if not any(map(str.isspace, p)))
        firsts, seconds = frozenset(a for a, _ in pairs), frozenset(b for _, b in pairs)
        return cls(
            frozenset(pairs),
            firsts,
            seconds,
            tuple(sorted({len(token) for token in firsts | seconds})),
            re.compile("|".join(spaced)) if spaced else None,
        )

    def edges(self, chunk: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The pair tokens ``chunk`` begins with, and those it ends with (as strings)."""
        fits = [n for n in self.lengths if n <= len(chunk)]
        starts = tuple(chunk[:n] for n in fits if chunk[:n] in self.seconds)
        ends = tuple(chunk[-n:] for n in fits if chunk[-n:] in self.firsts)
        return starts, ends

    def joins(self, ends: tuple[str, ...], starts: tuple[str, ...]) -> bool:
        """Whether a chunk ending in one of ``ends`` and the next beginning with ``starts`` could join."""
        return any((a, b) in self.pairs for a in ends for b in starts)

    def spaced_match(self, text: str) -> bool:
        """Whether ``text`` holds a rule sequence that has a whitespace token (spaced as spaCy may)."""
        return self.spaced is not None and self.spaced.search(text) is not None


class CachingSpaCyTokenizer(SpaCyTokenizer):
    """datatrove's spaCy word tokenizer, giving the same words at a fraction of the cost.

    datatrove opens a spaCy memory zone per text, so every text starts from an empty vocabulary,
    and inside a zone spaCy's tokenizer does not use its chunk cache: every word is split into
    prefixes, infixes and suffixes by regular expression each time it is met (most of the time
    FineWeb2's filters spend). Two changes keep the words and drop that cost:

    * one memory zone spans many texts, up to ``ZONE_CHARACTERS``, and is then renewed (lexemes
      memoise, they do not decide);
    * for spaCy's rule-based tokenizer, the words of each whitespace-delimited chunk are
      remembered (up to ``CHUNK_CACHE_SIZE`` chunks), as spaCy's own cache does outside a zone:
      that tokenizer splits a text at whitespace and tokenizes each chunk on its own
      (``Tokenizer._tokenize_affixes``). Only its special-case matcher looks across chunks: it
      can match tokens on both sides of a space. :class:`SpecialCaseSpans` finds every place
      where that could happen; there the chunks concerned are split together, with the
      whitespace between them (``_windowed_words``). A text holding a special case with a
      whitespace token of its own is split whole, as is one holding ``IS_ALPHA``, which
      datatrove treats apart. The segmenters spaCy wraps (jieba, SudachiPy, pyvi) always see
      whole texts.

    spaCy zones must not be nested, so the sentence methods, which open their own, close it first.
    """

    def __init__(self, language: str, config=None):
        super().__init__(language, config)
        self._zone: contextlib.ExitStack | None = None
        self._zoned = 0  # characters tokenized in the open zone
        self._spans: SpecialCaseSpans | None = None  # None: whole texts only (or not loaded yet)
        self._chunks: dict[str, _ChunkWords] = {}
        self._checked = False

    def word_tokenize(self, text: str) -> list[str]:
        if not self._checked:
            self._spans = SpecialCaseSpans.of(self.tokenizer.tokenizer)
            self._checked = True
        spans = self._spans
        if spans is None or "IS_ALPHA" in text or spans.spaced_match(text):
            return self._text_words(text)
        words: list[str] = []
        ending: tuple[str, ...] = ()
        chunks = self._chunks
        for chunk in text.split():  # str.isspace() delimits, as in spaCy's tokenizer
            found = chunks.get(chunk) or self._chunk_words(chunk)
            if ending and found.starts and spans.joins(ending, found.starts):
                return self._windowed_words(text)
            words += found.words
            ending = found.ends
        return words

    def _windowed_words(self, text: str) -> list[str]:
        """The words of a text where special cases might join chunks: such chunks are split together.

        A run of chunks linked by possible joins is one window, tokenized as one text (with the
        whitespace between its chunks); no match crosses from one window into another.
        """
        spans, chunks = self._spans, self._chunks
        words: list[str] = []
        window: list[tuple[int, int, _ChunkWords]] = []
        for match in _CHUNK.finditer(text):
            found = chunks.get(match.group()) or self._chunk_words(match.group())
            if window and not (
                window[-1][2].ends and found.starts and spans.joins(window[-1][2].ends, found.starts)
            ):
                words += self._window_words(text, window)
                window = []
            window.append((match.start(), match.end(), found))
        return words + self._window_words(text, window)

    def _window_words(self, text: str, window: list[tuple[int, int, _ChunkWords]]) -> list[str]:
        if len(window) == 1:
            return window[0][2].words
        piece = text[window[0][0] : window[-1][1]]
        self._open_zone(len(piece))
        return strip_strings([token.text for token in self.tokenizer.tokenizer(piece)])

    def _open_zone(self, characters: int) -> None:
        """Count ``characters`` against the open zone, renewing it first if it is full."""
        if self._zone is None or self._zoned >= ZONE_CHARACTERS:
            self.close_zone()
            self._zone = contextlib.ExitStack()
            self._zone.enter_context(self.tokenizer.memory_zone())
        self._zoned += characters

    def _chunk_words(self, chunk: str) -> _ChunkWords:
        """One chunk's words (spaCy's tokenizer on the chunk alone), remembered."""
        self._open_zone(len(chunk))
        if len(self._chunks) >= CHUNK_CACHE_SIZE:
            self._chunks.clear()
        words = strip_strings([token.text for token in self.tokenizer.tokenizer(chunk)])
        found = self._chunks[chunk] = _ChunkWords(words, *self._spans.edges(chunk))
        return found

    def _text_words(self, text: str) -> list[str]:
        """The words of a whole text, as datatrove's tokenizer gives them, its sentencizer left out
        (it marks sentence starts, which words do not need)."""
        self._open_zone(len(text))
        with self.tokenizer.select_pipes(disable="sentencizer"):
            return strip_strings([token.text for chunk in self._do_tokenize(text) for token in chunk])

    def __getstate__(self) -> dict:
        """A copy (datatrove copies and pickles pipelines) starts without a zone or memo of its own."""
        return {**self.__dict__, "_zone": None, "_zoned": 0, "_spans": None, "_chunks": {}, "_checked": False}

    def close_zone(self) -> None:
        """End the open memory zone (freeing its lexemes), if there is one."""
        if self._zone is not None:
            self._zone.close()
            self._zone, self._zoned = None, 0

    def sent_tokenize(self, text: str) -> list[str]:
        self.close_zone()
        return super().sent_tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        self.close_zone()
        return super().span_tokenize(text)


class CachingWhitespaceTokenizer(WhitespaceTokenizer):
    """datatrove's fallback tokenizer, whose words are spaCy ``xx``'s: here from the caching class."""

    def word_tokenize(self, text: str) -> list[str]:
        return _tokenizer("SpaCyTokenizer", "xx").word_tokenize(text)


@functools.cache
def _tokenizer(class_name: str, code: str) -> WordTokenizer:
    """One loaded tokenizer per (datatrove class, code) and process, shared by the languages using it."""
    if class_name == "TibetanTokenizer":
        return TibetanSyllables()
    _prepare(class_name, code)
    return _DATATROVE_CLASSES[class_name](code) if code else _DATATROVE_CLASSES[class_name]()


_DATATROVE_CLASSES = {
    cls.__name__: cls
    for cls in (
        ThaiTokenizer,
        IndicNLPTokenizer,
        KiwiTokenizer,
        KhmerTokenizer,
        LaoTokenizer,
        BurmeseTokenizer,
    )
} | {"SpaCyTokenizer": CachingSpaCyTokenizer, "WhitespaceTokenizer": CachingWhitespaceTokenizer}


_FIXES = {
    "KiwiTokenizer": "FineWeb2 used kiwipiepy's 'sbg' model, which kiwipiepy 0.22 dropped: "
    "pip install 'kiwipiepy<0.22' 'kiwipiepy_model<0.22'",
}


class LanguageWords(WordTokenizer):
    """One language's word tokenizer, loaded on its first text, remembering the words of its last text.

    The three filter families split the same document one after the other; remembering the
    last text (by identity) splits it once.
    """

    def __init__(self, language: str, class_name: str, code: str):
        super().__init__(language)
        self.class_name, self.code = class_name, code
        self._loaded: WordTokenizer | None = None
        self._last_text: str | None = None
        self._last_words: list[str] = []

    @property
    def tokenizer(self) -> WordTokenizer:
        if self._loaded is None:
            try:
                loaded = _tokenizer(self.class_name, self.code)
                loaded.word_tokenize("a")  # datatrove's classes load their models on the first text
            except (ImportError, OSError, ValueError) as err:
                fix = _FIXES.get(self.class_name, "reinstall mmbert-data's dependencies (`make setup`)")
                raise WordSplittingError(
                    f"{self.language}: cannot load {describe(self.class_name, self.code)}, "
                    f"its word segmenter: {err}. {fix}"
                ) from err
            self._loaded = loaded
        return self._loaded

    def word_tokenize(self, text: str) -> list[str]:
        if text is not self._last_text:
            self._last_words = self.tokenizer.word_tokenize(text)
            self._last_text = text
        return self._last_words

    def sent_tokenize(self, text: str) -> list[str]:
        return self.tokenizer.sent_tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self.tokenizer.span_tokenize(text)


def describe(class_name: str, code: str) -> str:
    """A tokenizer as datatrove names it: ``SpaCyTokenizer(fr)``, ``ThaiTokenizer``."""
    return f"{class_name}({code})" if code else class_name


@dataclass(frozen=True)
class WordSplitting:
    """How one language's words are split, and what that means for its rules.

    ``fineweb2`` is the tokenizer FineWeb2 used; ``segmenter`` the one used here (the same
    unless it cannot be had offline). ``skipped`` maps FineWeb2 config keys whose rules are
    not applied to the reason.
    """

    language: str
    fineweb2: str
    segmenter: str
    words: LanguageWords
    skipped: dict[str, str] = field(default_factory=dict)


def _assignment(language: str) -> tuple[str, str]:
    """datatrove's (tokenizer class, code) for a ``xxx_Script`` label; by script if it assigns none."""
    factory = load_tokenizer_assignments().get(language)
    if isinstance(factory, partial) and len(factory.args) == 2:
        return factory.args
    return SCRIPT_TOKENIZERS.get(language.rsplit("_", 1)[-1], UNASSIGNED)


@functools.cache
def word_splitting(language: str) -> WordSplitting:
    """The word splitting of a ``xxx_Script`` language (nothing is loaded until its first text)."""
    class_name, code = _assignment(language)
    fineweb2 = describe(class_name, code)
    skipped: dict[str, str] = {}
    if class_name == "StanzaTokenizer":
        class_name, code = "SpaCyTokenizer", STANZA_SUBSTITUTES.get(code, "xx")
    elif class_name == "TibetanTokenizer":
        skipped = dict(SYLLABLE_SKIPPED_RULES)
    segmenter = "TibetanSyllables" if class_name == "TibetanTokenizer" else describe(class_name, code)
    return WordSplitting(language, fineweb2, segmenter, LanguageWords(language, class_name, code), skipped)


# ---- MinHash shingles ---------------------------------------------------------------------------------

_UNSEG = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
_WORD_RE = regex.compile(
    rf"(?=\p{{L}})[{_UNSEG}]\p{{M}}*|[^\W{_UNSEG}]+['’](?=\w)|[^\W{_UNSEG}]+|[^\w\s\u0F0B\u0F0C]+"
)
_SENTENCE_RE = regex.compile(r"[^.!?。！？\n]*(?:[.!?。！？]+|\n|$)")


class ScriptAwareWordTokenizer(WordTokenizer):
    """A fast regex split for every script, for MinHash shingles (``pipeline.dedup`` says why).

    Words between spaces and punctuation, elided articles (``l'``) kept as words, one word per
    character in scripts written without spaces.
    """

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD_RE.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE_RE.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _SENTENCE_RE.finditer(text) if m.group().strip()]


SHINGLE_WORDS = ScriptAwareWordTokenizer()
