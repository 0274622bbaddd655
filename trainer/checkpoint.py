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
its hash; a damaged newest checkpoint is moved aside (``step-N.damaged``), reported,
and the one before it used, so the run writes step N anew when it gets there.
Nothing is unpickled: tensors are safetensors, everything else JSON. There is no
random state to save: masks and dropout draw from generators seeded by
(seed, step, micro-batch), so a resumed run rebuilds them.

Tensors are stored whole whatever the parallelism: under FSDP2 (``--parallel fsdp``)
every rank takes part in gathering them (:func:`snapshot`) before rank 0 writes, and
on loading each rank keeps its shard of them, so a checkpoint is the same for one
process, DDP and FSDP2, and a run may resume under any of them.

:class:`Checkpointer` holds the run's stateful parts (model, optimizer, loader,
train state) and decides when to save them; :func:`find_start` decides where a
run begins (its newest checkpoint, an ``--init`` model, or a new model) and
refuses a checkpoint made for other data or settings.

One process trains a run: rank 0 holds ``RUN/run.lock`` (:class:`RunLock`) from
before it reads the checkpoints until it exits, and checks that the lock is still
its own before every write, so that a process that lost the run never writes into it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mixtures.files import (
    UNWRITABLE,
    FileLock,
    LockHeld,
    describe_holder,
    file_sha256,
    temporary_path,
    temporary_pattern,
    unwritable_reason,
    write_atomic,
)
from mixtures.formats import TokenizerRecord
from mixtures.hub import HubUnavailable
from mixtures.manifest import Manifest
from trainer.config import ConfigError, TrainConfig, model_config
from trainer.data import MixtureLoader, StepBatch
from trainer.distributed import Dist, all_reduce_sum, barrier
from trainer.hf import hub_model_dir, is_hub_name, read_config, read_hf_weights
from trainer.model import (
    CONFIG_NAME,
    TIED_KEY,
    WEIGHTS_NAME,
    ModelConfig,
    ModelFormatError,
    ModernBertMLM,
    read_json_object,
)
from trainer.optim import StableAdamW, load_named_state, named_state
from trainer.parallel import full_tensor, is_sharded, shard_like

CHECKPOINT_FORMAT = "mmbert-train/checkpoint"
CHECKPOINT_VERSION = 1
STATE_NAME = "state.json"
MERGE_NAME = "merge.json"  # what a merged model directory was made of (trainer/merge.py)
OPTIMIZER_NAME = "optimizer.safetensors"
LOCK_NAME = "run.lock"
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


