"""Merging encoders: TIES, a weighted average, or an exponential moving average of a run's checkpoints.

mmBERT's released base model is a TIES merge of the best checkpoint of each of its three decay
variants; for small, where TIES failed, an exponential moving average of Decay-All checkpoints was
used instead. ``mmbert-train merge`` does either, and a plain weighted average.

The maths are pure functions on tensors: :func:`ties`, :func:`linear`, :func:`ema`.
:func:`merge_models` applies them to model directories a block of rows at a time: each block is
read with its own ``safe_open`` and copied out, so no input stays mapped (a mapped file's pages
count in the process's memory as they are read), and each merged block is appended to the output's
``model.safetensors``, whose header is written first from the shapes (:func:`write_streamed`). What
is held at once is a few blocks per input and, for TIES, one tensor's magnitudes (to find its top
entries): for the base shape, the 256k x 768 embeddings, 0.79 GB, against 1.23 GB for the model.

The output is a model directory: ``config.json``, ``model.safetensors`` (float32) and
``merge.json`` (the method, its parameters, the inputs, and the tokenizer record of the data they
were trained on, which ``mmbert-train export`` and ``--init`` read as they read a checkpoint's).
It is written under a temporary name beside ``--output`` and renamed once complete.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from mixtures.files import atomic_directory, writing
from trainer.checkpoint import MERGE_NAME, checkpoint_dirs, model_directory, recorded_tokenizer
from trainer.hf import PICKLE_WEIGHTS_NAME, read_config, weight_files
from trainer.model import CONFIG_NAME, TIED_KEY, WEIGHTS_NAME, ModelConfig, ModernBertMLM, write_json_atomic

METHODS = ("ties", "linear", "ema")
MERGE_FORMAT = "mmbert-train/merge"
MERGE_VERSION = 1
DEFAULT_DENSITY = 0.2  # the TIES paper's k = 20%
DEFAULT_LAMBDA = 1.0
DEFAULT_DECAY = 0.9
BLOCK_ELEMENTS = 1 << 22  # entries read at a time from each input: 16 MB of float32
# Each flag's method: a flag given to another method is refused, not ignored.
OWNERS = {"base": "ties", "density": "ties", "lambda": "ties", "weights": "linear", "decay": "ema"}


class MergeError(ValueError):
    """Models or options that cannot be merged; the message names the models or the flag, in one line."""


def trim_threshold(magnitudes: torch.Tensor, density: float) -> float:
    """The k-th largest entry of ``magnitudes`` (float32, contiguous, any shape), k = round(density * n)
    but at least 1: the entries at least this large are TIES's top k (all of them where several tie).

    The buffer is reordered: numpy's partition selects in place, where ``torch.kthvalue`` copies
    the tensor and allocates int64 indices (three times its size: 2.4 GB for the base embeddings).
    """
    flat = magnitudes.view(-1).numpy()
    position = flat.size - max(1, round(density * flat.size))
    flat.partition(position)
    return float(flat[position])


def ties(
    base: torch.Tensor, tensors: Sequence[torch.Tensor], density: float, lam: float = 1.0
) -> torch.Tensor:
    """TIES-Merging (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
    arXiv 2306.01708, Algorithm 1) of one tensor; ``base`` and every tensor of ``tensors`` share a shape:

    1. task vectors: tau_i = theta_i - theta_base;
    2. trim: keep the top ``density`` fraction of each tau_i by magnitude (:func:`trim_threshold`),
       zero the rest;
    3. elect: gamma = sign(sum_i trimmed_i), the sign of the greater total mass, per entry;
    4. disjoint mean: tau = the mean of the trimmed_i that are nonzero and of sign gamma (0 if none);
    5. theta = theta_base + lam * tau.

    The paper's code ranks all of a model's parameters together in step 2; here each tensor keeps
    its own top fraction, so that a merge needs one tensor's magnitudes at a time, not the model's.
    """
    thresholds = [trim_threshold((tensor - base).abs(), density) for tensor in tensors]
    return ties_block(base, tensors, thresholds, lam)


def ties_block(
    base: torch.Tensor, tensors: Sequence[torch.Tensor], thresholds: Sequence[float], lam: float
) -> torch.Tensor:
    """The steps of :func:`ties` on matching blocks of the base and the models, each model's task vector
    trimmed at the threshold of its whole tensor: every step is then per entry, so a tensor merges
    block by block."""
    taus = [tensor - base for tensor in tensors]
    kept = [
        torch.where(tau.abs() >= threshold, tau, 0.0) for tau, threshold in zip(taus, thresholds, strict=True)
    ]
    trimmed = torch.stack(kept)
    elected = trimmed.sum(0).sign()
    agree = (trimmed.sign() == elected) & (trimmed != 0)
    merged = torch.where(agree, trimmed, 0.0).sum(0) / agree.sum(0).clamp(min=1)
    return base + lam * merged


def linear(tensors: Iterable[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The weighted average sum_i w_i theta_i / sum_i w_i (weights >= 0, not all 0).

    Normalised, so weights are proportions: weights 2, 1 give 2/3 and 1/3, and a weight of 1 with
    the others 0 gives that model exactly. ``tensors`` may be an iterator, read one at a time.
    """
    total = math.fsum(weights)
    return sum(tensor * (weight / total) for tensor, weight in zip(tensors, weights, strict=True))


