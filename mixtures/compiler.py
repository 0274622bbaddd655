"""Compile one phase of the recipe into token targets per (source, language) stream.

A phase trains on ``tokens`` tokens. The English-web, code and curated sources
get the fixed budgets listed under the phase's ``budgets``; the multilingual
pool (the recipe's source with ``pool: true``, FineWeb2) gets the rest, split over the phase's
languages by the sampler (see ``mixtures.sampling``) under the epoch cap.

- ``--tokens`` overrides the total; each fixed budget is scaled by the same
  ratio (new total / recipe total), so a 10k-token demo keeps the recipe's
  proportions. The multilingual share is the total minus the scaled budgets.
- A fixed budget is split over the languages of its source (e.g. Wikipedia's
  per-wiki streams) in proportion to their available tokens; a source in several
  languages gives only the recipe phase's languages (a decay variant of 110 languages reads a
  build of all of them); ``--languages`` changes the pool only.
- The cap (available tokens x max epochs) holds for every stream: a fixed
  budget its source cannot supply within the cap is an error, as is a pool too
  small for its share; both messages say how much is missing.
- Planning from a CSV has no counts for the fixed sources: each becomes one
  stream without shards in the ``language`` the recipe gives its source
  (``eng_Latn`` for DCLM, Dolmino and arXiv), or ``mul``, ISO 639-2's "multiple
  languages", for a source without one (Wikipedia).
- Streams of sources without a budget in this phase are not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mixtures.counts import Counts, Stream
from mixtures.errors import MixtureError
from mixtures.languages import select_languages, selecting_names
from mixtures.recipe import PhaseSpec, Recipe
from mixtures.sampling import SAMPLERS, capped_allocation, check_temperature

MANY_LANGUAGES = "mul"  # ISO 639-2: the planning stream of a source in several languages


@dataclass(frozen=True)
class Target:
    """What the trainer should draw from one stream."""

    source: str
    language: str
    available_tokens: int | None  # None when planning without counts for a fixed source
    target_tokens: int
    capped: bool
    shards: tuple[dict[str, Any], ...] = ()

    @property
    def expected_epochs(self) -> float | None:
        """How many times the stream's data is seen (None when its size is unknown)."""
        if not self.available_tokens:
            return None
        return self.target_tokens / self.available_tokens


@dataclass(frozen=True)
class Mixture:
    """A compiled phase: resolved settings and one target per stream, sorted by (source, language)."""

    phase: str
    sampler: str
    temperature: float
    tokens: int
    multilingual_source: str
    multilingual_tokens: int
    budgets: dict[str, int]
    max_epochs: float | None
    languages_without_data: tuple[str, ...]
    targets: tuple[Target, ...]

    def weight(self, target: Target) -> float:
        """The stream's share of the phase's tokens (all weights sum to 1)."""
        return target.target_tokens / self.tokens

    def pool_shares(self) -> dict[str, float]:
        """Each pool language's share of the multilingual tokens."""
        return pool_shares(self.targets, self.multilingual_source, self.multilingual_tokens)


def pool_shares(streams: Sequence[Any], source: str | None, tokens: int | None) -> dict[str, float]:
    """Each language's share of the ``tokens`` of the pool ``source``, over a mixture's targets or a
    manifest's streams (both have ``source``, ``language`` and ``target_tokens``)."""
    if not tokens:
        return {}
    return {s.language: s.target_tokens / tokens for s in streams if s.source == source}


def multilingual_source(recipe: Recipe) -> str:
    """The recipe's one source with ``pool: true``: the pool that temperature sampling splits."""
    names = [name for name, source in recipe.sources.items() if source.pool]
    if len(names) != 1:
        raise MixtureError(
            f"{recipe.path}: sources: expected exactly one source with `pool: true`, found {names}"
        )
    return names[0]