@dataclass
class Snapshot:
    """What a checkpoint stores of the model and its optimizer: whole tensors on the CPU."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    optimizer_steps: dict[str, int]


def snapshot(model: ModernBertMLM, optimizer: StableAdamW) -> Snapshot:
    """The model's weights and the optimizer's state, whole, as :func:`save_checkpoint` writes them.

    Under FSDP2 each sharded tensor is all-gathered, so every rank calls this together
    (the tied decoder weight is skipped: it is the embeddings').
    """
    weights = {
        key: full_tensor(value.detach()).cpu() for key, value in model.state_dict().items() if key != TIED_KEY
    }
    return Snapshot(weights, *named_state(optimizer, parameter_names(model)))


def save_checkpoint(
    run_dir: str | Path, model: ModernBertMLM, saved: Snapshot, state: dict[str, Any]
) -> Path:
    """Write ``RUN_DIR/checkpoints/step-{state['step']}`` (if not there already) and return it.

    ``model`` gives the checkpoint's ``config.json``, ``saved`` its tensors.

    A write that fails (a full disk) is a CheckpointError naming the checkpoint; the
    checkpoints before it are untouched and the temporary directory removed.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    if final.is_dir():  # resumed at that step: intact, as resuming checked
        return final
    temporary = temporary_path(final)
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
        model.save(temporary, saved.weights)
        save_file(saved.optimizer, str(temporary / OPTIMIZER_NAME), metadata={"format": "pt"})
        files = {name: file_sha256(temporary / name) for name in (CONFIG_NAME, WEIGHTS_NAME, OPTIMIZER_NAME)}
        document = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            **state,
            "optimizer_steps": saved.optimizer_steps,
            "files": files,
        }
        write_atomic(temporary / STATE_NAME, json.dumps(document, indent=1) + "\n")
        for path in (*temporary.iterdir(), temporary):
            _fsync(path)
        os.rename(temporary, final)
        _fsync(root)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(
            f"{final}: cannot be written ({getattr(err, 'strerror', None) or err}); free space on its "
            "filesystem, then continue with --resume (the checkpoints before it are intact)"
        ) from err
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (and temporary ones an interrupted save left).

    A symbolic link among the old ones is refused, never followed: it may lead out of the run.
    """
    root = Path(run_dir) / "checkpoints"
    for leftover in root.glob(temporary_pattern("step-*")):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        if old.is_symlink():
            raise CheckpointError(
                f"{old}: a symbolic link; --keep removes old checkpoints and never follows links: "
                "move the checkpoint it points to into the run, or remove the link"
            )
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
            actual = file_sha256(checkpoint / name)
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
    """The newest intact checkpoint and its state; None if none is intact.

    Each damaged one passed over is moved aside and reported: left in place, the run
    would keep it when it reached that step again instead of writing it anew.
    """
    for checkpoint in reversed(checkpoint_dirs(run_dir)):
        try:
            return checkpoint, read_state(checkpoint)
        except CheckpointError as err:
            report(f"{err}; moved to {_move_aside(checkpoint)}; using the checkpoint before it")
    return None


def _move_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint to ``step-N.damaged`` (``.damaged-2``, ... if that is taken)."""
    aside, copies = checkpoint.with_name(f"{checkpoint.name}.damaged"), 1
    while aside.exists():
        copies += 1
        aside = checkpoint.with_name(f"{checkpoint.name}.damaged-{copies}")
    os.rename(checkpoint, aside)
    return aside


class RunLock(FileLock):
    """``RUN/run.lock``: one process at a time trains a run (rank 0 under torchrun).

    Entering creates the run directory if need be (and removes it on exit if it is
    still empty, so a refused run leaves nothing); a live holder is a CheckpointError
    naming its pid and host, a dead one's lock is taken over.
    """

    def __init__(self, run: Path):
        super().__init__(run / LOCK_NAME)
        self.created = False

    def __enter__(self) -> RunLock:
        run = self.path.parent
        self.created = not run.exists()
        try:
            run.mkdir(parents=True, exist_ok=True)
            super().__enter__()
        except LockHeld as held:
            raise CheckpointError(
                f"{run} is being trained by another process ({held}); "
                "wait for it to finish or stop it, then run this again"
            ) from None
        except OSError as err:
            if err.errno in UNWRITABLE:  # a file in the way, read-only, no permission, no space
                raise CheckpointError(
                    f"--output {run}: cannot be written ({unwritable_reason(err)}); "
                    "pass a directory this process can write to"
                ) from err
            raise CheckpointError(
                f"cannot lock {self.path}: {err.strerror}; put --output on a filesystem that supports "
                "flock (a local disk, or the cluster's flock-enabled scratch)"
            ) from err
        return self

    def __exit__(self, *exc_info) -> None:
        super().__exit__(*exc_info)
        if self.created:
            with suppress(OSError):  # not empty: the run wrote into it
                self.path.parent.rmdir()

    def check(self) -> None:
        """Raise a CheckpointError once another process holds the run (its lock file replaced ours)."""
        holder = self.holder_now()
        if holder is not None:
            raise CheckpointError(
                f"{self.path}: the run is now held by {describe_holder(holder)}; this process stops "
                "without writing more (let that one train, or stop it and continue with --resume)"
            )


