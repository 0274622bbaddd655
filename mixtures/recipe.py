"""The recipe file: one YAML document describing the three training phases.

Every command reads the same file so that a phase's languages, filters, budgets
and training settings cannot drift apart between the data build, the mixture
compiler and the trainer. Loading validates eagerly and names the offending key.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from mixtures.schedules import CONSTANT_SCHEDULES, DECAYS

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "mmbert.yaml"
# Language ID: trust the source's labels, or run GlotLID or fastText LID-176 (pipeline/lid.py).
LID_BACKENDS = ("trust", "glotlid", "ft176")

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


def format_tokens(count: float | None) -> str:
    """Token amounts the way the recipe writes them: 1.23B, 45.6M, 7.8k (the inverse of parse_tokens)."""
    if count is None:
        return "?"
    for suffix, unit in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(count) >= unit:
            return f"{count / unit:.3g}{suffix}"
    return f"{count:.0f}" if isinstance(count, float) else str(count)


@dataclass(frozen=True)
class SourceSpec:
    """Where a source lives (hub/s3/local URI), which reader format understands it, and what it holds.

    ``format`` names one of the pipeline's reader formats (``pipeline.source_formats``), which the
    build checks. ``language`` is the one language of a single-language source (DCLM,
    Dolmino, arXiv: ``eng_Latn``); ``pool`` marks the multilingual pool that temperature
    sampling splits (FineWeb2), whose languages are the phase's.
    """

    name: str
    format: str
    uri: str
    subsets: tuple[str, ...] = ()
    date: str | None = None
    quality_filters: bool = True  # curated sources (Wikipedia, papers) skip the web-text quality rules
    language: str | None = None
    pool: bool = False


@dataclass(frozen=True)
class ProcessingSpec:
    """Language ID, filtering, dedup and shard settings for a build."""

    lid: str = "trust"
    filter_configs: str | None = "fineweb2"  # FineWeb2's configs shipped with the pipeline, or a directory
    max_document_bytes: int = 4_000_000
    dedup: bool = True
    rehydrate: bool = False
    shard_bytes: int = 512_000_000
    tokenize_batch: int = 1000


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate over one phase, a function of the tokens seen in it (``trainer/schedule.py``).

    - ``warmup_constant``: linear from 0 to ``peak`` over ``warmup_tokens``, then ``peak``;
    - ``constant``: ``peak`` from the first token (no warmup);
    - a decay (a key of ``mixtures.schedules.DECAYS``, such as mmBERT's ``one_minus_sqrt``):
      after the optional warmup, from ``peak`` down to ``final_fraction * peak`` in that
      table's shape.

    The three phases share ``peak``, so pre-training's warmup, the constant
    context extension and the decay form the recipe's one trapezoid.
    """

    schedule: str
    peak: float
    warmup_tokens: int = 0
    final_fraction: float = 0.0  # decays only: the last lr is final_fraction * peak


@dataclass(frozen=True)
class OptimizerSpec:
    """StableAdamW settings (``trainer/optim.py``); weight decay is fully decoupled (scaled by lr / peak)."""

    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 8e-5