def compile_phase(
    recipe: Recipe,
    phase: str,
    counts: Counts,
    *,
    temperature: float | None = None,
    tokens: int | None = None,
    max_epochs: float | None = None,
    sampler: str = "temperature",
    languages: Sequence[str] | None = None,
    languages_from: str = "--languages",
) -> Mixture:
    """Targets for every stream of ``phase``; keyword arguments override the recipe (None keeps it).

    ``languages`` replaces the phase's language list (``languages_from`` names
    where it came from, for error messages).
    """
    spec = recipe.phase(phase)
    temperature = spec.temperature if temperature is None else temperature
    total = spec.tokens if tokens is None else tokens
    max_epochs = spec.max_epochs if max_epochs is None else max_epochs
    if sampler not in SAMPLERS:
        raise MixtureError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    check_temperature(temperature)
    if total <= 0:
        raise MixtureError(f"phase {phase}: tokens must be > 0, got {total}")
    if max_epochs is not None and not max_epochs > 0:
        raise MixtureError(f"max epochs must be > 0, got {max_epochs}")
    if max_epochs == math.inf:
        max_epochs = None
    budgets = scaled_budgets(spec, total)
    multilingual = total - sum(budgets.values())
    if multilingual < 0:
        raise MixtureError(f"phase {phase}: fixed budgets {budgets} exceed the phase's {total:,} tokens")

    pool_source = multilingual_source(recipe)
    pool = {stream.language: stream for stream in counts.streams if stream.source == pool_source}
    fixed_streams = {
        source: sorted((s for s in counts.streams if s.source == source), key=lambda s: s.language)
        for source in budgets
    }
    planning = counts.data_root is None
    if planning:
        fixed_streams = {
            source: [Stream(source, recipe.sources[source].language or MANY_LANGUAGES, 0)]
            for source in budgets
        }
    if spec.languages is not None and not planning:  # a multilingual fixed source: the phase's languages
        wanted = set(spec.languages)
        for source in budgets:
            if recipe.sources[source].language is None:
                fixed_streams[source] = [
                    s for s in fixed_streams[source] if wanted.intersection(selecting_names(s.language))
                ]
    if languages is None:
        languages, languages_from = spec.languages, f"{recipe.path}: phases.{phase}.languages"
    selection = select_languages(
        languages,
        pool,
        covered=[s.language for streams in fixed_streams.values() for s in streams],
        where=languages_from,
    )
    if multilingual > 0 and not selection.languages:
        raise MixtureError(
            f"phase {phase}: no language of the pool has counts, so its {multilingual:,} tokens have no home"
        )

    try:
        targets = pool_targets(
            [pool[name] for name in selection.languages], multilingual, temperature, max_epochs, sampler
        )
    except MixtureError as err:
        raise MixtureError(
            f"phase {phase}, {pool_source}: {err}; lower --tokens or raise --max-epochs"
        ) from err
    for source, amount in budgets.items():
        try:
            targets += fixed_targets(source, fixed_streams[source], amount, max_epochs, planning)
        except EmptySourceError as err:
            raise MixtureError(f"phase {phase}, {source}: {err}") from err
        except MixtureError as err:
            raise MixtureError(
                f"phase {phase}, {source}: {err}; lower --tokens or raise --max-epochs"
            ) from err
    targets.sort(key=lambda target: (target.source, target.language))
    return Mixture(
        phase=phase,
        sampler=sampler,
        temperature=temperature,
        tokens=total,
        multilingual_source=pool_source,
        multilingual_tokens=multilingual,
        budgets=budgets,
        max_epochs=max_epochs,
        languages_without_data=selection.without_data,
        targets=tuple(targets),
    )


def scaled_budgets(spec: PhaseSpec, total: int) -> dict[str, int]:
    """The phase's fixed budgets, scaled by ``total / spec.tokens`` when the total is overridden."""
    return {source: round(amount * total / spec.tokens) for source, amount in sorted(spec.budgets.items())}


def pool_targets(
    streams: Sequence[Stream], budget: int, temperature: float, max_epochs: float | None, sampler: str
) -> list[Target]:
    """Split the multilingual ``budget`` over the pool's streams with the named sampler (``SAMPLERS``)."""
    if not streams:
        return []
    caps = [None if max_epochs is None else math.floor(s.tokens * max_epochs) for s in streams]
    allocation = SAMPLERS[sampler].allocate(budget, [s.tokens for s in streams], caps, temperature)
    return [
        Target(s.source, s.language, s.tokens, target, capped, s.shards)
        for s, target, capped in zip(streams, allocation.targets, allocation.capped, strict=True)
    ]


class EmptySourceError(MixtureError):
    """A fixed budget for a source the build holds nothing of: more epochs or fewer tokens cannot help."""


def fixed_targets(
    source: str, streams: Sequence[Stream], budget: int, max_epochs: float | None, planning: bool
) -> list[Target]:
    """Split a fixed-budget source's ``budget`` over its languages in proportion to their tokens.

    The same capped allocation as the pool's, with weights proportional to
    size: an even split in epochs, unless rounding meets a cap.
    """
    if planning:
        return [Target(s.source, s.language, None, budget, False) for s in streams]
    if budget > 0 and not any(s.tokens for s in streams):
        raise EmptySourceError(
            f"a budget of {budget:,} tokens but the build statistics hold none of this source; build it "
            "(`mmbert-data build --sources ...`) or set its budget to 0 in the recipe"
        )
    caps = [None if max_epochs is None else math.floor(s.tokens * max_epochs) for s in streams]
    allocation = capped_allocation(budget, [float(s.tokens) for s in streams], caps)
    return [
        Target(s.source, s.language, s.tokens, target, capped, s.shards)
        for s, target, capped in zip(streams, allocation.targets, allocation.capped, strict=True)
    ]