def load_checkpoint(
    checkpoint: Path, state: dict[str, Any], model: ModernBertMLM, optimizer: StableAdamW
) -> None:
    """Load a checkpoint's weights and optimizer state (``state`` from :func:`read_state`)."""
    try:
        load_weights(model, load_file(str(checkpoint / WEIGHTS_NAME)), where=str(checkpoint / WEIGHTS_NAME))
        tensors = load_file(str(checkpoint / OPTIMIZER_NAME))
        load_named_state(optimizer, parameter_names(model), tensors, state["optimizer_steps"])
    except (OSError, SafetensorError, ModelFormatError, KeyError) as err:
        raise CheckpointError(f"{checkpoint}: cannot be loaded into this model: {err}") from err


def load_weights(model: ModernBertMLM, weights: dict[str, torch.Tensor], where: str) -> None:
    """``model.load_weights`` of whole ``weights``; for a sharded model each is cut to this rank's shard."""
    if is_sharded(model):
        own = model.state_dict()
        weights = {
            key: shard_like(value, own[key]) if key in own else value for key, value in weights.items()
        }
    model.load_weights(weights, where=where)


def parameter_names(model: ModernBertMLM) -> dict[torch.nn.Parameter, str]:
    """Each distinct parameter's name (the tied decoder weight under the embeddings' name)."""
    return {parameter: name for name, parameter in model.named_parameters()}


def recorded_tokenizer(directory: Path) -> dict[str, Any] | None:
    """The tokenizer record of the data a model directory's weights were trained on: a checkpoint's
    (``state.json``, checked against its hashes) or a merge's (``merge.json``, see ``trainer/merge.py``);
    None for a model saved without one (``mmbert-train import``, a transformers directory)."""
    if (directory / STATE_NAME).exists():
        return read_state(directory).get("tokenizer")
    if (directory / MERGE_NAME).exists():
        return read_json_object(directory / MERGE_NAME).get("tokenizer")
    return None


@dataclass
class InitSource:
    """Where a phase starts from (``--init``): a model, and for a training checkpoint its optimizer state."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    where: str
    optimizer: tuple[dict[str, torch.Tensor], dict[str, int]] | None = None
    tokenizer: dict[str, Any] | None = None


def model_directory(path: str | Path) -> Path:
    """The directory holding a model: ``path`` itself, the newest checkpoint of a run directory
    (checked against its ``state.json``: a damaged one is named, not passed over), or, for a name
    that is no local path but a hub repository's (``jhu-clsp/mmBERT-base``), its snapshot
    (:func:`trainer.hf.hub_model_dir`)."""
    if not Path(path).exists() and is_hub_name(str(path)):
        try:
            return hub_model_dir(str(path))
        except (HubUnavailable, ModelFormatError) as err:
            raise CheckpointError(str(err)) from err
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (a run, checkpoint or model directory was expected)")
    if (path / "checkpoints").is_dir():
        found = checkpoint_dirs(path)
        if not found:
            raise CheckpointError(f"{path}: the run has no complete checkpoint yet")
        try:
            read_state(found[-1])
        except CheckpointError as err:  # never another checkpoint than the newest without saying so
            before = f", or pass the one before it ({found[-2]})" if len(found) > 1 else ""
            raise CheckpointError(f"{err}; `mmbert-train --resume` moves it aside{before}") from err
        return found[-1]
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"{path}: neither a run directory (no checkpoints/) nor a model ({CONFIG_NAME})"
        )
    return path


def read_init(path: str | Path, flag: str = "--init", optimizer: bool = True) -> InitSource:
    """Read ``--init``: a run directory (its newest checkpoint), a checkpoint, a model directory, or a
    transformers ModernBERT directory; raises CheckpointError naming what was found instead.

    ``flag`` names the argument in messages (``mmbert-train eval`` reads its models here too);
    ``optimizer=False`` leaves a checkpoint's optimizer state unread (twice the model's size).
    """
    try:
        path = model_directory(path)
    except CheckpointError as err:
        raise CheckpointError(f"{flag} {err}") from err
    try:
        config, transformers = read_config(path)
        if transformers:  # a transformers checkpoint, e.g. a released mmBERT
            weights, where = read_hf_weights(path)
            return InitSource(config, {k: v.float() for k, v in weights.items()}, where)
        weights = load_file(str(path / WEIGHTS_NAME))
    except (ModelFormatError, OSError, SafetensorError) as err:
        raise CheckpointError(f"{flag} {path}: not a model or checkpoint directory: {err}") from err
    if not (path / STATE_NAME).exists() or not optimizer:
        return InitSource(config, weights, str(path), tokenizer=recorded_tokenizer(path))
    state = read_state(path)
    moments = (load_file(str(path / OPTIMIZER_NAME)), state["optimizer_steps"])
    return InitSource(config, weights, str(path), optimizer=moments, tokenizer=state.get("tokenizer"))


@dataclass
class Start:
    """Where a run begins: the model's shape and a checkpoint of this run or an ``--init`` source."""

    shape: ModelConfig
    checkpoint: tuple[Path, dict[str, Any]] | None = None
    init: InitSource | None = None


