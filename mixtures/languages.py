"""Matching a phase's language names against the languages that have token counts.

Names follow FineWeb2: ``xxx_Script`` (ISO 639-3 code and ISO 15924 script, e.g.
``srp_Cyrl``) names one subset, and a bare ISO 639-3 code (``srp``) names every
script of that language. A name is *known* when it is in the counts or in
datatrove's language table (the GlotLID-style list of 2,177 language-script pairs
that FineWeb2 was built with); anything else is a typo and an error that lists
the near misses. A known language without counts is not an error: a build may
hold only part of the recipe's languages (the demo holds a handful), so the
compiler reports such names and records them in the manifest instead.
"""

from __future__ import annotations

import csv
import difflib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from mixtures.errors import MixtureError

# ISO 639-3 "undetermined": FineWeb2's und_{Script} subsets hold text GlotLID gave no language
UNDETERMINED = "und"
# The label of source code: ISO 639-2 "no linguistic content" (zxx) in ISO 15924 "common" (Zyyy), the
# characters every script shares. Code is no language of any phase's pool: like English, it is the one
# language of a fixed-budget source, and no language ID model knows it.
CODE = "zxx_Zyyy"


@dataclass(frozen=True)
class Selection:
    """The outcome of matching requested names: pool languages, and names that have no counts."""

    languages: tuple[str, ...]
    without_data: tuple[str, ...]


def language_code(name: str) -> str:
    """The ISO 639-3 part of ``xxx_Script``: ``srp_Latn`` -> ``srp`` (the name itself without a script)."""
    return name.split("_", 1)[0]


def selecting_names(label: str) -> tuple[str, ...]:
    """The names that select ``label``: the label itself and its bare ISO 639-3 code, which
    selects every script of the language (``srp`` selects srp_Cyrl and srp_Latn)."""
    code = language_code(label)
    return (label,) if code == label else (label, code)


def every_language(labels: Iterable[str]) -> list[str]:
    """``labels`` without FineWeb2's ``und_*`` subsets: what a phase's ``all`` selects."""
    return [label for label in labels if language_code(label) != UNDETERMINED]


def count_languages(names: Iterable[str]) -> str:
    """How many languages ``xxx_Script`` names cover: ``60 languages (72 language-script subsets)``.

    FineWeb2 splits a language written in several scripts into subsets (``srp_Cyrl``,
    ``srp_Latn``), so the two counts differ; the second is left out where they agree.
    """
    subsets = set(names)
    languages = len({language_code(name) for name in subsets})
    counted = f"{languages:,} language{'s' if languages != 1 else ''}"
    return counted if languages == len(subsets) else f"{counted} ({len(subsets):,} language-script subsets)"


@cache
def language_table() -> dict[str, str]:
    """English names of the known languages, keyed by both ``xxx`` and ``xxx_Script``; code (``CODE``)
    is known too, so that a phase may name it without a build of it."""
    path = files("datatrove") / "assets" / "tokenizer_assignment.csv"
    names: dict[str, str] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            names[f"{row['code_3']}_{row['script']}"] = row["name"]
            names.setdefault(row["code_3"], row["name"])
    names[CODE] = "Code (no linguistic content)"
    return names


def select_languages(
    requested: Sequence[str] | None,
    available: Iterable[str],
    covered: Iterable[str] = (),
    where: str = "languages",
) -> Selection:
    """Resolve requested names against the ``available`` pool languages.

    ``requested=None`` selects every available language (not the ``und_*`` subsets, which are no
    language; name them to take them). ``covered`` are languages
    that other (fixed-budget) sources supply, such as English from DCLM: a name
    matching only those is accepted and adds nothing to the pool. ``where`` says
    where the names came from, for the error message.
    """
    available = set(available)
    if requested is None:
        return Selection(tuple(sorted(every_language(available))), ())
    selected_by: dict[str, list[str]] = defaultdict(list)
    for label in available:
        for name in selecting_names(label):
            selected_by[name].append(label)
    covered = set(covered)
    covered_by = {name for label in covered for name in selecting_names(label)}
    known = language_table()
    selected: set[str] = set()
    without_data: list[str] = []
    unknown: list[str] = []
    for name in dict.fromkeys(requested):
        if name in selected_by:
            selected.update(selected_by[name])
        elif name in covered_by:
            continue
        elif name in known:
            without_data.append(name)
        else:
            unknown.append(name)
    if unknown:
        candidates = sorted({*selected_by, *covered, *known})
        described = []
        for name in unknown:
            near = difflib.get_close_matches(name, candidates, n=4, cutoff=0.6)
            described.append(
                f"{name!r} (near misses: {', '.join(near)})" if near else f"{name!r} (no near misses)"
            )
        raise MixtureError(f"{where}: unknown language names: {'; '.join(described)}")
    return Selection(tuple(sorted(selected)), tuple(without_data))
