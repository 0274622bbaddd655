"""What a build can be told: `mmbert-data build`'s options, each with its default and help text.

A field's ``help`` metadata is its ``--help`` text. ``cli/data.py`` makes each typer option from
its field (``cli.options.field_option``) and these options from the command's parameters, so a
new build flag is one field here and one line there. This module imports no datatrove, so
every command can read it at startup without loading the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mixtures.recipe import Recipe

if TYPE_CHECKING:  # made by `_default_minhash` when a build is set up
    from datatrove.pipeline.dedup.minhash import MinhashConfig


def _default_minhash() -> MinhashConfig:
    """datatrove's default MinHash settings."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    return MinhashConfig()


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how the stages run as Slurm array jobs (``--executor slurm``)."""

    partition: str = field(default="cpu", metadata={"help": "Slurm partition."})
    time: str = field(default="24:00:00", metadata={"help": "Slurm time limit per task."})
    cpus_per_task: int = field(default=1, metadata={"help": "Slurm CPUs per task."})
    mem_per_cpu_gb: int = 2
    venv_path: str | None = None


@dataclass
class BuildOptions:
    """Everything `mmbert-data build` can be told; None means "as the recipe says"."""

    recipe: Recipe
    phase: str = field(metadata={"help": "Which phase of the recipe to build (one of its `phases`)."})
    output: Path = field(
        default=Path("runs/build"), metadata={"help": "Output root; shards go to OUTPUT/PHASE/..."}
    )
    sources: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "Comma-separated subset of the phase's sources, e.g. fineweb2,wikipedia."},
    )
    languages: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "Comma-separated languages instead of the phase's: "
            "ISO 639-3 (fra) or with script (srp_Latn)."
        },
    )
    input_root: str | None = field(
        default=None,
        metadata={
            "help": "Local mirror of the hub: hf://datasets/<repo>/... is read from "
            "INPUT_ROOT/datasets/<repo>/..."
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "tokenizer.json path, hub name, or sample:DIR (a BPE trained on DIR). "
            "Default: the recipe's."
        },
    )
    lid: str | None = field(
        default=None,
        metadata={"help": "Language ID: trust the source's labels, or run GlotLID / fastText LID-176."},
    )
    lid_model: str | None = field(
        default=None, metadata={"help": "Local model file for --lid glotlid/ft176 instead of the default."}
    )
    filter_configs: str | None = field(
        default=None, metadata={"help": "Directory of FineWeb2-format {lang}_{Script}.yml thresholds."}
    )
    dedup: bool | None = field(
        default=None, metadata={"help": "MinHash near-duplicate removal per language."}
    )
    rehydrate: bool | None = field(
        default=None, metadata={"help": "FineWeb2-style repetition by cluster size."}
    )
    keep_removed: bool = field(
        default=False, metadata={"help": "Write dropped documents to OUTPUT/PHASE/removed/ for audit."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Delete what OUTPUT/PHASE holds and build it from scratch (a rerun otherwise resumes)."
        },
    )
    on_error: str = field(
        default="fail", metadata={"help": "Bad input: stop naming the file/line, or skip and report it."}
    )
    limit: int = field(
        default=-1, metadata={"help": "Read at most this many documents per source per task (-1: all)."}
    )
    tasks: int = field(
        default=4, metadata={"help": "Number of tasks the input is split into (the unit of resume)."}
    )
    workers: int = field(default=1, metadata={"help": "Local tasks run at the same time."})
    progress: bool = True
    verbose: bool = field(
        default=False,
        metadata={
            "help": "Copy every task's log and tracebacks to the console (always in OUTPUT/PHASE/_logs)."
        },
    )
    executor: str = field(
        default="local", metadata={"help": "Run tasks as local processes or Slurm array jobs."}
    )
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    minhash: MinhashConfig = field(default_factory=_default_minhash)