def find_start(
    config: TrainConfig,
    manifest: Manifest,
    tokenizer: TokenizerRecord,
    resume: bool,
    force: bool,
    say: Callable[[str], None],
) -> Start:
    """A checkpoint of this run (``--resume``), else ``--init``, else a new model of the preset.

    ``--resume`` where every checkpoint is damaged is refused: starting over is asked
    for by running without ``--resume`` (the damaged ones are moved aside by then).
    """
    run = Path(config.out)
    if checkpoint_dirs(run) and not resume:
        raise ConfigError(
            f"{run} already holds checkpoints; pass --resume to continue that run or choose another --output"
        )
    if checkpoint_dirs(run):
        found = latest_checkpoint(run, say)
        if found is None:
            raise CheckpointError(
                f"{run}: no intact checkpoint to resume (the damaged ones were moved aside); "
                "run without --resume to start the run over"
            )
        path, state = found
        _check_resume(config, manifest, state, force, say)
        shape = ModelConfig.from_dict(read_json_object(path / CONFIG_NAME), where=str(path / CONFIG_NAME))
        return Start(shape, checkpoint=found)
    if resume:
        say(f"no checkpoint in {run}: starting the run")
    if not config.init:
        return Start(model_config(config, tokenizer, None))
    init = read_init(config.init)
    if init.tokenizer and init.tokenizer.get("sha256") != tokenizer.sha256 and not force:
        raise ConfigError(
            f"--init {config.init} was trained on data tokenized with {init.tokenizer.get('name')}, this "
            f"manifest with {tokenizer.name} (different tokenizer.json); pass --force to start anyway"
        )
    return Start(model_config(config, tokenizer, init.config), init=init)


def _check_resume(
    config: TrainConfig, manifest: Manifest, state: dict, force: bool, say: Callable[[str], None]
) -> None:
    """Refuse to continue a checkpoint made for another manifest or with other settings, unless forced."""
    recorded = state["manifest"]["fingerprint"]
    if recorded != manifest.fingerprint:
        message = (
            f"the checkpoint was made for manifest {state['manifest']['path']} "
            f"(fingerprint {recorded[:16]}...), not {config.manifest} ({manifest.fingerprint[:16]}...)"
        )
        if not force:
            raise CheckpointError(f"{message}; pass --force to continue on this manifest's data")
        say(f"warning: {message}; continuing as --force says, the data starts at the manifest's beginning")
    changed = config.differences(state["config"])
    if changed and not force:
        raise CheckpointError(
            "the run's settings differ from the checkpoint's, so resuming would change the result: "
            + "; ".join(changed)
            + " (pass --force to continue anyway)"
        )


@dataclass
class TrainState:
    """How far the run is: steps taken, tokens seen, and the loader's state once that step was taken.

    The loader runs ahead on a background thread, so its state at a save is the
    one each step carries (``StepBatch.state``), not the loader's own.
    """

    step: int = 0
    tokens: int = 0
    loader: dict[str, Any] | None = None

    def advance(self, batch: StepBatch) -> None:
        self.step, self.tokens, self.loader = batch.step + 1, batch.state["tokens"], batch.state


