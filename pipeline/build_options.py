"""What a build can be told: `mmbert-data build`'s options, each with its default and help text.

A field's ``help`` metadata is its ``--help`` text. ``cli/data.py`` makes each typer option from
its field (``cli.options.field_option``) and these options from the command's parameters, so a
new build flag is one field here and one line there. This module imports no datatrove, so
every command can read it at startup without loading the pipeline.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixtures.formats import BUILD_OUTPUT
from mixtures.recipe import Recipe

if TYPE_CHECKING:  # made by `_default_minhash` when a build is set up
    from datatrove.pipeline.dedup.minhash import MinhashConfig


def _default_minhash() -> MinhashConfig:
    """datatrove's default MinHash settings."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    return MinhashConfig()


def flag(help: str, default: Any = MISSING) -> Any:
    """A field that is a build flag: its default (none: required) and its ``--help`` text."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how the stages run as Slurm array jobs (``--executor slurm``)."""

    partition: str = flag("Slurm partition.", "cpu")
    time: str = flag("Slurm time limit per task.", "24:00:00")
    cpus_per_task: int = flag("Slurm CPUs per task.", 1)
    mem_per_cpu_gb: int = flag("Slurm memory per CPU, in GB.", 2)
    qos: str | None = flag("Slurm QoS of the jobs (default: the cluster's).", None)
    account: str | None = flag("Slurm account the jobs are charged to (default: the cluster's).", None)
    env: str | None = flag(
        "Shell line each job runs first to enter the Python environment, e.g. 'source ENV/bin/activate' "
        "or 'conda activate ENV' (default: activate the one running this command).",
        None,
    )
    sbatch_args: tuple[str, ...] = flag(
        "Another sbatch argument of every job, in its long form, e.g. --exclusive or --constraint=cpu "
        "(repeatable).",
        (),
    )

    def __post_init__(self) -> None:
        for argument in self.sbatch_args:
            if not argument.startswith("--") or len(argument.split("=")[0]) < 3:
                raise ValueError(
                    f"--sbatch-arg {argument!r}: use the long form, e.g. --exclusive or --constraint=cpu"
                )


@dataclass
class BuildOptions:
    """Everything `mmbert-data build` can be told; None means "as the recipe says"."""

    recipe: Recipe
    phase: str = flag("Which phase of the recipe to build (one of its `phases`).")
    output: str | Path = flag(
        "Output root, a path or s3://bucket/prefix (the hub is not written); shards go to OUTPUT/PHASE/...",
        BUILD_OUTPUT,
    )
    staging: Path | None = flag(
        "With an s3:// --output: the local directory the build is made and resumed in before each file "
        "is uploaded (default: under MMBERT_DATA_CACHE; on Slurm, one every node shares).",
        None,
    )
    sources: tuple[str, ...] | None = flag(
        "Comma-separated subset of the phase's sources, e.g. fineweb2,wikipedia.", None
    )
    languages: tuple[str, ...] | None = flag(
        "Comma-separated languages instead of the phase's: ISO 639-3 (fra) or with script (srp_Latn).", None
    )
    input_root: str | None = flag(
        "A mirror of the hub, a path or s3:// URL: hf://datasets/<repo>/... is read from "
        "INPUT_ROOT/datasets/<repo>/...",
        None,
    )
    tokenizer: str | None = flag(
        "tokenizer.json path, hub name, or sample:DIR (a BPE trained on DIR). Default: the recipe's.", None
    )
    lid: str | None = flag("Language ID: trust the source's labels, or run GlotLID / fastText LID-176.", None)
    lid_model: str | None = flag("Local model file for --lid glotlid/ft176 instead of the default.", None)
    filter_configs: str | None = flag("Directory of FineWeb2-format {lang}_{Script}.yml thresholds.", None)
    dedup: bool | None = flag("MinHash near-duplicate removal per language.", None)
    rehydrate: bool | None = flag("FineWeb2-style repetition by cluster size.", None)
    keep_removed: bool = flag("Write dropped documents to OUTPUT/PHASE/removed/ for audit.", False)
    overwrite: bool = flag(
        "Delete what OUTPUT/PHASE holds and build it from scratch (a rerun otherwise resumes).", False
    )
    on_error: str = flag("Bad input: stop naming the file/line, or skip and report it.", "fail")
    limit: int = flag("Read at most this many documents per source per task (-1: all).", -1)
    tasks: int = flag("Number of tasks the input is split into (the unit of resume).", 4)
    workers: int | None = flag(
        "At the same time: local processes (default 1), or the Slurm arrays' % limit (default: none).",
        None,
    )
    verbose: bool = flag(
        "Copy every task's log and tracebacks to the console (always in OUTPUT/PHASE/_logs).", False
    )
    executor: str = flag("Run tasks as local processes or Slurm array jobs.", "local")
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    minhash: MinhashConfig = field(default_factory=_default_minhash)
