"""One phase of training, start to finish: ``mmbert-train --manifest M`` calls :func:`train`.

The loop composes the trainer's parts: ``config`` (what to run), ``data`` (steps
of packed, masked micro-batches, prepared on a background thread), ``optim`` and
``schedule`` (StableAdamW at the schedule's learning rate), ``checkpoint`` (the
run's lock, where the run starts, when and how it is saved: atomic, exact),
``distributed`` (the processes), ``parallel`` (DDP or FSDP2), ``metrics``, and ``eval``
(held-out evaluation at ``--eval-every`` marks and at the end of the phase).

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
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixtures.formats import TokenizerRecord
from mixtures.manifest import Manifest
from trainer.checkpoint import Checkpointer, RunLock, Start, TrainState, find_start
from trainer.config import TrainConfig, for_device, tokenizer_record
from trainer.data import MixtureData, MixtureLoader, Prefetcher, StepBatch
from trainer.distributed import Dist, all_reduce_sum, close, init_distributed, main_first
from trainer.eval import PhaseEval
from trainer.masking import Masking
from trainer.metrics import Meter, cannot_write, flops_per_token, peak_flops
from trainer.model import IGNORE_INDEX, ModernBertMLM
from trainer.optim import make_optimizer
from trainer.parallel import gradient_sync, parallelize
from trainer.plot import LOSS_PLOT_NAME, plot_runs
from trainer.schedule import batch_size_at, describe_step, lr_at, micro_batch_sizes

DROPOUT_STREAM = 4  # keeps dropout's seeds apart from the loader's


class StopRequest:
    """SIGTERM, SIGUSR1 (Slurm's warning before preemption) or Ctrl-C: finish the step, checkpoint, exit.

    A second Ctrl-C stops at once, without a checkpoint.
    """

    def __init__(self):
        self.signal: int | None = None
        for number in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(number, self._handle)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, number: int, frame: Any) -> None:
        if number == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        if number == signal.SIGINT:
            print("stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        self.signal = number


def train(
    config: TrainConfig,
    manifest: Manifest,
    *,
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
) -> Path:
    """Train one phase of ``manifest`` as ``config`` (resolved from it) says; return the run directory.

    Errors before training: ConfigError, CheckpointError, DataError; during it, CheckpointError
    (a save that cannot be written, a run another process took over).
    """
    dist = init_distributed(device)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if dist.main else (lambda line: None)
    try:
        config, tokenizer = for_device(config, dist.device), tokenizer_record(manifest)
        with ExitStack() as held:

            def begin() -> tuple[RunLock | None, Start]:
                """Rank 0 locks the run; then each rank finds where it starts."""
                lock = held.enter_context(RunLock(Path(config.out))) if dist.main else None
                if lock is not None and lock.taken_over:
                    say(lock.takeover_note())
                return lock, find_start(config, manifest, tokenizer, resume, force, say)

            lock, start = main_first(dist, begin)
            return _train(config, manifest, tokenizer, dist, start, lock, say)
    finally:
        close(dist)


def _train(
    config: TrainConfig,
    manifest: Manifest,
    tokenizer: TokenizerRecord,
    dist: Dist,
    start: Start,
    lock: RunLock | None,
    say: Callable[[str], None],
) -> Path:
    stop = StopRequest()
    run, training = Path(config.out), config.training

    # ---- the parts: model, optimizer, data, and where they start ---------------------------------------
    torch.manual_seed(config.seed)
    model = ModernBertMLM(start.shape, attn_backend=config.attn_backend).to(dist.device)
    if config.compile:  # layer by layer, as torchtitan does: small graphs, the same for every layer kind
        for layer in model.model.layers:
            layer.compile()
    parallel = parallelize(model, dist, config.parallel)  # before the optimizer: FSDP2 swaps the parameters
    optimizer, state = make_optimizer(model, training), TrainState()
    loader = make_loader(config, manifest, tokenizer, dist)
    checkpointer = Checkpointer(
        config, manifest, tokenizer, dist, lock, model=model, optimizer=optimizer, loader=loader, state=state
    )
    checkpointer.restore(start, say)
    flops = flops_per_token(start.shape, training.seq_len, training.mask_rate)
    peak = peak_flops(dist.device, config.precision)
    guard = lock.check if lock is not None else None
    meter = Meter(run, config.phase, config.tokens, flops, peak, enabled=dist.main, guard=guard)
    meter.resume_at(state.step)  # the steps up to the start, none for a new run
    for line in _banner(config, manifest, model, loader, dist):
        say(line)
    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    train_step = TrainStep(parallel, optimizer, dist, autocast, config.seed, crash_hook())
    evaluation = PhaseEval.for_run(config, manifest, dist, say)  # None: the build holds nothing out
    if start.checkpoint is not None and state.tokens >= config.tokens:  # finished before: a rerun
        finished = start.checkpoint[0]
        if (evaluation is None or evaluation.evaluated(run, finished)) and (run / LOSS_PLOT_NAME).exists():
            say(f"done before: {state.tokens:,} tokens in {state.step} steps; model {finished}")
            return run

    # ---- the loop ----------------------------------------------------------------------------------------
    model.train()
    prefetch = Prefetcher(loader)
    try:
        for batch in prefetch if state.tokens < config.tokens else ():
            lr = lr_at(batch.tokens_before + batch.tokens, training.lr, config.tokens)
            result = train_step(batch, lr)
            state.advance(batch)
            if evaluation is not None and evaluation.due(batch.tokens_before, state.tokens):
                result |= evaluation.means(model)
            meter.log(batch, result, lr)
            if checkpointer.due(stop.requested):
                saved = checkpointer.save()
                if checkpointer.stopping:
                    say(f"stopped by a signal after step {state.step}; saved {saved}; continue with --resume")
                    raise SystemExit(128 + (stop.signal or signal.SIGTERM))
            if state.tokens >= config.tokens:
                break
    finally:
        prefetch.close()
        meter.close()
    saved = checkpointer.save()
    if evaluation is not None:
        evaluation.finish(model, run, saved, guard, say)
    if dist.main:
        try:
            plot = plot_runs([run], run / LOSS_PLOT_NAME)
        except OSError as err:
            raise cannot_write(
                run / LOSS_PLOT_NAME, err, f"then draw it with `mmbert-train plot {run}`"
            ) from err
        say(f"done: {state.tokens:,} tokens in {state.step} steps; model {saved}; loss curve {plot}")
    return run


@dataclass
class TrainStep:
    """One optimizer step over this rank's micro-batches: ``train_step(batch, lr)`` -> loss, accuracy and
    mask rate of the global batch.

    Each micro-batch's loss is weighted by its share of the global batch's predictions
    (times the number of ranks, since DDP and FSDP2 average), so the gradient is that
    of the mean loss over every masked token of the step, however the batch is split.
    ``model`` is the DDP-wrapped or FSDP2-sharded model under several processes:
    gradients are then reduced once, at the last micro-step. ``after_micro_step(step, micro)``,
    if set, is called after each micro-step (the crash tests' hook).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dist: Dist
    autocast: AbstractContextManager
    seed: int
    after_micro_step: Callable[[int, int], None] | None = None

    def __call__(self, batch: StepBatch, lr: float) -> dict[str, float]:
        model, optimizer, dist = self.model, self.optimizer, self.dist
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
            where = index * dist.world_size + dist.rank  # the micro-batch's index in the global batch
            torch.manual_seed(_seed(self.seed, DROPOUT_STREAM, batch.step, where))
            with gradient_sync(model, sync=index == len(mine) - 1):
                with self.autocast:
                    out = model(micro.input_ids, micro.cu_seqlens, micro.max_seqlen, micro.labels)
                (out.loss * (micro.predictions * dist.world_size / max(predictions, 1.0))).backward()
            loss_sum += out.loss.detach().float() * micro.predictions
            correct += (out.logits.detach().argmax(-1) == micro.labels[micro.labels != IGNORE_INDEX]).sum()
            if self.after_micro_step is not None:
                self.after_micro_step(batch.step, index)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_total, correct_total = all_reduce_sum([loss_sum.item(), correct.item()], dist)
        return {
            "loss": loss_total / max(predictions, 1.0),
            "accuracy": correct_total / max(predictions, 1.0),
            "mask_rate": predictions / max(maskable, 1.0),
        }


def make_loader(
    config: TrainConfig, manifest: Manifest, tokenizer: TokenizerRecord, dist: Dist
) -> MixtureLoader:
    """The phase's loader for this rank, masking with the tokenizer's special ids."""
    training = config.training
    special = tokenizer.special_ids
    return MixtureLoader(
        MixtureData(manifest, seed=config.seed, cache_dir=config.cache_dir),
        seq_len=training.seq_len,
        micro_batch_tokens=config.micro_batch_tokens,
        batch_size_at=lambda tokens: batch_size_at(tokens, training),
        batch_size=training.batch_size,
        masking=Masking(training.mask_rate, special["mask"], tuple(special.values()), tokenizer.vocab_size),
        seed=config.seed,
        pad_id=special["pad"],
        rank=dist.rank,
        world_size=dist.world_size,
        fixed_shapes=config.compile,
    )


def crash_hook() -> Callable[[int, int], None] | None:
    """From ``MMBERT_TRAIN_CRASH_AT=STEP:MICRO``: SIGKILL this process right after that micro-step."""
    value = os.environ.get("MMBERT_TRAIN_CRASH_AT")
    if not value:
        return None
    at = tuple(int(part) for part in value.split(":"))

    def crash(step: int, micro: int) -> None:
        if (step, micro) == at:
            os.kill(os.getpid(), signal.SIGKILL)

    return crash


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _banner(
    config: TrainConfig, manifest: Manifest, model: ModernBertMLM, loader: MixtureLoader, dist: Dist
) -> list[str]:
    """What the run is about to do, and what it does that the user may not expect."""
    training = config.training
    full = (training.batch_size, training.seq_len, config.micro_batch_tokens)
    micro = len(micro_batch_sizes(*full, training.batch_size))
    shape = config.model or f"from --init {config.init}"
    lines = [
        f"{config.phase}: {len(loader.data.streams)} streams of {manifest.tokenizer.name}, "
        f"{config.tokens:,} tokens to train; "
        f"{describe_step(*full)}; "
        f"model {shape} ({model.num_parameters() / 1e6:.2f}M parameters, "
        f"vocab {model.config.vocab_size}); {dist.world_size} process(es)"
        f"{f' ({config.parallel})' if dist.world_size > 1 else ''} on {dist.device.type}, {config.precision}"
    ]
    planned = manifest.sampling.tokens
    if config.tokens > planned:
        lines.append(
            f"note: the manifest was compiled for {planned:,} tokens; training {config.tokens:,} repeats "
            f"every stream {config.tokens / planned:.2g}x as often as its expected_epochs say"
        )
    if micro % dist.world_size:
        smaller = (
            f" or lower --micro-batch-tokens (not below seq_len {training.seq_len})"
            if config.micro_batch_tokens > training.seq_len
            else ""
        )
        lines.append(
            f"note: {micro} micro-batch(es) per step do not divide among {dist.world_size} processes, "
            f"so some wait for the others; raise --batch-size{smaller}"
        )
    return lines