class Checkpointer:
    """The run's stateful parts (model, optimizer, loader, train state), when to save them, and how.

    ``due`` decides every step, the same way on every rank (a signal or the clock
    on any rank counts for all); ``save`` has rank 0 write while the others wait,
    once ``lock`` (rank 0's) says the run is still this process's;
    ``restore`` loads a :class:`Start` into the parts.
    """

    def __init__(
        self,
        config: TrainConfig,
        manifest: Manifest,
        tokenizer: TokenizerRecord,
        dist: Dist,
        lock: RunLock | None,
        *,
        model: ModernBertMLM,
        optimizer: StableAdamW,
        loader: MixtureLoader,
        state: TrainState,
    ):
        self.run, self.dist, self.keep, self.lock = Path(config.out), dist, config.keep, lock
        self.every_tokens, self.every_minutes = config.save_every_tokens, config.save_every_minutes
        self.fingerprint = manifest.fingerprint
        self.identity = {
            "manifest": {"path": config.manifest, "fingerprint": manifest.fingerprint},
            "tokenizer": tokenizer.to_dict(),
            "config": config.to_dict(),
        }
        self.model, self.optimizer, self.loader, self.state = model, optimizer, loader, state
        self.stopping = False  # set by due(): every rank stops after this step
        self._saved(time.monotonic())

    def restore(self, start: Start, say: Callable[[str], None]) -> None:
        """Load the run's checkpoint or the ``--init`` model into the parts; clear an interrupted save."""
        if start.checkpoint is not None:
            path, state = start.checkpoint
            load_checkpoint(path, state, self.model, self.optimizer)
            if state["manifest"]["fingerprint"] == self.fingerprint:
                self.loader.load_state_dict(state["loader"])
            else:  # --force onto another manifest: its positions mean nothing here
                self.loader.start_counting_at(state["step"], state["tokens"])
            self.state.step, self.state.tokens = state["step"], state["tokens"]
            say(f"resuming {path} (step {state['step']}, {state['tokens']:,} tokens)")
        elif start.init is not None:
            load_weights(self.model, start.init.weights, where=start.init.where)
            if start.init.optimizer is not None:  # a training checkpoint: its moments carry into this phase
                tensors, steps = start.init.optimizer
                load_named_state(self.optimizer, parameter_names(self.model), tensors, steps)
        self.state.loader = self.loader.state_dict()
        if self.dist.main:
            prune_checkpoints(self.run, self.keep or sys.maxsize)
        self._saved(time.monotonic())

    def due(self, stop_requested: bool) -> bool:
        """Whether to save after the step just taken: every ``save_every`` tokens, minutes, or on a stop.

        One collective per step settles both flags for every rank; ``stopping`` says
        whether the save is for a stop.
        """
        late = bool(self.every_minutes) and time.monotonic() - self._saved_time >= 60 * self.every_minutes
        self.stopping, late = (flag > 0 for flag in all_reduce_sum([stop_requested, late], self.dist))
        return self.stopping or late or (self._next_save is not None and self.state.tokens >= self._next_save)

    def save(self) -> Path | None:
        """Rank 0 writes the checkpoint of the state now (every rank gathers it if the model is sharded);
        every rank returns once it is complete."""
        saved = None
        whole = snapshot(self.model, self.optimizer) if self.dist.main or is_sharded(self.model) else None
        if self.dist.main:
            self.lock.check()
            state = {"step": self.state.step, "tokens": self.state.tokens, "loader": self.state.loader}
            saved = save_checkpoint(self.run, self.model, whole, {**state, **self.identity})
            if self.keep:
                prune_checkpoints(self.run, self.keep)
        barrier(self.dist)
        self._saved(time.monotonic())
        return saved

    def _saved(self, now: float) -> None:
        """Start the next interval: the next multiple of ``save_every`` tokens, and the clock."""
        every = self.every_tokens
        self._next_save = (self.state.tokens // every + 1) * every if every else None
        self._saved_time = now


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk: a rename is durable only once both are."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
