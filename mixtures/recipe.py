"""The recipe file: one YAML document describing the three training phases.

Every command reads the same file so that a phase's languages, filters, budgets
and training settings cannot drift apart between the data build, the mixture
compiler and the trainer. Loading validates eagerly and names the offending key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "mmbert.yaml"
PHASES = ("pretrain", "midtrain", "decay")
SOURCE_FORMATS = ("fineweb2", "dclm", "dolma", "wikipedia", "arxiv")

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}
_TOKENS_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and key."""


def parse_tokens(value: str | int | float) -> int:
    """Parse a token amount such as ``100B``, ``2.3T``, ``512k`` or ``1e6`` into an int."""
    if isinstance(value, bool):
        raise ValueError(f"not a token amount: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"token amount must be >= 0, got {value}")
        return int(round(value))
    match = _TOKENS_RE.match(str(value))
    if not match:
        raise ValueError(f"not a token amount: {value!r} (use a number with an optional k/M/B/T suffix)")
    number, suffix = match.groups()
    return int(round(float(number) * _SUFFIXES[suffix.lower()]))


@dataclass(frozen=True)
class SourceSpec:
    """Where a source lives (hub/s3/local URI) and which reader understands it."""

    name: str
    format: str
    uri: str
    subsets: tuple[str, ...] = ()
    date: str | None = None
    quality_filters: bool = True  # curated sources (Wikipedia, papers) skip the web-text quality rules


@dataclass(frozen=True)
class ProcessingSpec:
    """Language ID, filtering, dedup and shard settings for a build."""

    lid: str = "trust"
    filter_configs: str | None = None
    max_document_bytes: int = 4_000_000
    dedup: bool = True
    rehydrate: bool = False
    shard_bytes: int = 512_000_000
    tokenize_batch: int = 1000


@dataclass(frozen=True)
class TrainingSpec:
    """The trainer's settings for one phase."""

    mask_rate: float
    seq_len: int
    rope_theta_global: float
    rope_theta_local: float
    lr: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 4608
    batch_warmup_tokens: int = 0


@dataclass(frozen=True)
class PhaseSpec:
    """One training phase: languages, temperature, token budgets, training settings."""

    name: str
    temperature: float
    tokens: int
    languages: tuple[str, ...] | None  # None means every language the sources have
    budgets: dict[str, int]
    training: TrainingSpec
    processing: ProcessingSpec
    max_epochs: float | None = None
    unique_tokens: int | None = None
    description: str = ""


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe file."""

    name: str
    path: Path
    sha256: str
    tokenizer: str
    sources: dict[str, SourceSpec]
    phases: dict[str, PhaseSpec]

    def phase(self, name: str) -> PhaseSpec:
        if name not in self.phases:
            raise RecipeError(f"{self.path}: no phase {name!r} (phases: {', '.join(self.phases)})")
        return self.phases[name]

    def phase_for_temperature(self, temperature: float) -> PhaseSpec:
        """The phase whose sampling temperature is ``temperature`` (as users name phases)."""
        for spec in self.phases.values():
            if abs(spec.temperature - temperature) < 1e-9:
                return spec
        known = ", ".join(f"{p.name}={p.temperature}" for p in self.phases.values())
        raise RecipeError(f"{self.path}: no phase has temperature {temperature} ({known})")


def _require(mapping: dict, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise RecipeError(f"{where}: missing key {key!r}")
    return mapping[key]


def _processing(raw: dict, base: ProcessingSpec, where: str) -> ProcessingSpec:
    known = set(ProcessingSpec.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise RecipeError(f"{where}: unknown processing keys {sorted(unknown)} (known: {sorted(known)})")
    values = {**base.__dict__, **raw}
    if values["lid"] not in ("trust", "glotlid", "ft176"):
        raise RecipeError(f"{where}.lid: must be trust, glotlid or ft176, got {values['lid']!r}")
    for key in ("max_document_bytes", "shard_bytes", "tokenize_batch"):
        values[key] = int(parse_tokens(values[key]))
        if values[key] <= 0:
            raise RecipeError(f"{where}.{key}: must be positive")
    return ProcessingSpec(**values)


def _training(raw: dict, where: str) -> TrainingSpec:
    try:
        lr = dict(raw.get("lr", {}))
        for key in ("warmup_tokens",):
            if key in lr:
                lr[key] = parse_tokens(lr[key])
        spec = TrainingSpec(
            mask_rate=float(_require(raw, "mask_rate", where)),
            seq_len=int(_require(raw, "seq_len", where)),
            rope_theta_global=float(_require(raw, "rope_theta_global", where)),
            rope_theta_local=float(_require(raw, "rope_theta_local", where)),
            lr=lr,
            batch_size=int(raw.get("batch_size", 4608)),
            batch_warmup_tokens=parse_tokens(raw.get("batch_warmup_tokens", 0)),
        )
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where}: {err}") from err
    if not 0.0 < spec.mask_rate < 1.0:
        raise RecipeError(f"{where}.mask_rate: must be in (0, 1), got {spec.mask_rate}")
    return spec


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read and validate a recipe file (the bundled mmBERT recipe by default)."""
    path = Path(path) if path else DEFAULT_RECIPE
    try:
        raw_bytes = path.read_bytes()
    except OSError as err:
        raise RecipeError(f"cannot read recipe {path}: {err}") from err
    try:
        raw = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: invalid YAML: {err}") from err
    where = str(path)
    sources = {}
    for name, spec in (_require(raw, "sources", where) or {}).items():
        fmt = _require(spec, "format", f"{where}: sources.{name}")
        if fmt not in SOURCE_FORMATS:
            raise RecipeError(f"{where}: sources.{name}.format {fmt!r} is not one of {SOURCE_FORMATS}")
        sources[name] = SourceSpec(
            name=name,
            format=fmt,
            uri=str(_require(spec, "uri", f"{where}: sources.{name}")).rstrip("/"),
            subsets=tuple(spec.get("subsets", ())),
            date=str(spec["date"]) if "date" in spec else None,
            quality_filters=bool(spec.get("quality_filters", True)),
        )
    base_processing = _processing(raw.get("processing") or {}, ProcessingSpec(), f"{where}: processing")
    phases = {}
    for name, spec in (_require(raw, "phases", where) or {}).items():
        here = f"{where}: phases.{name}"
        languages = _require(spec, "languages", here)
        if languages == "all":
            languages = None
        elif isinstance(languages, list) and languages:
            languages = tuple(str(lang) for lang in languages)
        else:
            raise RecipeError(f"{here}.languages: must be a non-empty list or 'all'")
        budgets = {}
        for source, amount in (spec.get("budgets") or {}).items():
            if source not in sources:
                raise RecipeError(
                    f"{here}.budgets: unknown source {source!r} (sources: {', '.join(sources)})"
                )
            budgets[source] = parse_tokens(amount)
        try:
            temperature = float(_require(spec, "temperature", here))
            tokens = parse_tokens(_require(spec, "tokens", here))
        except ValueError as err:
            raise RecipeError(f"{here}: {err}") from err
        if not temperature > 0:
            raise RecipeError(f"{here}.temperature: must be > 0, got {temperature}")
        phases[name] = PhaseSpec(
            name=name,
            temperature=temperature,
            tokens=tokens,
            languages=languages,
            budgets=budgets,
            training=_training(_require(spec, "training", here), f"{here}.training"),
            processing=_processing(spec.get("processing") or {}, base_processing, f"{here}.processing"),
            max_epochs=float(spec["max_epochs"]) if spec.get("max_epochs") is not None else None,
            unique_tokens=parse_tokens(spec["unique_tokens"]) if "unique_tokens" in spec else None,
            description=str(spec.get("description", "")),
        )
    return Recipe(
        name=str(raw.get("name", path.stem)),
        path=path,
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        tokenizer=str(_require(raw, "tokenizer", where)),
        sources=sources,
        phases=phases,
    )