@dataclass(frozen=True)
class TrainingSpec:
    """The trainer's settings for one phase.

    ``batch_size`` counts sequences of ``seq_len`` tokens, so an optimizer step
    sees ``batch_size * seq_len`` tokens (packed: documents share rows, none is
    padded). Over the first ``batch_warmup_tokens`` the batch grows linearly from
    ``batch_warmup_min`` sequences to ``batch_size``.
    """

    mask_rate: float
    seq_len: int
    rope_theta_global: float
    rope_theta_local: float
    lr: LRSchedule
    optimizer: OptimizerSpec = OptimizerSpec()
    batch_size: int = 4608
    batch_warmup_min: int = 4608
    batch_warmup_tokens: int = 0

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def scaled(self, factor: float) -> TrainingSpec:
        """The same settings for a phase ``factor`` times as long: token amounts scale, nothing else."""
        return replace(
            self,
            lr=replace(self.lr, warmup_tokens=round(self.lr.warmup_tokens * factor)),
            batch_warmup_tokens=round(self.batch_warmup_tokens * factor),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, as manifests record them (``from_dict`` reads them back)."""
        raw = asdict(self)
        raw["optimizer"]["betas"] = list(self.optimizer.betas)
        return raw

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> TrainingSpec:
        """Parse and check a ``training:`` mapping; RecipeError names the key at fault."""
        return _training(raw, where)


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

    def phase_that_added(self, language: str) -> str | None:
        """The first phase, in the recipe's order, whose languages take ``language`` (``fra_Latn`` or
        ``fra``); None if none does. mmBERT's annealed language learning groups languages so: those
        of pretraining are its high-resource ones, those added in midtraining mid, in the decay low."""
        for spec in self.phases.values():
            if spec.languages is None or _covers(spec.languages, language):
                return spec.name
        return None

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


def _mapping(raw: Any, where: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping, got {raw!r}")
    return raw


def _known_keys(raw: dict, known: Iterable[str], where: str) -> None:
    """Refuse keys the recipe does not define, naming the closest known one (a typo costs hours later)."""
    known = list(known)
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            raise RecipeError(f"{where}: unknown key {key!r} ({hint})")


def _number(raw: dict, key: str, where: str, kind: type = float) -> Any:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or kind(value) != value:
        raise RecipeError(
            f"{where}.{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}"
        )
    return kind(value)


def _amount(raw: dict, key: str, where: str) -> int:
    try:
        return parse_tokens(raw[key])
    except ValueError as err:
        raise RecipeError(f"{where}.{key}: {err}") from err


def _processing(raw: Any, base: ProcessingSpec, where: str) -> ProcessingSpec:
    raw = _mapping(raw, where)
    _known_keys(raw, ProcessingSpec.__dataclass_fields__, where)
    values = {**base.__dict__, **raw}
    if values["lid"] not in LID_BACKENDS:
        raise RecipeError(f"{where}.lid: must be one of {', '.join(LID_BACKENDS)}, got {values['lid']!r}")
    for key in ("max_document_bytes", "shard_bytes", "tokenize_batch"):
        values[key] = _amount(values, key, where)
        if values[key] <= 0:
            raise RecipeError(f"{where}.{key}: must be positive")
    return ProcessingSpec(**values)


def _lr(raw: Any, where: str) -> LRSchedule:
    raw = _mapping(raw, where)
    _known_keys(raw, LRSchedule.__dataclass_fields__, where)
    schedule = _require(raw, "schedule", where)
    schedules = (*CONSTANT_SCHEDULES, *DECAYS)
    if schedule not in schedules:
        close = difflib.get_close_matches(str(schedule), schedules, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose {', '.join(schedules)}"
        raise RecipeError(f"{where}.schedule: unknown schedule {schedule!r} ({hint})")
    _require(raw, "peak", where)
    spec = LRSchedule(
        schedule=schedule,
        peak=_number(raw, "peak", where),
        warmup_tokens=_amount(raw, "warmup_tokens", where) if "warmup_tokens" in raw else 0,
        final_fraction=_number(raw, "final_fraction", where) if "final_fraction" in raw else 0.0,
    )
    if not spec.peak > 0:
        raise RecipeError(f"{where}.peak: must be > 0, got {spec.peak}")
    if schedule == "constant" and spec.warmup_tokens:
        raise RecipeError(f"{where}.warmup_tokens: 'constant' has no warmup; use schedule 'warmup_constant'")
    if spec.final_fraction and schedule not in DECAYS:
        raise RecipeError(f"{where}.final_fraction: only the decays ({', '.join(DECAYS)}) take one")
    if not 0.0 <= spec.final_fraction <= 1.0:
        raise RecipeError(f"{where}.final_fraction: must be in [0, 1], got {spec.final_fraction}")
    return spec


def _optimizer(raw: Any, where: str) -> OptimizerSpec:
    raw = _mapping(raw, where)
    _known_keys(raw, OptimizerSpec.__dataclass_fields__, where)
    spec = OptimizerSpec()
    betas = raw.get("betas", list(spec.betas))
    if not (
        isinstance(betas, (list, tuple))
        and len(betas) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
    ):
        raise RecipeError(f"{where}.betas: expected two numbers such as [0.9, 0.95], got {betas!r}")
    if not all(0.0 <= b < 1.0 for b in betas):
        raise RecipeError(f"{where}.betas: each must be in [0, 1), got {betas}")
    eps = _number(raw, "eps", where) if "eps" in raw else spec.eps
    decay = _number(raw, "weight_decay", where) if "weight_decay" in raw else spec.weight_decay
    if not eps > 0 or decay < 0:
        raise RecipeError(f"{where}: eps must be > 0 and weight_decay >= 0, got {eps} and {decay}")
    return OptimizerSpec(betas=(float(betas[0]), float(betas[1])), eps=eps, weight_decay=decay)


def _training(raw: Any, where: str) -> TrainingSpec:
    raw = _mapping(raw, where)
    _known_keys(raw, TrainingSpec.__dataclass_fields__, where)
    for key in ("mask_rate", "seq_len", "rope_theta_global", "rope_theta_local", "lr"):
        _require(raw, key, where)
    batch_size = _number(raw, "batch_size", where, int) if "batch_size" in raw else 4608
    spec = TrainingSpec(
        mask_rate=_number(raw, "mask_rate", where),
        seq_len=_number(raw, "seq_len", where, int),
        rope_theta_global=_number(raw, "rope_theta_global", where),
        rope_theta_local=_number(raw, "rope_theta_local", where),
        lr=_lr(raw["lr"], f"{where}.lr"),
        optimizer=_optimizer(raw.get("optimizer"), f"{where}.optimizer"),
        batch_size=batch_size,
        batch_warmup_min=_number(raw, "batch_warmup_min", where, int)
        if "batch_warmup_min" in raw
        else batch_size,
        batch_warmup_tokens=_amount(raw, "batch_warmup_tokens", where) if "batch_warmup_tokens" in raw else 0,
    )
    if not 0.0 < spec.mask_rate < 1.0:
        raise RecipeError(f"{where}.mask_rate: must be in (0, 1), got {spec.mask_rate}")
    for key in ("seq_len", "batch_size", "batch_warmup_min"):
        if getattr(spec, key) < 1:
            raise RecipeError(f"{where}.{key}: must be >= 1, got {getattr(spec, key)}")
    if spec.batch_warmup_min > spec.batch_size:
        raise RecipeError(
            f"{where}.batch_warmup_min: {spec.batch_warmup_min} exceeds batch_size {spec.batch_size}"
        )
    if min(spec.rope_theta_global, spec.rope_theta_local) <= 0:
        raise RecipeError(f"{where}: RoPE thetas must be > 0")
    return spec


def _shared_training(raw: Any, where: str) -> dict:
    """The recipe-wide ``training:`` keys, checked here so that a typo is reported where it is."""
    raw = _mapping(raw, where)
    _known_keys(raw, TrainingSpec.__dataclass_fields__, where)
    if "lr" in raw:
        _lr(raw["lr"], f"{where}.lr")
    if "optimizer" in raw:
        _optimizer(raw["optimizer"], f"{where}.optimizer")
    return raw


_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _source(name: str, raw: Any, where: str) -> SourceSpec:
    if not isinstance(name, str) or not _SOURCE_NAME.match(name):
        # the name is a directory of every build (OUTPUT/PHASE/SOURCE/LANGUAGE) and a stats label part
        raise RecipeError(
            f"{where}: a source name is lower-case letters, digits, '-' and '_' (one directory name), "
            f"got {name!r}"
        )
    raw = _mapping(raw, where)
    _known_keys(raw, ("format", "uri", "subsets", "date", "quality_filters", "language", "pool"), where)
    fmt = _require(raw, "format", where)
    if not isinstance(fmt, str) or not fmt:
        raise RecipeError(f"{where}.format: expected the name of a reader format such as dclm, got {fmt!r}")
    language = raw.get("language")
    if language is not None and not isinstance(language, str):
        raise RecipeError(f"{where}.language: expected a label such as eng_Latn, got {language!r}")
    pool = raw.get("pool", False)
    if not isinstance(pool, bool):
        raise RecipeError(f"{where}.pool: expected true or false, got {pool!r}")
    return SourceSpec(
        name=name,
        format=fmt,
        uri=str(_require(raw, "uri", where)).rstrip("/"),
        subsets=tuple(raw.get("subsets", ())),
        date=str(raw["date"]) if "date" in raw else None,
        quality_filters=bool(raw.get("quality_filters", True)),
        language=language,
        pool=pool,
    )


_TOP_KEYS = ("name", "tokenizer", "sources", "processing", "training", "phases")
_PHASE_KEYS = (
    "description",
    "temperature",
    "tokens",
    "languages",
    "max_epochs",
    "budgets",
    "training",
    "processing",
)


def _phase(name: str, raw: Any, recipe: dict, where: str) -> PhaseSpec:
    raw = _mapping(raw, where)
    _known_keys(raw, _PHASE_KEYS, where)
    languages = _require(raw, "languages", where)
    if languages == "all":
        languages = None
    elif isinstance(languages, list) and languages:
        languages = tuple(str(lang) for lang in languages)
    else:
        raise RecipeError(f"{where}.languages: must be a non-empty list or 'all'")
    budgets = {}
    for source, amount in _mapping(raw.get("budgets"), f"{where}.budgets").items():
        if source not in recipe["sources"]:
            raise RecipeError(
                f"{where}.budgets: unknown source {source!r} (sources: {', '.join(recipe['sources'])})"
            )
        budgets[source] = _amount({source: amount}, source, f"{where}.budgets")
    _require(raw, "temperature", where)
    temperature = _number(raw, "temperature", where)
    tokens = _amount({"tokens": _require(raw, "tokens", where)}, "tokens", where)
    if not temperature > 0:
        raise RecipeError(f"{where}.temperature: must be > 0, got {temperature}")
    # A phase's training keys override the recipe-wide ones, key by key.
    training = {**recipe["training"], **_mapping(_require(raw, "training", where), f"{where}.training")}
    return PhaseSpec(
        name=name,
        temperature=temperature,
        tokens=tokens,
        languages=languages,
        budgets=budgets,
        training=_training(training, f"{where}.training"),
        processing=_processing(raw.get("processing"), recipe["processing"], f"{where}.processing"),
        max_epochs=_number(raw, "max_epochs", where) if raw.get("max_epochs") is not None else None,
        description=str(raw.get("description", "")),
    )


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read and validate a recipe file (the bundled mmBERT recipe by default).

    Every problem is a RecipeError naming the file and key path, such as
    ``phases.decay.training.lr.schedule``; unknown keys at any level are errors.
    """
    path = Path(path) if path else DEFAULT_RECIPE
    try:
        raw_bytes = path.read_bytes()
    except OSError as err:
        raise RecipeError(f"cannot read recipe {path}: {err}") from err
    try:
        raw = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as err:  # one line: what is wrong, and where (PyYAML's mark counts from 0)
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{path}: invalid YAML: {at}{problem}") from err
    where = str(path)
    raw = _mapping(raw, where)
    _known_keys(raw, _TOP_KEYS, where)
    sources = {
        name: _source(name, spec, f"{where}: sources.{name}")
        for name, spec in _mapping(_require(raw, "sources", where), f"{where}: sources").items()
    }
    shared = {
        "sources": sources,
        "processing": _processing(raw.get("processing"), ProcessingSpec(), f"{where}: processing"),
        "training": _shared_training(raw.get("training"), f"{where}: training"),
    }
    phases = {
        name: _phase(name, spec, shared, f"{where}: phases.{name}")
        for name, spec in _mapping(_require(raw, "phases", where), f"{where}: phases").items()
    }
    return Recipe(
        name=str(raw.get("name", path.stem)),
        path=path,
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        tokenizer=str(_require(raw, "tokenizer", where)),
        sources=sources,
        phases=phases,
    )


def _covers(listed: tuple[str, ...], language: str) -> bool:
    """Whether a phase's list of languages takes ``language``: as it is, by its code (``srp`` takes
    ``srp_Latn``), or, for a bare code, by one of its scripts (``srp_Latn`` takes part of ``srp``)."""
    code = language.split("_")[0]
    if language in listed or code in listed:
        return True
    return "_" not in language and any(entry.split("_")[0] == code for entry in listed)
