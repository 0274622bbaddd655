"""The compiled mixture as terminal tables: languages by share, then totals per source.

With 1,800+ languages only the largest ``top`` and the smallest few are shown:
the head is where the tokens go, the tail is where the epoch cap bites.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mixtures.compiler import MANY_LANGUAGES, Mixture, Target
from mixtures.languages import count_languages, language_code, language_table
from mixtures.recipe import Recipe, format_tokens
from mixtures.sampling import SAMPLERS

SMALLEST_SHOWN = 5


def print_mixture(console: Console, mixture: Mixture, recipe: Recipe, top: int = 20) -> None:
    """Print the languages table (largest first), the per-source totals, and the tokens of the
    languages each phase of ``recipe`` added."""
    if not console.is_terminal:  # logs and pipes: a width that fits the columns instead of rich's 80
        console.width = max(console.width, 120)
    console.print(languages_table(mixture, top))
    console.print(sources_table(mixture))
    console.print(added_in_table(mixture, recipe))


def languages_table(mixture: Mixture, top: int) -> Table:
    """The pool's languages by target tokens: the ``top`` largest, then the smallest few."""
    pool = sorted(
        (t for t in mixture.targets if t.source == mixture.multilingual_source),
        key=lambda t: (-t.target_tokens, t.language),
    )
    capped = sum(t.capped for t in pool)
    epochs = "no epoch cap" if mixture.max_epochs is None else f"epoch cap {mixture.max_epochs:g}"
    sampling = SAMPLERS[mixture.sampler].title.format(temperature=mixture.temperature)
    table = Table(
        title=(
            f"phase {mixture.phase}: {count_languages(t.language for t in pool)}, {sampling}, "
            f"{format_tokens(mixture.multilingual_tokens)} of {format_tokens(mixture.tokens)} tokens, "
            f"{epochs} ({capped} capped)"
        )
    )
    for column in ("#", "language", "name", "available", "target", "pool share", "epochs"):
        if column == "name":
            table.add_column(column, max_width=24, no_wrap=True, overflow="ellipsis")
        else:
            table.add_column(column, justify="left" if column == "language" else "right", no_wrap=True)
    names = language_table()
    shares = mixture.pool_shares()
    shown = list(range(min(top, len(pool))))
    tail = list(range(max(len(shown), len(pool) - SMALLEST_SHOWN), len(pool)))
    for rank in shown + tail:
        if tail and rank == tail[0] and tail[0] > len(shown):
            table.add_row("...", f"{tail[0] - len(shown)} more", "", "", "", "", "")
        target = pool[rank]
        table.add_row(
            str(rank + 1),
            target.language,
            names.get(target.language, names.get(language_code(target.language), "")),
            format_tokens(target.available_tokens),
            format_tokens(target.target_tokens),
            _percent(shares.get(target.language, 0.0)),
            _epochs(target),
        )
    return table


def sources_table(mixture: Mixture) -> Table:
    """Tokens, share of the phase and epochs per source, and their total."""
    table = Table(title=f"phase {mixture.phase}: tokens per source")
    for column in ("source", "streams", "available", "target", "phase share", "epochs"):
        table.add_column(column, justify="left" if column == "source" else "right")
    sources = sorted({t.source for t in mixture.targets})
    for source in sources:
        targets = [t for t in mixture.targets if t.source == source]
        _add_total(table, source, targets, mixture.tokens)
    table.add_section()
    _add_total(table, "total", list(mixture.targets), mixture.tokens)
    return table


def added_in_table(mixture: Mixture, recipe: Recipe) -> Table:
    """Tokens per phase that added the languages (pretrain: high-resource, midtrain: mid, decay: low),
    every source counted: how much of the phase goes to the languages each annealing step brought."""
    table = Table(title=f"phase {mixture.phase}: tokens by the phase that added each language")
    for column in ("added in", "streams", "available", "target", "phase share", "epochs"):
        table.add_column(column, justify="left" if column == "added in" else "right")
    groups: dict[str, list[Target]] = {}
    for target in mixture.targets:
        several = target.language == MANY_LANGUAGES  # a planning stream of a source in many languages
        added = "several" if several else recipe.phase_that_added(target.language) or "no phase"
        groups.setdefault(added, []).append(target)
    for phase in [*recipe.phases, "several", "no phase"]:
        if phase in groups:
            _add_total(table, phase, groups[phase], mixture.tokens)
    return table


def _add_total(table: Table, label: str, targets: list[Target], tokens: int) -> None:
    target = sum(t.target_tokens for t in targets)
    known = all(t.available_tokens is not None for t in targets)
    available = sum(t.available_tokens or 0 for t in targets) if known else None
    table.add_row(
        label,
        str(len(targets)),
        format_tokens(available),
        format_tokens(target),
        _percent(target / tokens),
        f"{target / available:.3g}" if available else "?",
    )


def _percent(share: float) -> str:
    return f"{share * 100:.3g}%"


def _epochs(target: Target) -> str:
    epochs = target.expected_epochs
    if epochs is None:
        return "?"
    return f"{epochs:.3g} capped" if target.capped else f"{epochs:.3g}"
