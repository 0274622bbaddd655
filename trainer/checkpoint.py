"""Training checkpoints: complete directories, written atomically, that resume a run bit for bit.

``RUN_DIR/checkpoints/step-00000042/`` holds

- ``config.json`` and ``model.safetensors``: the model, as a model directory, so
  ``mmbert-train export`` and ``--init`` take a checkpoint as it is;
- ``optimizer.safetensors``: StableAdamW's moments, named after their parameters;
- ``state.json``, written last: step, tokens seen, the loader's state, each
  parameter's optimizer step, the manifest's fingerprint and tokenizer, the run
  configuration, and the sha256 of every file above.

A checkpoint is assembled under a hidden temporary name and renamed into place,
so a directory called ``step-N`` is complete. Loading checks each file against
its hash; a damaged newest checkpoint is reported and the one before it used.
Nothing is unpickled: tensors are safetensors, everything else JSON. There is no
random state to save: masks and dropout draw from generators seeded by
(seed, step, micro-batch), so a resumed run rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mixtures.files import temporary_path, temporary_pattern, write_atomic
from trainer.hf import config_from_hf, read_hf_weights
from trainer.model import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelConfig,
    ModelFormatError,
    ModernBertMLM,
    read_json_object,
)

CHECKPOINT_FORMAT = "mmbert-train/checkpoint"
CHECKPOINT_VERSION = 1
STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint or run directory that cannot be used; the message names the file and why."""


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = [
        (int(m.group(1)), p) for p in root.glob("step-*") if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return [path for _, path in sorted(found)]


def save_checkpoint(
    run_dir: str | Path, model: ModernBertMLM, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> Path:
    """Write ``RUN_DIR/checkpoints/step-{state['step']}`` (if not there already) and return it."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    if final.is_dir():
        return final
    temporary = temporary_path(final)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        model.save(temporary)
        names = parameter_names(model)
        tensors, steps = {}, {}
        for parameter, slot in optimizer.state.items():
            name = names[parameter]
            tensors[f"{name}.exp_avg"] = slot["exp_avg"].detach().contiguous().cpu()
            tensors[f"{name}.exp_avg_sq"] = slot["exp_avg_sq"].detach().contiguous().cpu()
            steps[name] = slot["step"]
        save_file(tensors, str(temporary / OPTIMIZER_NAME), metadata={"format": "pt"})
        files = {name: _sha256(temporary / name) for name in (CONFIG_NAME, WEIGHTS_NAME, OPTIMIZER_NAME)}
        document = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            **state,
            "optimizer_steps": steps,
            "files": files,
        }
        write_atomic(temporary / STATE_NAME, json.dumps(document, indent=1) + "\n")
        for path in (*temporary.iterdir(), temporary):
            _fsync(path)
        os.rename(temporary, final)
        _fsync(root)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (and temporary ones an interrupted save left)."""
    root = Path(run_dir) / "checkpoints"
    for leftover in root.glob(temporary_pattern("step-*")):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``, after checking every file it lists against its sha256."""
    try:
        state = json.loads((checkpoint / STATE_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{checkpoint}: {STATE_NAME} is missing or damaged ({err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{checkpoint / STATE_NAME}: not an mmbert-train checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{checkpoint / STATE_NAME}: version {state.get('version')!r}, expected 1")
    for name, digest in state.get("files", {}).items():
        try:
            actual = _sha256(checkpoint / name)
        except OSError as err:
            raise CheckpointError(f"{checkpoint / name}: cannot read ({err.strerror or err})") from err
        if actual != digest:
            raise CheckpointError(
                f"{checkpoint / name}: damaged (sha256 {actual[:16]}..., recorded {digest[:16]}...)"
            )
    return state


def latest_checkpoint(
    run_dir: str | Path, report: Callable[[str], None]
) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint and its state, reporting each damaged one passed over; None if none."""
    for checkpoint in reversed(checkpoint_dirs(run_dir)):
        try:
            return checkpoint, read_state(checkpoint)
        except CheckpointError as err:
            report(f"{err}; using the checkpoint before it")
    return None


def load_checkpoint(
    checkpoint: Path, state: dict[str, Any], model: ModernBertMLM, optimizer: torch.optim.Optimizer
) -> None:
    """Load a checkpoint's weights and optimizer state (``state`` from :func:`read_state`)."""
    try:
        model.load_weights(load_file(str(checkpoint / WEIGHTS_NAME)), where=str(checkpoint / WEIGHTS_NAME))
        load_optimizer(
            optimizer, model, load_file(str(checkpoint / OPTIMIZER_NAME)), state["optimizer_steps"]
        )
    except (OSError, SafetensorError, ModelFormatError, KeyError) as err:
        raise CheckpointError(f"{checkpoint}: cannot be loaded into this model: {err}") from err


def load_optimizer(
    optimizer: torch.optim.Optimizer,
    model: ModernBertMLM,
    tensors: dict[str, torch.Tensor],
    steps: dict[str, int],
) -> None:
    """Restore StableAdamW's per-parameter state saved by :func:`save_checkpoint`."""
    for parameter, name in parameter_names(model).items():
        if name not in steps:
            raise KeyError(f"no optimizer state for {name}")
        optimizer.state[parameter] = {
            "step": int(steps[name]),
            "exp_avg": tensors[f"{name}.exp_avg"].to(parameter.device),
            "exp_avg_sq": tensors[f"{name}.exp_avg_sq"].to(parameter.device),
        }


def parameter_names(model: ModernBertMLM) -> dict[torch.nn.Parameter, str]:
    """Each distinct parameter's name (the tied decoder weight under the embeddings' name)."""
    return {parameter: name for name, parameter in model.named_parameters()}


@dataclass
class InitSource:
    """Where a phase starts from (``--init``): a model, and for a training checkpoint its optimizer state."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    where: str
    optimizer: tuple[dict[str, torch.Tensor], dict[str, int]] | None = None
    tokenizer: dict[str, Any] | None = None


def model_directory(path: str | Path) -> Path:
    """The directory holding a model: ``path`` itself, or the newest checkpoint of a run directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (a run, checkpoint or model directory was expected)")
    if (path / "checkpoints").is_dir():
        found = checkpoint_dirs(path)
        if not found:
            raise CheckpointError(f"{path}: the run has no complete checkpoint yet")
        return found[-1]
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"{path}: neither a run directory (no checkpoints/) nor a model ({CONFIG_NAME})"
        )
    return path


def read_init(path: str | Path) -> InitSource:
    """Read ``--init``: a run directory (its newest checkpoint), a checkpoint, a model directory, or a
    transformers ModernBERT directory; raises CheckpointError naming what was found instead."""
    try:
        path = model_directory(path)
    except CheckpointError as err:
        raise CheckpointError(f"--init {err}") from err
    config_path = path / CONFIG_NAME
    try:
        raw = read_json_object(config_path)
        if raw.get("model_type") == "modernbert":  # a transformers checkpoint, e.g. a released mmBERT
            weights, where = read_hf_weights(path)
            return InitSource(
                config_from_hf(raw, str(config_path)), {k: v.float() for k, v in weights.items()}, where
            )
        config = ModelConfig.from_dict(raw, where=str(config_path))
        weights = load_file(str(path / WEIGHTS_NAME))
    except (ModelFormatError, OSError, SafetensorError) as err:
        raise CheckpointError(f"--init {path}: not a model or checkpoint directory: {err}") from err
    if not (path / STATE_NAME).exists():
        return InitSource(config, weights, str(path))
    state = read_state(path)
    optimizer = (load_file(str(path / OPTIMIZER_NAME)), state["optimizer_steps"])
    return InitSource(config, weights, str(path), optimizer=optimizer, tokenizer=state.get("tokenizer"))


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk: a rename is durable only once both are."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
