"""What the command line can change in a run: ``mmbert-train``'s flags, each stated once.

Each field carries its ``--help`` text and whether it changes the result, so the
typer command (``cli/train.py``) builds its options from here, ``resolve``
(``trainer/config.py``) applies them, and ``TrainConfig.differences`` knows which
settings a resumed run must keep. Light on purpose (no torch), so that
``mmbert-train --help`` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def flag(help: str, default: Any = None, *, result: bool = False) -> Any:
    """A field that is a flag of ``mmbert-train``: its ``--help`` text, and whether it changes the result.

    A setting that changes the result must be the same when a run resumes
    (``TrainConfig.differences``); the others (where to save, how often) may change.
    Its help says so.
    """
    if result:
        help += " Must match on --resume."
    return field(default=default, metadata={"help": help, "changes_result": result})


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The settings of a run that its manifest does not carry, each a flag taken as given."""

    model: str | None = flag("tiny | small | base (default: base, or the --init model's shape).", result=True)
    attn_backend: str = flag("Attention backend: auto | flash | flex | sdpa | dense.", "auto", result=True)
    compile: bool = flag("torch.compile the model (fixed batch shapes).", False, result=True)
    precision: str | None = flag("fp32 | bf16 (default: bf16 on a GPU, fp32 on the CPU).", result=True)
    parallel: str = flag(
        "Under torchrun: ddp (a whole model per process) | fsdp (FSDP2: weights, gradients and "
        "optimizer state sharded over the processes). Checkpoints are the same either way.",
        "ddp",
    )
    init: str | None = flag(
        "Start from a model: a run directory or checkpoint of the previous phase, a model directory, "
        "or a transformers ModernBERT directory."
    )
    keep: int | None = flag("Keep only the newest N checkpoints.", 3)
    verify: bool = flag("Before training, hash every shard against the manifest (reads all the data).", False)
    cache_dir: str | None = flag(
        "For data at s3:// or hf:// (a manifest's data root, eval's --data): the local directory each "
        "shard is fetched into on first use, once per node (default: MMBERT_DATA_CACHE/shards)."
    )


@dataclass(frozen=True, kw_only=True)
class Overrides(RunOptions):
    """What the command line says: the run options, and changes to the manifest's settings (None: none).

    ``mmbert-train`` builds one from its flags and :func:`resolve` applies it; a
    new flag is one field here (or in :class:`RunOptions`) and its typer option.
    """

    tokens: str | int | None = flag(
        "Train this many tokens (k/M/B/T); the schedule scales with it.", result=True
    )
    batch_size: int | None = flag("Sequences of seq_len tokens per optimizer step.", result=True)
    micro_batch_tokens: int | None = flag(
        "Tokens per packed micro-batch (default: max(8192, 2 x seq_len)).", result=True
    )
    lr: float | None = flag("Peak learning rate (the schedule's shape stays).", result=True)
    seed: int | None = flag(
        "Seed of data order, masks, dropout and init (default: the manifest's).", result=True
    )
    save_every: str | None = flag("Checkpoint every N tokens (50M) or every T (30min, 2h). Default: 30min.")
    eval_every: str | None = flag(
        "Evaluate on the build's held-out documents every N tokens (k/M/B/T): the group means go into "
        "metrics.jsonl and the loss plot. Every phase ends with an evaluation anyway (RUN/eval.json)."
    )
    settings: tuple[str, ...] = flag(
        "Set any key of the phase's training section, e.g. training.lr.peak=1e-3 or "
        "training.optimizer.betas=[0.9,0.98] (applied after --tokens scales the schedule; repeatable).",
        (),
        result=True,
    )
