"""Masked-LM evaluation on a build's held-out documents: loss and accuracy per language, every model
scored on the same tokens.

The documents. A build sets aside a few documents of every (source, language) stream, never trained
on (``pipeline/heldout.py``), and lists them in its ``stats.json``. Each stream's documents are taken
in the build's order (its held-out shards as listed, rows in file order) for as long as their tokens
stay within ``max_tokens_per_language`` (the first document always, so every stream has a figure;
0: all of them). Documents longer than ``seq_len`` are cut into pieces as training cuts them
(``trainer.data.piece_lengths``), and the pieces are packed, in order, into batches of at most
``batch_tokens`` tokens.

The mask. Each document's positions are chosen by the training's own rule
(``trainer.masking.choose_positions``: ``round(rate * maskable)`` of its non-special tokens,
uniformly) with a generator seeded by ``sha256(seed, document id)``, and every chosen token becomes
``<mask>``. The choice depends on the document alone, not on the model, the batch, ``seq_len`` or the
other documents, so two models (or one model at two steps) are scored on exactly the same tokens.
No 80/10/10 here: a token left as it is would be copied rather than predicted, and a random one
only adds noise to the context, so the loss measures prediction from context alone. It is
therefore not the training loss (which has those 20%), and a fixed rate (0.15 by default, whatever
the phase trained with) keeps the phases comparable.

The figures. Per stream: the mean cross-entropy (nats) over its predicted positions and the share
whose argmax is the original token, with the positions, documents and tokens behind them. Streams
are grouped by the recipe phase that added their language (``Recipe.phase_that_added``): the
first three phases' languages are mmBERT's high-, mid- and low-resource ones. A group's figure is
the mean over its languages (each counts once, so a large language does not hide the small ones);
``overall`` is the mean over every predicted token.

The models run in eval mode (no dropout) under ``torch.no_grad``: exact per-document attention on
the CPU, bf16 autocast on a GPU as in training. Under several processes each takes every N-th batch
and the sums are reduced, so a sharded (FSDP2) model evaluates as it trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from rich.table import Table

from mixtures.counts import read_stats
from mixtures.errors import MixtureError
from mixtures.files import write_atomic
from mixtures.formats import TokenizerRecord, expected_metadata
from mixtures.manifest import Manifest, ShardEntry
from mixtures.recipe import Recipe, RecipeError, format_tokens, load_recipe
from mixtures.storage import cached_path, is_remote
from trainer.checkpoint import read_init
from trainer.config import ConfigError, TrainConfig
from trainer.data import DataError, ShardFile, fetch_shard, piece_lengths, shard_cache
from trainer.distributed import Dist, all_reduce_sum
from trainer.masking import Masking, choose_positions
from trainer.metrics import cannot_write
from trainer.model import IGNORE_INDEX, ModernBertMLM
from trainer.overrides import flag

EVAL_FORMAT = "mmbert-train/eval"
EVAL_VERSION = 1
EVAL_NAME = "eval.json"  # a run's end-of-phase evaluation, beside metrics.jsonl
TIERS = ("high", "mid", "low")  # the languages the recipe's first three phases add: mmBERT's resource levels
OTHER = "other"  # the group of a language no phase of the recipe names
PHASE_SAMPLE_TOKENS = 20_000  # held-out tokens per language a training run evaluates on: seconds, not minutes
T = TypeVar("T")


class EvalError(ValueError):
    """A model, build or option that cannot be evaluated; the message says why in one line."""


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """How the held-out documents are masked, cut and batched: each a flag of ``mmbert-train eval``."""

    mask_rate: float = flag("Share of each document's non-special tokens masked (all as <mask>).", 0.15)
    seed: int = flag("Seed of the mask positions, drawn per document from (seed, document id).", 0)
    seq_len: int = flag(
        "Longer documents are cut into pieces of this many tokens, as training cuts them.", 1024
    )
    batch_tokens: int = flag("Tokens per packed batch.", 16384)
    max_tokens_per_language: int = flag(
        "Held-out tokens per language at most (k/M suffixes; 0: all), whole documents in the build's order.",
        200_000,
    )

    def check(self) -> None:
        """EvalError naming the flag of the first value that cannot be used."""
        if not 0.0 < self.mask_rate < 1.0:
            raise EvalError(f"--mask-rate {self.mask_rate}: must be between 0 and 1")
        if self.seed < 0:
            raise EvalError(f"--seed {self.seed}: must be >= 0")
        if self.seq_len < 1:
            raise EvalError(f"--seq-len {self.seq_len}: must be >= 1")
        if self.batch_tokens < self.seq_len:
            raise EvalError(f"--batch-tokens {self.batch_tokens}: must be at least --seq-len {self.seq_len}")
        if self.max_tokens_per_language < 0:
            raise EvalError(f"--max-tokens-per-language {self.max_tokens_per_language}: must be >= 0")


@dataclass(frozen=True)
class HeldOutStream:
    """The documents of one (source, language) stream taken for evaluation: the first ``len(lengths)``
    of its held-out shards ``shards``, in order."""

    source: str
    language: str
    shards: tuple[ShardEntry, ...]
    lengths: tuple[int, ...]  # tokens of each document taken

    @property
    def name(self) -> str:
        return f"{self.source}/{self.language}"


@dataclass(frozen=True)
class HeldOut:
    """What every model is evaluated on: a build's held-out documents, chosen and masked as the
    module docstring says. Shards are opened while they are read, a few at a time."""

    build: Path | str  # the phase directory holding stats.json (a str: its URL)
    phase: str
    tokenizer: TokenizerRecord
    options: EvalOptions
    streams: tuple[HeldOutStream, ...]
    cache_dir: Path | None = None  # where a remote build's shards are fetched (see `shard_cache`)

    @property
    def masking(self) -> Masking:
        special = self.tokenizer.special_ids
        return Masking(
            self.options.mask_rate, special["mask"], tuple(special.values()), self.tokenizer.vocab_size
        )

    def open(self, stream: HeldOutStream, entry: ShardEntry) -> ShardFile:
        """A held-out shard, its structure checked as training checks its shards (DataError if damaged);
        a remote build's, fetched into the cache on first use."""
        tokenizer = self.tokenizer
        expected = expected_metadata(
            tokenizer.name, tokenizer.sha256, stream.source, stream.language, self.phase
        )
        root = self.build
        if isinstance(root, str):
            cache = shard_cache(self.cache_dir)
            fetch_shard(root, entry, cache)
            root = cached_path(root, cache)
        return ShardFile(root, entry, expected, tokenizer.vocab_size)


