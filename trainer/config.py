"""The run configuration: everything a training run does, from its manifest, recipe settings and flags.

The manifest carries the phase's training settings (mask rate, sequence length,
RoPE thetas, LR schedule, batch, optimizer), the seed and the tokenizer; flags
override them for short or differently sized runs. ``--tokens`` scales the
schedule: warmup and batch warmup keep their share of the phase.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from mixtures.formats import SPECIAL_ROLES, TokenizerRecord
from mixtures.manifest import Manifest
from mixtures.recipe import RecipeError, TrainingSpec, parse_tokens
from trainer.attention import BACKENDS
from trainer.model import PRESETS, ModelConfig
from trainer.overrides import Overrides, RunOptions

PRECISIONS = ("fp32", "bf16")
PARALLELS = ("ddp", "fsdp")  # see trainer/parallel.py
DEFAULT_MICRO_BATCH_TOKENS = 8192
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|min|h)\s*$")
_MINUTES = {"s": 1 / 60, "min": 1.0, "h": 60.0}
MIN_STEPS = 2  # a run shorter than this many full batches is a mistake in its flags
CHANGES_RESULT = {"changes_result": True}


class ConfigError(ValueError):
    """Settings a run cannot start with; the message names the file, field or flag."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunOptions):
    """One training run. ``tokens`` is the run's length; ``training`` is already scaled to it.

    The fields marked as changing the result (the run options' own marks, and
    those below) are the ones a resumed run must share with its checkpoint.
    """

    manifest: str
    out: str
    phase: str = field(metadata=CHANGES_RESULT)
    tokens: int = field(metadata=CHANGES_RESULT)
    training: TrainingSpec = field(metadata=CHANGES_RESULT)
    seed: int = field(metadata=CHANGES_RESULT)
    micro_batch_tokens: int = field(default=DEFAULT_MICRO_BATCH_TOKENS, metadata=CHANGES_RESULT)
    save_every_tokens: int | None = None
    save_every_minutes: float | None = 30.0
    eval_every_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["training"] = self.training.to_dict()
        return raw

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """The result-changing settings where ``saved`` (a checkpoint's config) differs from this run."""
        mine = self.to_dict()
        keys = [f.name for f in fields(self) if f.metadata.get("changes_result")]
        old = _flatten({key: saved.get(key) for key in keys})
        new = _flatten({key: mine[key] for key in keys})
        return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in new if old.get(key) != new.get(key)]


def _flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lr": {"peak": 1}}`` -> ``{"lr.peak": 1}``, so a difference names the setting."""
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_save_every(value: str | None) -> tuple[int | None, float | None]:
    """Tokens (``50M``, or a bare number) or a time (``90s``, ``30min``, ``2h``) -> (tokens, minutes)."""
    if value is None:
        return None, 30.0
    match = _DURATION.match(value)
    if match:
        minutes = float(match.group(1)) * _MINUTES[match.group(2)]
        if minutes <= 0:
            raise ConfigError(f"--save-every {value!r}: must be positive")
        return None, minutes
    try:
        tokens = parse_tokens(value)
    except ValueError as err:
        raise ConfigError(
            f"--save-every {value!r}: expected tokens such as 50M or a time such as 30min"
        ) from err
    if tokens <= 0:
        raise ConfigError(f"--save-every {value!r}: must be positive")
    return tokens, None


