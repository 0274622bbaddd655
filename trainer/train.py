"""One phase of training, start to finish: ``mmbert-train --manifest M`` calls :func:`train`.

The loop composes the trainer's parts: ``config`` (what to run), ``data`` (steps
of packed, masked micro-batches, prepared on a background thread), ``optim`` and
``schedule`` (StableAdamW at the schedule's learning rate), ``checkpoint``
(atomic, exact), ``distributed`` (DDP) and ``metrics``.

Exact resume rests on three facts: the loader's state fixes every later batch,
the learning rate is a function of tokens seen, and every random draw (masks,
dropout) is seeded by (seed, step, micro-batch). A run killed at any moment and
resumed from its last checkpoint ends with the same weights, bit for bit.

For crash tests, ``MMBERT_TRAIN_CRASH_AT=STEP:MICRO`` makes the process kill
itself (SIGKILL) right after micro-step MICRO of step STEP (both 0-based).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixtures.errors import MixtureError
from mixtures.manifest import load_manifest, validate_manifest
from trainer.checkpoint import (
    CheckpointError,
    InitSource,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    load_optimizer,
    prune_checkpoints,
    read_init,
    save_checkpoint,
)
from trainer.config import ConfigError, TrainConfig, model_config, tokenizer_record
from trainer.data import MixtureData, MixtureLoader, Prefetcher, StepBatch
from trainer.distributed import Dist, all_reduce_sum, barrier, close, init_distributed, wrap
from trainer.masking import Masking
from trainer.metrics import Meter, flops_per_token, peak_flops
from trainer.model import IGNORE_INDEX, ModelConfig, ModernBertMLM, read_json_object
from trainer.optim import StableAdamW, param_groups
from trainer.plot import plot_runs
from trainer.schedule import batch_size_at, lr_at, micro_batches

DROPOUT_STREAM = 4  # keeps dropout's seeds apart from the loader's
PROBLEMS_SHOWN = 10


class StopRequest:
    """SIGTERM, SIGUSR1 (Slurm's warning before preemption) or Ctrl-C: finish the step, checkpoint, exit.

    A second Ctrl-C stops at once, without a checkpoint.
    """

    def __init__(self):
        self.signal: int | None = None
        for number in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        if number == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        if number == signal.SIGINT:
            print("stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        self.signal = number


@dataclass
class Start:
    """Where a run begins: the model's shape and a checkpoint of this run or an ``--init`` source."""

    shape: ModelConfig
    checkpoint: tuple[Path, dict[str, Any]] | None = None
    init: InitSource | None = None


def train(
    config: TrainConfig, *, resume: bool = False, force: bool = False, device: str | None = None
) -> Path:
    """Train one phase as ``config`` says; return the run directory. Errors before training: ConfigError."""
    dist = init_distributed(device)
    try:
        return _train(config, dist, resume, force)
    finally:
        close(dist)


def _train(config: TrainConfig, dist: Dist, resume: bool, force: bool) -> Path:
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if dist.main else (lambda line: None)
    stop, crash_at = StopRequest(), _crash_point()
    config = for_device(config, dist.device)
    run, training = Path(config.out), config.training

    # ---- the phase's data, and where the run starts ----------------------------------------------------
    manifest, tokenizer = open_phase(config)
    start = find_start(config, manifest, tokenizer, resume, force, say)
    torch.manual_seed(config.seed)
    model = ModernBertMLM(start.shape, attn_backend=config.attn_backend).to(dist.device)
    optimizer = StableAdamW(
        param_groups(model, training.optimizer.weight_decay),
        lr=training.lr.peak,
        betas=training.optimizer.betas,
        eps=training.optimizer.eps,
        max_lr=training.lr.peak,
    )
    if start.checkpoint is not None:
        load_checkpoint(*start.checkpoint, model, optimizer)
    elif start.init is not None:
        model.load_weights(start.init.weights, where=start.init.where)
        if start.init.optimizer is not None:  # a training checkpoint: its moments carry into this phase
            load_optimizer(optimizer, model, *start.init.optimizer)
    loader = make_loader(config, manifest, tokenizer, dist)
    meter = Meter(
        run,
        config.phase,
        config.tokens,
        flops_per_token(start.shape, training.seq_len, training.mask_rate),
        peak_flops(dist.device, config.precision),
        enabled=dist.main,
    )
    if start.checkpoint is not None:
        path, state = start.checkpoint
        if state["manifest"]["fingerprint"] == manifest["fingerprint"]:
            loader.load_state_dict(state["loader"])
        else:  # --force onto another manifest: its positions mean nothing here, so its data starts afresh
            loader.step, loader.tokens_seen = state["step"], state["tokens"]
        meter.resume_at(state["step"])
        say(f"resuming {path} (step {state['step']}, {state['tokens']:,} tokens)")
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        prune_checkpoints(run, config.keep or sys.maxsize)
    for line in _banner(config, manifest, model, loader, dist):
        say(line)

    if config.compile:  # layer by layer, as torchtitan does: small graphs, the same for every layer kind
        for layer in model.model.layers:
            layer.compile()
    ddp = wrap(model, dist)
    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    identity = {
        "manifest": {"path": config.manifest, "fingerprint": manifest["fingerprint"]},
        "tokenizer": tokenizer,
        "config": config.to_dict(),
    }
    step, tokens_seen, loader_state = loader.step, loader.tokens_seen, loader.state_dict()

    def save() -> Path | None:
        """Rank 0 writes the checkpoint; every rank returns once it is complete."""
        saved = None
        if dist.main:
            state = {"step": step, "tokens": tokens_seen, "loader": loader_state, **identity}
            saved = save_checkpoint(run, model, optimizer, state)
            if config.keep:
                prune_checkpoints(run, config.keep)
        barrier(dist)
        return saved

    # ---- the loop ----------------------------------------------------------------------------------------
    model.train()
    every = config.save_every_tokens
    next_save = (tokens_seen // every + 1) * every if every else None
    saved_time = time.monotonic()
    prefetch = Prefetcher(loader)
    waited = time.perf_counter()
    try:
        for batch in prefetch if tokens_seen < config.tokens else ():
            started = time.perf_counter()
            lr = lr_at(batch.tokens_before + batch.tokens, training.lr, config.tokens)
            result = train_step(batch, ddp, optimizer, dist, lr, autocast, config.seed, crash_at)
            minutes = config.save_every_minutes
            late = bool(minutes) and time.monotonic() - saved_time >= 60 * minutes
            # every rank takes the same decisions: a signal or the clock on any rank counts for all
            stopping, late = (flag > 0 for flag in all_reduce_sum([stop.signal is not None, late], dist))
            step, tokens_seen, loader_state = batch.step + 1, batch.state["tokens"], batch.state
            record = {
                "step": step,
                "tokens": tokens_seen,
                "tokens_in_step": batch.tokens,
                **result,
                "lr": lr,
                "batch_sequences": batch.sequences,
                "micro_batches": batch.global_micro_batches,
                "packing": batch.tokens / batch.capacity,
            }
            meter.log(record, time.perf_counter() - started, started - waited)
            if stopping or late or (every and tokens_seen >= next_save):
                saved = save()
                next_save = (tokens_seen // every + 1) * every if every else None
                saved_time = time.monotonic()
                if stopping:
                    say(f"stopped by a signal after step {step}; saved {saved}; continue with --resume")
                    raise SystemExit(128 + (stop.signal or signal.SIGTERM))
            if tokens_seen >= config.tokens:
                break
            waited = time.perf_counter()
    finally:
        prefetch.close()
        meter.close()
    saved = save()
    if dist.main:
        plot = plot_runs([run], run / "loss.png")
        say(f"done: {tokens_seen:,} tokens in {step} steps; model {saved}; loss curve {plot}")
    return run


def train_step(
    batch: StepBatch,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    dist: Dist,
    lr: float,
    autocast: AbstractContextManager,
    seed: int,
    crash_at: tuple[int, int] | None = None,
) -> dict[str, float]:
    """One optimizer step over this rank's micro-batches; loss, accuracy and mask rate of the global batch.

    Each micro-batch's loss is weighted by its share of the global batch's predictions
    (times the number of ranks, since DDP averages), so the gradient is that of the
    mean loss over every masked token of the step, however the batch is split.
    ``model`` is the DDP-wrapped model under several processes: gradients are then
    synchronised once, at the last micro-step.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    mine = batch.micro_batches
    predictions, maskable = all_reduce_sum(
        [sum(m.predictions for m in mine), sum(m.maskable for m in mine)], dist
    )
    loss_sum = torch.zeros((), device=dist.device)
    correct = torch.zeros((), device=dist.device, dtype=torch.long)
    for index, micro in enumerate(mine):
        micro = micro.to(dist.device)
        torch.manual_seed(_seed(seed, DROPOUT_STREAM, batch.step, index * dist.world_size + dist.rank))
        with model.no_sync() if index < len(mine) - 1 and dist.world_size > 1 else nullcontext():
            with autocast:
                out = model(micro.input_ids, micro.cu_seqlens, micro.max_seqlen, micro.labels)
            (out.loss * (micro.predictions * dist.world_size / max(predictions, 1.0))).backward()
        loss_sum += out.loss.detach().float() * micro.predictions
        correct += (out.logits.detach().argmax(-1) == micro.labels[micro.labels != IGNORE_INDEX]).sum()
        if crash_at == (batch.step, index):
            os.kill(os.getpid(), signal.SIGKILL)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_total, correct_total = all_reduce_sum([loss_sum.item(), correct.item()], dist)
    return {
        "loss": loss_total / max(predictions, 1.0),
        "accuracy": correct_total / max(predictions, 1.0),
        "mask_rate": predictions / max(maskable, 1.0),
    }


def open_phase(config: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and its tokenizer record, once every shard is found at its recorded size (and hash)."""
    try:
        manifest = load_manifest(config.manifest)
    except MixtureError as err:
        raise ConfigError(str(err)) from err
    tokenizer = tokenizer_record(manifest, config.manifest)
    problems = validate_manifest(config.manifest, check_hashes=config.verify)
    if problems:
        shown = "\n  ".join(problems[:PROBLEMS_SHOWN])
        raise ConfigError(f"{config.manifest}: {len(problems)} problem(s) with its data:\n  {shown}")
    return manifest, tokenizer


def find_start(config: TrainConfig, manifest: dict, tokenizer: dict, resume: bool, force: bool, say) -> Start:
    """A checkpoint of this run (``--resume``), else ``--init``, else a new model of the preset."""
    run = Path(config.out)
    if not resume:
        if checkpoint_dirs(run):
            raise ConfigError(
                f"{run} already holds checkpoints; pass --resume to continue that run "
                "or choose another --output"
            )
    elif (found := latest_checkpoint(run, say)) is not None:
        path, state = found
        _check_resume(config, manifest, state, force, say)
        shape = ModelConfig.from_dict(read_json_object(path / "config.json"), where=str(path / "config.json"))
        return Start(shape, checkpoint=found)
    else:
        say(f"no checkpoint in {run}: starting the run")
    if not config.init:
        return Start(model_config(config, tokenizer, None))
    init = read_init(config.init)
    if init.tokenizer and init.tokenizer.get("sha256") != tokenizer["sha256"] and not force:
        raise ConfigError(
            f"--init {config.init} was trained on data tokenized with {init.tokenizer.get('name')}, this "
            f"manifest with {tokenizer['name']} (different tokenizer.json); pass --force to start anyway"
        )
    return Start(model_config(config, tokenizer, init.config), init=init)


def make_loader(config: TrainConfig, manifest: dict, tokenizer: dict, dist: Dist) -> MixtureLoader:
    """The phase's loader for this rank, masking with the tokenizer's special ids."""
    training, special = config.training, tokenizer["special_ids"]
    return MixtureLoader(
        MixtureData(manifest, seed=config.seed),
        seq_len=training.seq_len,
        micro_batch_tokens=config.micro_batch_tokens,
        batch_size_at=lambda tokens: batch_size_at(tokens, training),
        masking=Masking(
            training.mask_rate, special["mask"], tuple(special.values()), tokenizer["vocab_size"]
        ),
        seed=config.seed,
        pad_id=special["pad"],
        rank=dist.rank,
        world_size=dist.world_size,
        fixed_shapes=config.compile,
    )


def _check_resume(config: TrainConfig, manifest: dict, state: dict, force: bool, say) -> None:
    """Refuse to continue a checkpoint made for another manifest or with other settings, unless forced."""
    recorded = state["manifest"]["fingerprint"]
    if recorded != manifest["fingerprint"]:
        message = (
            f"the checkpoint was made for manifest {state['manifest']['path']} "
            f"(fingerprint {recorded[:16]}...), not {config.manifest} ({manifest['fingerprint'][:16]}...)"
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


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _crash_point() -> tuple[int, int] | None:
    value = os.environ.get("MMBERT_TRAIN_CRASH_AT")
    if not value:
        return None
    step, micro = value.split(":")
    return int(step), int(micro)


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


def _banner(
    config: TrainConfig, manifest: dict, model: ModernBertMLM, loader: MixtureLoader, dist: Dist
) -> list[str]:
    """What the run is about to do, and what it does that the user may not expect."""
    training = config.training
    micro = micro_batches(training.batch_size, training.seq_len, config.micro_batch_tokens)
    lines = [
        f"{config.phase}: {len(loader.data.streams)} streams of {manifest['tokenizer']['name']}, "
        f"{config.tokens:,} tokens to train; batch {training.batch_size} x {training.seq_len} tokens "
        f"= {micro} micro-batch(es) of {config.micro_batch_tokens:,} per step; "
        f"model {config.model or 'from --init'} ({model.num_parameters() / 1e6:.2f}M parameters, "
        f"vocab {model.config.vocab_size}); {dist.world_size} process(es) on {dist.device.type}, "
        f"{config.precision}"
    ]
    planned = manifest["sampling"]["tokens"]
    if config.tokens > planned:
        lines.append(
            f"note: the manifest was compiled for {planned:,} tokens; training {config.tokens:,} repeats "
            f"every stream {config.tokens / planned:.2g}x as often as its expected_epochs say"
        )
    if micro % dist.world_size:
        lines.append(
            f"note: {micro} micro-batch(es) per step do not divide among {dist.world_size} processes, "
            "so some wait for the others; raise --batch-size or lower --micro-batch-tokens"
        )
    return lines