def phase_directory(path: str | Path) -> Path | str:
    """The build phase directory ``--data`` names: ``OUTPUT/PHASE``, or ``OUTPUT`` holding one phase
    (a URL: as given, the phase's)."""
    if is_remote(path):
        return str(path)
    path = Path(path)
    phases = sorted(found.parent for found in path.glob("*/stats.json"))
    if not (path / "stats.json").exists() and len(phases) == 1:
        return phases[0]
    return path  # read_stats names what is wrong: no stats.json, or several phases to choose from


def read_heldout(
    build: str | Path,
    options: EvalOptions,
    streams: Iterable[tuple[str, str]] | None = None,
    cache_dir: str | Path | None = None,
) -> HeldOut:
    """The held-out documents of ``build`` (a phase directory, see :func:`phase_directory`, or its
    ``s3://``/``hf://`` URL, whose shards are fetched into ``cache_dir``), of the (source, language)
    ``streams`` if given; EvalError when the build holds none."""
    options.check()
    try:
        counts = read_stats(phase_directory(build))
    except MixtureError as err:
        raise EvalError(str(err)) from err
    tokenizer = TokenizerRecord(**counts.tokenizer)
    if tokenizer.vocab_size is None or None in (tokenizer.special_ids or {None: None}).values():
        raise EvalError(
            f"{counts.data_root}: stats.json records no vocab_size or special ids of the tokenizer"
        )
    wanted = None if streams is None else set(streams)
    chosen = [
        stream
        for stream in counts.streams
        if stream.heldout and (wanted is None or (stream.source, stream.language) in wanted)
    ]
    if not chosen:
        among = "" if wanted is None else " for these languages"
        raise EvalError(
            f"{counts.data_root}: no held-out documents{among} (a build made before builds held data out, or "
            "streams too small to spare one); build the phase again to evaluate on it"
        )
    cache = None if cache_dir is None else Path(cache_dir)
    heldout = HeldOut(counts.data_root, counts.phase, tokenizer, options, (), cache)
    taken = tuple(_take(heldout, stream.source, stream.language, stream.heldout) for stream in chosen)
    return dataclasses.replace(heldout, streams=taken)