def ema(tensors: Iterable[torch.Tensor], decay: float) -> torch.Tensor:
    """The exponential moving average of ``tensors`` in their order (a run's checkpoints, oldest first):
    m_1 = theta_1, m_k = decay * m_(k-1) + (1 - decay) * theta_k, which is, over K tensors,
    sum_k w_k theta_k with w_1 = decay^(K-1) and w_k = (1 - decay) decay^(K-k) (summing to 1).
    ``tensors`` may be an iterator, read one at a time.
    """
    iterator = iter(tensors)
    merged = next(iterator).clone()
    for tensor in iterator:
        merged.mul_(decay).add_(tensor, alpha=1 - decay)
    return merged


def method_parameters(
    method: str,
    count: int,
    *,
    base: str | Path | None,
    density: float | None,
    lam: float | None,
    weights: Sequence[float] | None,
    decay: float | None,
) -> dict[str, Any]:
    """The parameters of ``method`` for ``count`` MODEL arguments, defaults filled in, as ``merge.json``
    records them; a MergeError for a flag of another method or a value out of range."""
    if method not in METHODS:
        raise MergeError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    given = {"base": base, "density": density, "lambda": lam, "weights": weights, "decay": decay}
    for flag, value in given.items():
        if value is not None and OWNERS[flag] != method:
            raise MergeError(f"--{flag} is an option of --method {OWNERS[flag]}, not of {method}")
    if method == "ema":
        if count != 1:
            raise MergeError(f"--method ema takes one run directory (its checkpoints), got {count} models")
        decay = DEFAULT_DECAY if decay is None else decay
        if not 0 < decay < 1:
            raise MergeError(f"--decay must be in (0, 1), got {decay}")
        return {"decay": decay}
    if count < 2:
        raise MergeError(f"--method {method} merges two or more models, got {count}")
    if method == "linear":
        weights = [1.0] * count if weights is None else list(weights)
        if len(weights) != count:
            raise MergeError(f"--weights gives {len(weights)} weights for {count} models")
        if not all(math.isfinite(w) and w >= 0 for w in weights) or not math.fsum(weights) > 0:
            raise MergeError(f"--weights must be >= 0 and not all 0, got {','.join(map(str, weights))}")
        return {"weights": weights}
    if base is None:
        raise MergeError("--method ties needs --base, the model the others were trained from")
    density = DEFAULT_DENSITY if density is None else density
    lam = DEFAULT_LAMBDA if lam is None else lam
    if not 0 < density <= 1:
        raise MergeError(f"--density must be in (0, 1], got {density}")
    if not math.isfinite(lam):
        raise MergeError(f"--lambda must be a finite number, got {lam}")
    return {"density": density, "lambda": lam}


