"""Gopher's repetition and quality rules (Rae et al. 2021, arXiv 2112.11446), as datatrove applies them.

Both filters decide exactly as datatrove's classes they extend (same checks, same order, same
reasons), computing the same statistics faster:

* :class:`RepetitionFilter` (``GopherRepetitionFilter``, table A1): every n-gram is a slice of one
  joined text instead of a join of n words (:class:`NGrams`), counting runs in
  ``collections.Counter``'s C loop, and the scan for duplicated n-grams only runs where some
  n-gram repeats;
* :class:`QualityFilter` (``GopherQualityFilter``): what each word is (only punctuation? holding a
  letter?) is worked out once per distinct word, not per occurrence.
An n-gram is compared as datatrove compares it, as a string (words joined by a space for the top
n-gram, without one for duplicated n-grams), so word lists that join alike count alike.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.utils.text import PUNCTUATION_SET, split_into_words


class NGrams:
    """A document's word n-grams, as datatrove's repetition statistics compare them, each a slice.

    ``words`` joined once with spaces (the top n-gram's strings) and once without (the duplicated
    n-grams'); the offsets of every word in both are computed once for all n.
    """

    def __init__(self, words: list[str]):
        self.words = words
        lengths = list(map(len, words))
        self.joined = "".join(words)
        self.starts = [0, *itertools.accumulate(lengths)]  # word i is joined[starts[i]:starts[i + 1]]
        self.spaced = " ".join(words)
        # word i is spaced[spaced_starts[i]:spaced_starts[i + 1] - 1]
        self.spaced_starts = [start + i for i, start in enumerate(self.starts)]

    def top_chars(self, n: int) -> int:
        """Characters of the most frequent n-gram (words joined by spaces) times its count; 0 if none.

        Ties go to the n-gram seen first, as ``Counter.most_common`` breaks them in datatrove's
        ``find_top_duplicate``.
        """
        if len(self.words) < n:
            return 0
        spaced, starts = self.spaced, self.spaced_starts
        counts = Counter([spaced[a : b - 1] for a, b in zip(starts, starts[n:], strict=False)])
        top, count = counts.most_common(1)[0]
        return len(top) * count

    def duplicated_chars(self, n: int) -> int:
        """Characters in n-grams (words joined without spaces) seen before, without overlaps (datatrove's
        ``find_all_duplicate``: after a repeat the scan jumps n words)."""
        joined, starts = self.joined, self.starts
        grams = [joined[a:b] for a, b in zip(starts, starts[n:], strict=False)]
        if len(set(grams)) == len(grams):  # no n-gram repeats: nothing to scan for
            return 0
        seen: set[str] = set()
        repeated, index = 0, 0
        while index < len(grams):
            gram = grams[index]
            if gram in seen:
                repeated += len(gram)
                index += n
            else:
                seen.add(gram)
                index += 1
        return repeated


class RepetitionFilter(GopherRepetitionFilter):
    """datatrove's ``GopherRepetitionFilter`` with the n-gram statistics above: the same decisions."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        paragraphs = self.paragraph_exp.split(text.strip())
        paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
        if self.dup_para_frac and paragraphs_duplicates / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and char_duplicates / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = self._line_splitter.split(text)
        line_duplicates, char_duplicates = find_duplicates(lines)
        if self.dup_line_frac and line_duplicates / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and char_duplicates / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"
        grams = NGrams(split_into_words(text, self.language))
        for n, n_frac in self.top_n_grams:
            if grams.top_chars(n) / len(text) > n_frac:
                return False, f"top_{n}_gram"
        for n, n_frac in self.dup_n_grams:
            if grams.duplicated_chars(n) / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"
        return True


@functools.lru_cache(maxsize=1 << 16)
def is_symbols(word: str) -> bool:
    """Whether every character of ``word`` is punctuation (datatrove's ``PUNCTUATION_SET``)."""
    return not any(ch not in PUNCTUATION_SET for ch in word)


@functools.lru_cache(maxsize=1 << 16)
def has_letter(word: str) -> bool:
    """Whether ``word`` holds an alphabetic character (``str.isalpha``)."""
    return any(c.isalpha() for c in word)


class QualityFilter(GopherQualityFilter):
    """datatrove's ``GopherQualityFilter`` with each distinct word classified once: the same decisions."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        words = split_into_words(text, self.language)
        n_words = len(words)
        non_symbol_words = [w for w in words if not is_symbols(w)]
        n_non_symbol_words = len(non_symbol_words)
        if self.min_doc_words and n_non_symbol_words < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_non_symbol_words > self.max_doc_words:
            return False, "gopher_long_doc"
        avg_n_words = np.mean([len(w) for w in non_symbol_words])
        if self.min_avg_word_length and avg_n_words < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and avg_n_words > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if (
            self.max_symbol_word_ratio
            and (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio
        ):
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines()
        if (
            self.max_bullet_lines_ratio
            and sum(s.lstrip().startswith("•") or s.lstrip().startswith("-") for s in lines) / len(lines)
            > self.max_bullet_lines_ratio
        ):
            return False, "gopher_too_many_bullets"
        if (
            self.max_ellipsis_lines_ratio
            and sum(s.rstrip().endswith("...") or s.rstrip().endswith("…") for s in lines) / len(lines)
            > self.max_ellipsis_lines_ratio
        ):
            return False, "gopher_too_many_end_ellipsis"
        if (
            self.max_non_alpha_words_ratio
            and sum(map(has_letter, words)) / n_words < self.max_non_alpha_words_ratio
        ):
            return False, "gopher_below_alpha_threshold"
        if self.min_stop_words and len(self.stop_words.intersection(set(words))) < self.min_stop_words:
            return False, "gopher_enough_stop_words"
        return True