def _take(heldout: HeldOut, source: str, language: str, entries: Sequence[dict[str, Any]]) -> HeldOutStream:
    """A stream's documents in order while their tokens stay within the bound (the first one always)."""
    bound = heldout.options.max_tokens_per_language
    shards = tuple(ShardEntry(*(entry.get(key) for key in ShardEntry._fields)) for entry in entries)
    stream = HeldOutStream(source, language, shards, ())
    lengths: list[int] = []
    used: list[ShardEntry] = []
    total = 0
    for entry in shards:
        used.append(entry)
        for length in heldout.open(stream, entry).lengths.tolist():
            if bound and lengths and total + length > bound:
                return HeldOutStream(source, language, tuple(used), tuple(lengths))
            lengths.append(length)
            total += length
    return HeldOutStream(source, language, tuple(used), tuple(lengths))


def mask_document(
    input_ids: np.ndarray, masking: Masking, seed: int, document_id: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)`` of one document ``[n]`` (int64 each): the positions drawn from
    ``(seed, document_id)`` hold ``<mask>`` in ``inputs`` and the original id in ``labels``
    (``IGNORE_INDEX`` elsewhere)."""
    digest = hashlib.sha256(f"{seed}/{document_id}".encode()).digest()
    chosen = choose_positions(
        input_ids, masking, np.random.default_rng(int.from_bytes(digest[:16], "little"))
    )
    inputs = input_ids.astype(np.int64)
    labels = np.full(inputs.shape, IGNORE_INDEX, dtype=np.int64)
    labels[chosen] = inputs[chosen]
    inputs[chosen] = masking.mask_id
    return inputs, labels


class Piece(NamedTuple):
    """One sequence the model sees: a piece of a masked document of stream ``stream``."""

    stream: int
    inputs: np.ndarray
    labels: np.ndarray


class EvalBatch(NamedTuple):
    """Pieces back to back, as ``ModernBertMLM.forward`` takes them, and the stream of each label."""

    input_ids: torch.Tensor  # [T] int64
    labels: torch.Tensor  # [T] int64, IGNORE_INDEX where nothing is predicted
    cu_seqlens: torch.Tensor  # [pieces + 1] int32
    max_seqlen: int
    streams: torch.Tensor  # [predictions] int64: the stream of each label, in position order


def pieces(heldout: HeldOut) -> Iterator[Piece]:
    """Every taken document, masked and cut into pieces, stream after stream."""
    masking, options = heldout.masking, heldout.options
    for index, stream in enumerate(heldout.streams):
        left = len(stream.lengths)
        for entry in stream.shards:
            shard = heldout.open(stream, entry)
            for row in range(min(left, len(shard.lengths))):
                ids = shard.tokens(row, 0, int(shard.lengths[row]))
                inputs, labels = mask_document(ids, masking, options.seed, shard.document_id(row))
                start = 0
                for length in piece_lengths(len(ids), options.seq_len):
                    yield Piece(index, inputs[start : start + length], labels[start : start + length])
                    start += length
            left -= min(left, len(shard.lengths))


def in_order(items: Iterable[T], length: Callable[[T], int], capacity: int) -> Iterator[list[T]]:
    """Consecutive ``items`` grouped into lists of at most ``capacity`` tokens (no item is longer)."""
    group: list[T] = []
    used = 0
    for item in items:
        size = length(item)
        if group and used + size > capacity:
            yield group
            group, used = [], 0
        group.append(item)
        used += size
    if group:
        yield group


def batch_count(heldout: HeldOut) -> int:
    """How many batches :func:`batches` yields, from the documents' lengths alone."""
    seq_len = heldout.options.seq_len
    lengths = (piece for s in heldout.streams for n in s.lengths for piece in piece_lengths(n, seq_len))
    return sum(1 for _ in in_order(lengths, int, heldout.options.batch_tokens))


def batches(heldout: HeldOut) -> Iterator[EvalBatch]:
    """The masked pieces packed in order into batches of at most ``batch_tokens`` tokens."""
    for group in in_order(pieces(heldout), lambda piece: len(piece.inputs), heldout.options.batch_tokens):
        yield packed(group)