def _too_short(total: int, training: TrainingSpec) -> str:
    """Why ``total`` tokens make less than ``MIN_STEPS`` steps, and the flag that fixes it."""
    steps = f"{total:,} tokens are {total / training.tokens_per_step:.2g} steps of the phase's batch of "
    steps += f"{training.batch_size} x {training.seq_len} tokens"
    if total >= MIN_STEPS * training.seq_len:  # a smaller batch is enough
        suggested = max(1, total // (100 * training.seq_len))  # about 100 steps, if the run is that long
        steps_then = total / (suggested * training.seq_len)
        return f"{steps}; pass --batch-size (--batch-size {suggested} gives {steps_then:.0f} steps)"
    least = MIN_STEPS * training.seq_len
    return (
        f"{steps}, too few for {MIN_STEPS} steps even at --batch-size 1; pass --tokens {least:,} or more, "
        f"or shorter sequences (--set training.seq_len={max(1, total // MIN_STEPS)})"
    )


def resolve(
    manifest: Manifest, overrides: Overrides = Overrides(), out: str | Path | None = None
) -> TrainConfig:
    """The run's configuration: the manifest's settings with the command line's ``overrides``.

    ``--batch-size`` overrides the batch in sequences; the batch-warmup start keeps
    its ratio to it. ``--set`` keys apply last, as written. ``out`` defaults to
    ``runs/PHASE``.
    """
    if manifest.data_root is None:
        raise ConfigError(
            f"{manifest.path}: compiled for planning (from counts), so it lists no shards to train on"
        )
    # A mistyped choice is named first, before any check of the numbers it would change.
    if overrides.model not in (None, *PRESETS):
        raise ConfigError(f"--model {overrides.model!r}: choose {', '.join(PRESETS)}")
    if overrides.attn_backend not in BACKENDS:
        raise ConfigError(f"--attn {overrides.attn_backend!r}: choose {', '.join(BACKENDS)}")
    if overrides.precision not in (None, *PRECISIONS):
        raise ConfigError(f"--precision {overrides.precision!r}: choose {', '.join(PRECISIONS)}")
    if overrides.parallel not in PARALLELS:
        raise ConfigError(f"--parallel {overrides.parallel!r}: choose {', '.join(PARALLELS)}")
    if overrides.keep is not None and overrides.keep < 1:
        raise ConfigError(f"--keep must be >= 1, got {overrides.keep}")
    if overrides.seed is not None and overrides.seed < 0:
        raise ConfigError(f"--seed must be >= 0 (numpy takes no negative seed), got {overrides.seed}")
    training, total = manifest.training, manifest.sampling.tokens
    if overrides.tokens is not None:
        tokens = _tokens(overrides.tokens)
        training, total = training.scaled(tokens / total), tokens
    if overrides.batch_size is not None:
        batch_size = overrides.batch_size
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        start = max(1, min(batch_size, round(training.batch_warmup_min * batch_size / training.batch_size)))
        training = replace(training, batch_size=batch_size, batch_warmup_min=start)
    if overrides.lr is not None:
        if not overrides.lr > 0:
            raise ConfigError(f"--lr must be positive, got {overrides.lr}")
        training = replace(training, lr=replace(training.lr, peak=overrides.lr))
    training = apply_settings(training, overrides.settings)
    if total < MIN_STEPS * training.tokens_per_step:
        raise ConfigError(_too_short(total, training))
    micro = overrides.micro_batch_tokens or max(DEFAULT_MICRO_BATCH_TOKENS, 2 * training.seq_len)
    if micro < training.seq_len:
        raise ConfigError(f"--micro-batch-tokens {micro} is below the phase's seq_len {training.seq_len}")
    every_tokens, every_minutes = parse_save_every(overrides.save_every)
    eval_every = None if overrides.eval_every is None else _tokens(overrides.eval_every, "--eval-every")
    config = TrainConfig(
        manifest=manifest.location,
        out=str(out or Path("runs") / manifest.phase),
        phase=manifest.phase,
        tokens=total,
        training=training,
        seed=manifest.seed if overrides.seed is None else overrides.seed,
        micro_batch_tokens=micro,
        save_every_tokens=every_tokens,
        save_every_minutes=every_minutes,
        eval_every_tokens=eval_every,
        **{option.name: getattr(overrides, option.name) for option in fields(RunOptions)},
    )
    return config


def _tokens(value: str | int, flag: str = "--tokens") -> int:
    try:
        tokens = parse_tokens(value)
    except ValueError as err:
        raise ConfigError(f"{flag}: {err}") from err
    if tokens <= 0:
        raise ConfigError(f"{flag} must be positive, got {tokens}")
    return tokens


def apply_settings(training: TrainingSpec, settings: tuple[str, ...]) -> TrainingSpec:
    """``training`` with each ``training.KEY=VALUE`` of ``--set`` applied; values are YAML (``1e-3``,
    ``[0.9, 0.98]``, ``2M``), checked as the recipe's keys are, with the closest key for a typo."""
    if not settings:
        return training
    raw = training.to_dict()
    for setting in settings:
        path, sep, value = setting.partition("=")
        keys = path.strip().split(".")
        if not sep or keys[0] != "training" or len(keys) < 2 or not all(keys):
            raise ConfigError(f"--set {setting!r}: expected training.KEY=VALUE, e.g. training.lr.peak=1e-3")
        section = raw
        for depth, key in enumerate(keys[1:-1], start=1):
            if not isinstance(section.get(key, {}), dict):
                inner = ".".join(keys[: depth + 1])
                raise ConfigError(f"--set {setting!r}: {inner} is a value, not a section")
            section = section.setdefault(key, {})
        section[keys[-1]] = _setting_value(setting, value)
    try:
        return TrainingSpec.from_dict(raw, "--set training")
    except RecipeError as err:
        raise ConfigError(str(err)) from err


def _setting_value(setting: str, value: str) -> Any:
    """A ``--set`` value as YAML reads it, except that ``1e-3`` is a number (YAML 1.1 wants ``1.0e-3``)."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {setting!r}: the value is not valid YAML ({err})") from err
    try:
        return float(parsed) if isinstance(parsed, str) else parsed
    except ValueError:
        return parsed  # a name (linear) or a token amount (2M), which the recipe's checks read


def for_device(config: TrainConfig, device: torch.device) -> TrainConfig:
    """The config with its precision settled for ``device``; settings the device cannot run are refused."""
    if device.type != "cuda":
        if config.attn_backend in ("flash", "flex"):
            raise ConfigError(f"--attn {config.attn_backend} needs a CUDA GPU; on the CPU use auto or sdpa")
        if config.compile:
            raise ConfigError("--compile needs a CUDA GPU (on the CPU the per-document attention recompiles)")
    if config.precision is not None:
        return config
    return replace(config, precision="bf16" if device.type == "cuda" else "fp32")


def tokenizer_record(manifest: Manifest) -> TokenizerRecord:
    """The manifest's tokenizer, which must state its vocabulary size and special ids."""
    record = manifest.tokenizer
    special = record.special_ids or {}
    missing = [role for role in SPECIAL_ROLES if special.get(role) is None]
    if record.vocab_size is None or missing:
        raise ConfigError(
            f"{manifest.path}: tokenizer: the build did not record the tokenizer's vocab_size and "
            "special ids "
            f"(missing: {', '.join(['vocab_size'] * (record.vocab_size is None) + missing)}); "
            "rebuild the data with `mmbert-data build` and compile the mixture again"
        )
    return record


def model_config(config: TrainConfig, tokenizer: TokenizerRecord, base: ModelConfig | None) -> ModelConfig:
    """The model of this phase: ``base`` (from ``--init``) or the preset, with the phase's RoPE and length.

    A new model's vocabulary is the tokenizer's, rounded up to a multiple of 64
    (ModernBERT's padding for efficient matmuls), and its special ids are the
    tokenizer's. A model from ``--init`` must already fit the tokenizer.
    """
    training = config.training
    phase = {
        "rope_theta_global": training.rope_theta_global,
        "rope_theta_local": training.rope_theta_local,
        "max_position_embeddings": training.seq_len,
    }
    ids = {f"{role}_token_id": tokenizer.special_ids[role] for role in SPECIAL_ROLES}
    if base is None:
        vocab = -(-tokenizer.vocab_size // 64) * 64
        return ModelConfig.preset(config.model or "base", vocab_size=vocab, **ids, **phase)
    if config.model is not None:
        preset, shape = PRESETS[config.model], ("hidden_size", "intermediate_size", "num_layers", "num_heads")
        if any(getattr(preset, key) != getattr(base, key) for key in shape):
            raise ConfigError(
                f"--init {config.init} is not a {config.model!r} model; leave out --model to use its shape"
            )
    if tokenizer.vocab_size > base.vocab_size:
        raise ConfigError(
            f"--init {config.init}: the model's vocabulary of {base.vocab_size} does not hold "
            f"the tokenizer's {tokenizer.vocab_size} tokens ({tokenizer.name})"
        )
    wrong = [
        f"{key} {getattr(base, key)} (tokenizer: {value})"
        for key, value in ids.items()
        if getattr(base, key) != value
    ]
    if wrong:
        raise ConfigError(
            f"--init {config.init}: special ids differ from the tokenizer's: {', '.join(wrong)}"
        )
    return replace(base, **phase)