@dataclass(frozen=True)
class Model:
    """One input: as it was named, its directory, config, tokenizer record, and each tensor's file."""

    name: str
    directory: Path
    config: ModelConfig
    tokenizer: dict[str, Any] | None
    files: dict[str, Path]

    def read(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``key`` as float32, copied out of its file, which is closed again."""
        try:
            with safe_open(self.files[key], "pt") as handle:
                return handle.get_slice(key)[start:stop].to(torch.float32, copy=True)
        except (OSError, SafetensorError) as err:
            raise MergeError(f"{self.files[key]}: cannot read {key}: {err}") from err


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The tensors of a model directory of this config and their shapes, sorted by name (from a model
    built on the meta device: no memory); the tied decoder weight is the embeddings'."""
    with torch.device("meta"):
        model = ModernBertMLM(config)
    return {key: tuple(value.shape) for key, value in sorted(model.state_dict().items()) if key != TIED_KEY}


def open_model(name: str | Path) -> Model:
    """A MODEL argument: a run directory (its newest checkpoint), a checkpoint, a model directory or a
    transformers ModernBERT directory, its tensors checked against its config (headers only)."""
    directory = model_directory(name)
    config, _ = read_config(directory)
    files = weight_files(directory)
    if files[0].name == PICKLE_WEIGHTS_NAME:
        raise MergeError(
            f"{files[0]}: merging reads safetensors; `mmbert-train import {directory} -o DIR` converts it"
        )
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in files:
        try:
            with safe_open(file, "pt") as handle:
                names = handle.keys()
                found |= {key: (file, tuple(handle.get_slice(key).get_shape())) for key in names}
        except (OSError, SafetensorError) as err:
            raise MergeError(f"{file}: cannot read weights: {err}") from err
    found.pop(TIED_KEY, None)
    expected = weight_shapes(config)
    problems = {
        "missing": sorted(expected.keys() - found.keys()),
        "unexpected": sorted(found.keys() - expected.keys()),
        "of another shape": sorted(k for k in expected.keys() & found.keys() if found[k][1] != expected[k]),
    }
    if any(problems.values()):
        listed = "; ".join(f"{what}: {keys[:3]}" for what, keys in problems.items() if keys)
        raise MergeError(f"{name}: its weights do not match its {CONFIG_NAME} ({listed})")
    files_of = {key: file for key, (file, _) in found.items()}
    return Model(str(name), directory, config, recorded_tokenizer(directory), files_of)


def run_checkpoints(run: str | Path) -> list[Model]:
    """The checkpoints of a run directory in step order, for an EMA; MergeError if it has fewer than two."""
    run = Path(run)
    if not (run / "checkpoints").is_dir():
        raise MergeError(
            f"{run}: not a run directory (no checkpoints/); --method ema averages its checkpoints"
        )
    found = checkpoint_dirs(run)
    if len(found) < 2:
        raise MergeError(
            f"{run}: {len(found)} complete checkpoint(s); an EMA needs two or more "
            "(a run keeps its newest 3, or --keep N of them)"
        )
    return [open_model(checkpoint) for checkpoint in found]


def check_compatible(models: Sequence[Model]) -> None:
    """A MergeError naming two of ``models`` whose configs differ, or that were trained on data of
    different tokenizers (models without a tokenizer record, such as imports, are not compared)."""
    first = models[0]
    for other in models[1:]:
        changed = [
            f"{spec.name} {getattr(first.config, spec.name)} vs {getattr(other.config, spec.name)}"
            for spec in fields(ModelConfig)
            if getattr(first.config, spec.name) != getattr(other.config, spec.name)
        ]
        if changed:
            raise MergeError(
                f"{first.name} and {other.name} differ in their config ({', '.join(changed)}); "
                "only models of one config merge"
            )
    recorded = [model for model in models if model.tokenizer is not None]
    for other in recorded[1:]:
        if other.tokenizer.get("sha256") != recorded[0].tokenizer.get("sha256"):
            raise MergeError(
                f"{recorded[0].name} and {other.name} were trained on data of different tokenizers "
                f"({_describe(recorded[0].tokenizer)} vs {_describe(other.tokenizer)}): "
                "the same token ids mean different tokens"
            )


def _describe(tokenizer: dict[str, Any]) -> str:
    return f"{tokenizer.get('name')}, sha256 {str(tokenizer.get('sha256'))[:12]}..."


def row_blocks(shape: tuple[int, ...], block_elements: int) -> list[tuple[int, int]]:
    """Row ranges ``(start, stop)`` covering a tensor of ``shape``, each about ``block_elements``
    entries (at least one row)."""
    rows = max(1, block_elements // math.prod(shape[1:]))
    return [(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]


def merged_blocks(
    key: str,
    shape: tuple[int, ...],
    method: str,
    parameters: dict[str, Any],
    models: Sequence[Model],
    base: Model | None,
    block_elements: int,
) -> Iterator[torch.Tensor]:
    """Tensor ``key`` of the merge, a block of rows at a time; TIES first reads each model's task vector
    of the whole tensor, one model at a time, for its trim threshold."""
    blocks = row_blocks(shape, block_elements)
    if method == "ties":
        density = parameters["density"]
        thresholds = [ties_threshold(base, model, key, shape, blocks, density) for model in models]
    for start, stop in blocks:
        rows = (model.read(key, start, stop) for model in models)
        if method == "ties":
            yield ties_block(base.read(key, start, stop), list(rows), thresholds, parameters["lambda"])
        elif method == "linear":
            yield linear(rows, parameters["weights"])
        else:
            yield ema(rows, parameters["decay"])


def ties_threshold(
    base: Model, model: Model, key: str, shape: tuple[int, ...], blocks: list[tuple[int, int]], density: float
) -> float:
    """:func:`trim_threshold` of ``model``'s task vector in tensor ``key``, gathered block by block."""
    magnitudes = torch.empty(shape)
    for start, stop in blocks:
        magnitudes[start:stop] = (model.read(key, start, stop) - base.read(key, start, stop)).abs()
    return trim_threshold(magnitudes, density)


def write_streamed(
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    blocks: Callable[[str, tuple[int, ...]], Iterable[torch.Tensor]],
) -> None:
    """Write float32 tensors of ``shapes`` to a safetensors file, each as the blocks of rows that
    ``blocks(key, shape)`` yields, in order: one block is in memory at a time.

    The format (github.com/huggingface/safetensors, "Format"): the header's size as 8 bytes
    little-endian, a JSON header giving each tensor's dtype, shape and byte range, padded with spaces
    to a multiple of 8, then the tensors' bytes back to back, little-endian. With the shapes known,
    the header goes first and the tensors stream after it, where ``safetensors.torch.save_file``
    takes them all in memory at once.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in shapes.items():
        end = offset + 4 * math.prod(shape)
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        for key, shape in shapes.items():
            for block in blocks(key, shape):
                handle.write(block.contiguous().numpy().astype("<f4", copy=False).data)
        handle.flush()
        os.fsync(handle.fileno())


def merge_models(
    models: Sequence[str | Path],
    output: str | Path,
    method: str,
    *,
    base: str | Path | None = None,
    density: float | None = None,
    lam: float | None = None,
    weights: Sequence[float] | None = None,
    decay: float | None = None,
    block_elements: int = BLOCK_ELEMENTS,
) -> dict[str, Any]:
    """Merge ``models`` into the model directory ``output``; returns what its ``merge.json`` records.

    ``models`` are MODEL arguments (:func:`open_model`); for ``ema``, one run directory, whose
    checkpoints are averaged in step order. ``base`` (TIES), ``density``, ``lam``, ``weights``
    and ``decay`` are as in :func:`method_parameters`. Everything is checked before anything is
    written: a MergeError, CheckpointError or ModelFormatError names the model or flag at fault,
    and an OutputError the output; a merge that fails midway leaves no ``output``.
    """
    parameters = method_parameters(
        method, len(models), base=base, density=density, lam=lam, weights=weights, decay=decay
    )
    output = Path(output)
    if output.exists() and not (output.is_dir() and not any(output.iterdir())):
        raise MergeError(f"--output {output} exists; pass a new directory")
    inputs = run_checkpoints(models[0]) if method == "ema" else [open_model(name) for name in models]
    base_model = open_model(base) if base is not None else None
    everything = [base_model, *inputs] if base_model else inputs
    check_compatible(everything)
    config = inputs[0].config
    record = {
        "format": MERGE_FORMAT,
        "version": MERGE_VERSION,
        "method": method,
        **parameters,
        "base": str(base_model.directory.resolve()) if base_model else None,
        "models": [str(model.directory.resolve()) for model in inputs],
        "tokenizer": next((model.tokenizer for model in everything if model.tokenizer is not None), None),
    }

    def blocks(key: str, shape: tuple[int, ...]) -> Iterator[torch.Tensor]:
        return merged_blocks(key, shape, method, parameters, inputs, base_model, block_elements)

    with atomic_directory(output) as staged, writing(output):
        write_streamed(staged / WEIGHTS_NAME, weight_shapes(config), blocks)
        write_json_atomic(staged / CONFIG_NAME, asdict(config))
        write_json_atomic(staged / MERGE_NAME, record)
    return record