def packed(group: Sequence[Piece]) -> EvalBatch:
    lengths = [len(piece.inputs) for piece in group]
    cu_seqlens = np.zeros(len(group) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu_seqlens[1:])
    streams = [np.full(int((piece.labels != IGNORE_INDEX).sum()), piece.stream) for piece in group]
    return EvalBatch(
        torch.from_numpy(np.concatenate([piece.inputs for piece in group])),
        torch.from_numpy(np.concatenate([piece.labels for piece in group])),
        torch.from_numpy(cu_seqlens),
        max(lengths),
        torch.from_numpy(np.concatenate(streams).astype(np.int64)),
    )


@dataclass(frozen=True)
class Score:
    """One stream's figures for one model; loss and accuracy are None without a predicted position."""

    loss: float | None  # mean cross-entropy over the predicted positions, nats
    accuracy: float | None  # share of them whose argmax is the original token
    predictions: int


@torch.no_grad()
def evaluate(
    model: ModernBertMLM, heldout: HeldOut, dist: Dist | None = None, dtype: torch.dtype | None = None
) -> list[Score]:
    """Each stream's :class:`Score` (in ``heldout.streams`` order) for ``model``, in eval mode (its
    mode is restored after). Under several processes (``dist``) every rank calls this together; each
    runs every N-th batch, and one collective sums the figures, so all return the same.
    ``dtype``: the autocast dtype (bf16 as in training), None for the model's own (fp32)."""
    device = next(model.parameters()).device
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    # per stream: summed cross-entropy, correct argmaxes, predicted positions (float64: exact counts)
    loss, correct, predictions = torch.zeros(3, len(heldout.streams), dtype=torch.float64, device=device)

    def forward(batch: EvalBatch) -> None:
        input_ids, labels, cu_seqlens, streams = (batch[i].to(device) for i in (0, 1, 2, 4))
        with autocast:
            logits = model(input_ids, cu_seqlens, batch.max_seqlen, labels).logits.float()
        targets = labels[labels != IGNORE_INDEX]
        loss.index_add_(0, streams, F.cross_entropy(logits, targets, reduction="none").double())
        correct.index_add_(0, streams, (logits.argmax(-1) == targets).double())
        predictions.index_add_(0, streams, torch.ones_like(streams, dtype=torch.float64))

    was_training = model.training
    model.eval()
    try:
        done = 0
        for index, batch in enumerate(batches(heldout)):
            if index % world == rank:
                forward(batch)
                done += 1
        if world > 1:  # every rank runs as many forwards (FSDP2 gathers weights in each): one pad token
            pad = heldout.tokenizer.special_ids["pad"]
            idle = EvalBatch(
                torch.tensor([pad]),
                torch.tensor([IGNORE_INDEX]),
                torch.tensor([0, 1], dtype=torch.int32),
                1,
                torch.zeros(0, dtype=torch.long),
            )
            for _ in range(-(-batch_count(heldout) // world) - done):
                forward(idle)
    finally:
        model.train(was_training)
    sums = torch.cat([loss, correct, predictions]).tolist()
    if world > 1:
        sums = all_reduce_sum(sums, dist)
    count = len(heldout.streams)
    scores = []
    for index in range(count):
        total, right, made = sums[index], sums[count + index], int(sums[2 * count + index])
        scores.append(Score(total / made if made else None, right / made if made else None, made))
    return scores


@dataclass(frozen=True)
class Group:
    """Languages grouped by the recipe phase that added them: ``key`` as metrics name it (``high``),
    ``label`` as tables show it (``high (pretrain)``), ``order`` the phase's place in the recipe."""

    key: str
    label: str
    order: int


def language_group(recipe: Recipe, language: str) -> Group:
    """The group of ``language``: the phase that added it, with its resource level for the first
    three phases (``high (pretrain)``, ``mid (midtrain)``, ``low (decay)``), by name after them;
    ``other`` for a language no phase names."""
    phase = recipe.phase_that_added(language)
    if phase is None:
        return Group(OTHER, f"{OTHER} (in no phase)", len(recipe.phases))
    order = list(recipe.phases).index(phase)
    if order >= len(TIERS):
        return Group(phase, phase, order)
    return Group(TIERS[order], f"{TIERS[order]} ({phase})", order)


def read_model(
    path: str | Path, tokenizer: TokenizerRecord, build: Path
) -> tuple[ModernBertMLM, str, str | None]:
    """``(model, where, note)`` for a MODEL argument: the model (CPU, fp32), the directory or weights
    file it came from, and a note when it records no tokenizer.

    Refused in one line (CheckpointError, EvalError) unless it reads the build's ids as the build
    means them: its vocabulary holds them, its special ids are the build's, and the tokenizer its
    data was made with (recorded by a checkpoint or a merge) is the build's.
    """
    source = read_init(path, flag="model", optimizer=False)
    config, recorded = source.config, source.tokenizer
    if recorded is not None and recorded.get("sha256") != tokenizer.sha256:
        raise EvalError(
            f"model {path} was trained on data tokenized with {recorded.get('name')}, the build {build} "
            f"with {tokenizer.name} (another tokenizer.json); evaluate it on a build of its tokenizer"
        )
    if config.vocab_size < tokenizer.vocab_size:
        raise EvalError(
            f"model {path}: its vocabulary of {config.vocab_size} does not hold the build's "
            f"{tokenizer.vocab_size} tokens ({tokenizer.name})"
        )
    wrong = [
        f"{role} {getattr(config, f'{role}_token_id')} (build: {token_id})"
        for role, token_id in tokenizer.special_ids.items()
        if getattr(config, f"{role}_token_id") != token_id
    ]
    if wrong:
        raise EvalError(f"model {path}: special ids differ from the build's tokenizer: {', '.join(wrong)}")
    model = ModernBertMLM(config)
    model.load_weights(source.weights, where=source.where)
    note = None
    if recorded is None:
        note = (
            f"note: model {path} records no tokenizer; its vocabulary and special ids fit the build's, "
            f"so it is taken to use {tokenizer.name}"
        )
    return model, source.where, note


def model_entry(
    name: str, path: str, where: str, heldout: HeldOut, groups: Sequence[Group], scores: Sequence[Score]
) -> dict[str, Any]:
    """One model's part of the report: its column ``name``, the MODEL ``path`` as given and the
    directory ``where`` it was read; its figures per language, per group (the mean over its
    languages), overall (the mean over every predicted token), and its best and worst language."""
    rows = [
        (stream.name, group.key, score)
        for stream, group, score in zip(heldout.streams, groups, scores, strict=True)
        if score.predictions
    ]
    by_group = {}
    for key in dict.fromkeys(group.key for group in groups):
        members = [score for _, group, score in rows if group == key]
        by_group[key] = {
            "loss": _mean([score.loss for score in members]),
            "accuracy": _mean([score.accuracy for score in members]),
            "languages": len(members),
        }
    made = sum(score.predictions for _, _, score in rows)
    overall = {
        "loss": math.fsum(score.loss * score.predictions for _, _, score in rows) / made if made else None,
        "accuracy": math.fsum(score.accuracy * score.predictions for _, _, score in rows) / made
        if made
        else None,
        "predictions": made,
    }
    ranked = sorted(rows, key=lambda row: (row[2].loss, row[0]))
    return {
        "name": name,
        "model": path,
        "where": where,
        "overall": overall,
        "groups": by_group,
        "best": _named(ranked[0]) if ranked else None,
        "worst": _named(ranked[-1]) if ranked else None,
        "languages": {
            stream.name: asdict(score) for stream, score in zip(heldout.streams, scores, strict=True)
        },
    }


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _named(row: tuple[str, str, Score]) -> dict[str, Any]:
    return {"language": row[0], "loss": row[2].loss, "accuracy": row[2].accuracy}


def report(heldout: HeldOut, groups: Sequence[Group], models: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation as ``--json`` writes it (and ``eval.json``): what was evaluated, how, and each
    model's figures (:func:`model_entry`); the table and the plot are drawn from it alone."""
    return {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        "build": str(heldout.build),
        "phase": heldout.phase,
        "tokenizer": heldout.tokenizer.to_dict(),
        **asdict(heldout.options),
        "groups": [
            {"key": group.key, "label": group.label}
            for group in sorted(set(groups), key=lambda group: (group.order, group.key))
        ],
        "languages": {
            stream.name: {
                "source": stream.source,
                "language": stream.language,
                "group": group.key,
                "documents": len(stream.lengths),
                "tokens": sum(stream.lengths),
            }
            for stream, group in zip(heldout.streams, groups, strict=True)
        },
        "models": list(models),
    }


def model_names(paths: Sequence[str]) -> list[str]:
    """Short column names for the models: their directories' names, or the paths as given where two
    share a name."""
    names = [Path(path).name or str(path) for path in paths]
    if len(set(names)) < len(names):
        names = [str(path) for path in paths]
    return [name if names.count(name) == 1 else f"{name} #{i + 1}" for i, name in enumerate(names)]


def evaluate_models(
    paths: Sequence[str],
    build: str | Path,
    options: EvalOptions,
    recipe: Recipe,
    dist: Dist,
    say: Callable[[str], None],
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """``mmbert-train eval``: every model of ``paths`` on the held-out documents of ``build``, one at
    a time on ``dist.device`` (bf16 autocast on a GPU), as one :func:`report`. A remote build's
    shards are fetched into ``cache_dir`` (see :func:`trainer.data.shard_cache`)."""
    heldout = read_heldout(build, options, cache_dir=cache_dir)
    groups = [language_group(recipe, stream.language) for stream in heldout.streams]
    tokens = sum(sum(stream.lengths) for stream in heldout.streams)
    say(
        f"{heldout.build}: {len(heldout.streams)} languages, {format_tokens(tokens)} held-out tokens, "
        f"mask rate {options.mask_rate}, seed {options.seed}"
    )
    dtype = torch.bfloat16 if dist.device.type == "cuda" else None
    entries = []
    for name, path in zip(model_names(paths), paths, strict=True):
        model, where, note = read_model(path, heldout.tokenizer, heldout.build)
        if note:
            say(note)
        scores = evaluate(model.to(dist.device), heldout, dist, dtype)
        entries.append(model_entry(name, str(path), where, heldout, groups, scores))
    return report(heldout, groups, entries)


def eval_table(document: dict[str, Any], top: int = 0) -> Table:
    """The report as a table, a column per model holding loss and accuracy: each group's mean, with
    its ``top`` languages by held-out tokens under it, the overall mean per token, the best and worst
    language (named under its figures)."""
    models, languages = document["models"], document["languages"]
    tokens = sum(language["tokens"] for language in languages.values())
    table = Table(
        title=f"held-out masked-LM loss (nats) and accuracy: {document['build']}, {len(languages)} "
        f"languages, {format_tokens(tokens)} tokens, mask rate {document['mask_rate']}, "
        f"seed {document['seed']}",
        caption="a group's figures are the mean over its languages; "
        "'all' is the mean over every predicted token",
    )
    table.add_column("", no_wrap=True)
    for model in models:
        table.add_column(model["name"], justify="right", overflow="fold", min_width=17)

    def cells(figures: list[dict[str, Any] | None], named: bool = False) -> list[str]:
        out = []
        for entry in figures:
            if entry is None or entry["loss"] is None:
                out.append("-")
                continue
            where = f"\n{entry['language']}" if named else ""
            out.append(f"{entry['loss']:.3f} {100 * entry['accuracy']:4.1f}%{where}")
        return out

    for group in document["groups"]:
        members = [name for name, language in languages.items() if language["group"] == group["key"]]
        table.add_row(
            f"{group['label']}: {len(members)} languages", *cells([m["groups"][group["key"]] for m in models])
        )
        for name in sorted(members, key=lambda name: (-languages[name]["tokens"], name))[:top]:
            table.add_row(f"  {name}", *cells([m["languages"][name] for m in models]))
    table.add_section()
    table.add_row("all, per token", *cells([m["overall"] for m in models]))
    table.add_row("best language", *cells([m["best"] for m in models], named=True))
    table.add_row("worst language", *cells([m["worst"] for m in models], named=True))
    return table


class PhaseEval:
    """The evaluations of a training run, on ``PHASE_SAMPLE_TOKENS`` held-out tokens per language of
    the manifest's build: the group means every ``--eval-every`` tokens (added to that step's
    ``metrics.jsonl`` record), and the whole report once the phase is done (``RUN/eval.json``).

    Every rank takes part (the model may be sharded); rank 0 writes. Evaluating changes nothing
    the run computes (eval mode and no gradients; masks and dropout are seeded by step), and the
    marks are multiples of ``every`` tokens, so a resumed run evaluates where an uninterrupted one does.
    """

    def __init__(self, heldout: HeldOut, groups: Sequence[Group], every: int | None, dist: Dist, dtype):
        self.heldout, self.groups, self.every, self.dist, self.dtype = heldout, groups, every, dist, dtype

    @classmethod
    def for_run(
        cls, config: TrainConfig, manifest: Manifest, dist: Dist, say: Callable[[str], None]
    ) -> PhaseEval | None:
        """The run's evaluations over the languages it trains on; None, with a note, where its build
        holds no held-out data (a ConfigError if ``--eval-every`` asks for them)."""
        streams = [(s.source, s.language) for s in manifest.streams if s.target_tokens > 0]
        options = EvalOptions(max_tokens_per_language=PHASE_SAMPLE_TOKENS)
        try:
            heldout = read_heldout(manifest.data_root, options, streams, config.cache_dir)
        except (EvalError, DataError) as err:
            if config.eval_every_tokens:
                raise ConfigError(f"--eval-every: nothing to evaluate on: {err}") from err
            say(f"note: the phase ends without a held-out evaluation: {err}")
            return None
        recipe_path = manifest.recipe.get("path")
        try:
            recipe = load_recipe(recipe_path)
        except RecipeError:
            say(
                f"note: the manifest's recipe {recipe_path} cannot be read; "
                "its languages are grouped by the default recipe's phases"
            )
            recipe = load_recipe()
        groups = [language_group(recipe, stream.language) for stream in heldout.streams]
        dtype = torch.bfloat16 if config.precision == "bf16" else None
        return cls(heldout, groups, config.eval_every_tokens, dist, dtype)

    def due(self, tokens_before: int, tokens_after: int) -> bool:
        """Whether a step from ``tokens_before`` to ``tokens_after`` passed an ``--eval-every`` mark."""
        return bool(self.every) and tokens_before // self.every < tokens_after // self.every

    def means(self, model: ModernBertMLM) -> dict[str, float | None]:
        """``eval_loss``, ``eval_accuracy`` (per token), per group ``eval_loss_KEY`` and
        ``eval_accuracy_KEY`` (the mean over its languages), and ``eval_seconds`` it took, as
        metrics records hold them (their ``step_time`` leaves the evaluation out)."""
        start = time.perf_counter()
        entry = self._entry(model, "", "", "")
        means = {"eval_loss": entry["overall"]["loss"], "eval_accuracy": entry["overall"]["accuracy"]}
        for key, figures in entry["groups"].items():
            means[f"eval_loss_{key}"], means[f"eval_accuracy_{key}"] = figures["loss"], figures["accuracy"]
        return {**means, "eval_seconds": round(time.perf_counter() - start, 6)}

    def finish(
        self, model: ModernBertMLM, run: Path, saved: Path | None, guard: Callable[[], None] | None, say
    ) -> None:
        """Evaluate the final model (``saved``: its checkpoint) and write ``RUN/eval.json`` (rank 0,
        after ``guard`` says the run is still its own)."""
        entry = self._entry(model, run.name, str(run), str(saved))
        if not self.dist.main:
            return
        if guard is not None:
            guard()
        path = run / EVAL_NAME
        try:
            write_atomic(path, json.dumps(report(self.heldout, self.groups, [entry]), indent=1) + "\n")
        except OSError as err:
            raise cannot_write(
                path, err, f"then evaluate with `mmbert-train eval {run} --data BUILD`"
            ) from err
        groups = ", ".join(
            f"{key} {figures['loss']:.4f}"
            for key, figures in entry["groups"].items()
            if figures["loss"] is not None
        )
        overall = entry["overall"]
        say(
            f"held-out evaluation: loss {overall['loss']:.4f}, accuracy {100 * overall['accuracy']:.1f}% "
            f"over {len(self.heldout.streams)} languages (group means: {groups}); {path}"
        )

    def evaluated(self, run: Path, checkpoint: Path) -> bool:
        """Whether ``RUN/eval.json`` already holds this evaluation of ``checkpoint`` (a finished run's)."""
        try:
            (entry,) = json.loads((run / EVAL_NAME).read_text())["models"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return entry.get("where") == str(checkpoint)

    def _entry(self, model: ModernBertMLM, name: str, path: str, where: str) -> dict[str, Any]:
        scores = evaluate(model, self.heldout, self.dist, self.dtype)
        return model_entry(name, path, where, self.heldout, self.groups, scores)
