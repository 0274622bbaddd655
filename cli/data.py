"""`mmbert-data`: build per-language token shards, inspect them, compile mixtures."""

from __future__ import annotations

import json
import os
import traceback

# datatrove logs with loguru: keep its console output to warnings and errors (each task's full
# log stays in OUTPUT/PHASE/_logs), and print failures without variable dumps.
os.environ.setdefault("LOGURU_LEVEL", "WARNING")
os.environ.setdefault("LOGURU_DIAGNOSE", "NO")

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from cli.mixture import mixture, validate
from cli.options import choices
from cli.shard import inspect
from mixtures.recipe import DEFAULT_RECIPE, LID_BACKENDS, load_recipe
from pipeline.errors import ON_ERROR_CHOICES, USER_ERRORS

app = typer.Typer(
    help="The mmBERT data pipeline: build per-language Arrow token shards from FineWeb2, DCLM, Dolmino, "
    "Wikipedia and ArXiv, then compile phase mixtures from their statistics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


Lid = choices("Lid", LID_BACKENDS)
OnError = choices("OnError", ON_ERROR_CHOICES)


class Executor(str, Enum):
    local = "local"
    slurm = "slurm"


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


@app.command()
def build(
    phase: str = typer.Option(..., help="Which phase of the recipe to build (one of its `phases`)."),
    recipe: Path = typer.Option(DEFAULT_RECIPE, help="Recipe YAML (sources, languages, filters, budgets)."),
    output: Path = typer.Option(
        Path("runs/build"), "--output", "-o", help="Output root; shards go to OUTPUT/PHASE/..."
    ),
    sources: str = typer.Option(
        None, help="Comma-separated subset of the phase's sources, e.g. fineweb2,wikipedia."
    ),
    languages: str = typer.Option(
        None,
        help="Comma-separated languages instead of the phase's: ISO 639-3 (fra) or with script (srp_Latn).",
    ),
    input_root: str = typer.Option(
        None,
        help="Local mirror of the hub: hf://datasets/<repo>/... is read from INPUT_ROOT/datasets/<repo>/...",
    ),
    tokenizer: str = typer.Option(
        None,
        help="tokenizer.json path, hub name, or sample:DIR (a BPE trained on DIR). Default: the recipe's.",
    ),
    lid: Lid = typer.Option(
        None, help="Language ID: trust the source's labels, or run GlotLID / fastText LID-176."
    ),
    lid_model: str = typer.Option(
        None, help="Local model file for --lid glotlid/ft176 instead of the default."
    ),
    filter_configs: str = typer.Option(
        None, help="Directory of FineWeb2-format {lang}_{Script}.yml thresholds."
    ),
    dedup: bool = typer.Option(
        None, "--dedup/--no-dedup", help="MinHash near-duplicate removal per language."
    ),
    rehydrate: bool = typer.Option(
        None, "--rehydrate/--no-rehydrate", help="FineWeb2-style repetition by cluster size."
    ),
    keep_removed: bool = typer.Option(
        False, help="Write dropped documents to OUTPUT/PHASE/removed/ for audit."
    ),
    overwrite: bool = typer.Option(
        False, help="Delete what OUTPUT/PHASE holds and build it from scratch (a rerun otherwise resumes)."
    ),
    on_error: OnError = typer.Option(
        OnError.fail, help="Bad input: stop naming the file/line, or skip and report it."
    ),
    executor: Executor = typer.Option(
        Executor.local, help="Run tasks as local processes or Slurm array jobs."
    ),
    tasks: int = typer.Option(4, min=1, help="Number of tasks the input is split into (the unit of resume)."),
    workers: int = typer.Option(1, min=1, help="Local tasks run at the same time."),
    partition: str = typer.Option("cpu", help="Slurm partition."),
    slurm_time: str = typer.Option("24:00:00", help="Slurm time limit per task."),
    cpus_per_task: int = typer.Option(1, min=1, help="Slurm CPUs per task."),
    limit: int = typer.Option(-1, help="Read at most this many documents per source per task (-1: all)."),
    dry_run: bool = typer.Option(False, help="Print the stage graph and the files it would read, then stop."),
    verbose: bool = typer.Option(
        False, help="Copy every task's log and tracebacks to the console (always in OUTPUT/PHASE/_logs)."
    ),
) -> None:
    """Build one phase's per-language token shards and stats.json. Rerunning the same command resumes;
    rerunning with other settings is refused (see OUTPUT/PHASE/build.json) unless --overwrite."""
    from pipeline.build import Build, BuildOptions, SlurmOptions
    from pipeline.stats import print_stats

    try:
        options = BuildOptions(
            recipe=load_recipe(recipe),
            phase=phase,
            output=output,
            sources=_split(sources),
            languages=_split(languages),
            input_root=input_root,
            tokenizer=tokenizer,
            lid=lid.value if lid else None,
            lid_model=lid_model,
            filter_configs=filter_configs,
            dedup=dedup,
            rehydrate=rehydrate,
            keep_removed=keep_removed,
            overwrite=overwrite,
            on_error=on_error.value,
            limit=limit,
            tasks=tasks,
            workers=workers,
            verbose=verbose,
            executor=executor.value,
            slurm=SlurmOptions(
                partition=partition,
                time=slurm_time,
                cpus_per_task=cpus_per_task,
                venv_path=os.environ.get("VIRTUAL_ENV"),
            ),
        )
        build = Build(options)
        if dry_run:
            typer.echo(build.describe())
            return
        stats = build.run(
            on_stage=_announce_stage, say=lambda note: console.print(escape(note), soft_wrap=True)
        )
    except USER_ERRORS as err:
        if verbose:
            traceback.print_exc()
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if stats is None:
        typer.echo(f"submitted; stats.json appears in {build.phase_dir} when the last job finishes")
        return
    print_stats(stats, Console())
    typer.echo(f"wrote {build.phase_dir / 'stats.json'}")


def _announce_stage(name: str, tasks: int, done: int) -> None:
    resumed = f", {done} already done" if done else ""
    console.print(f"[bold]stage {name}[/]: {tasks} task{'s' if tasks != 1 else ''}{resumed}")


@app.command()
def download(
    phase: str = typer.Option(..., help="Which phase of the recipe to mirror the files of."),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        "--to",
        help="Mirror directory; build from it later with --input-root DIR. (--to: an older spelling.)",
    ),
    recipe: Path = typer.Option(DEFAULT_RECIPE, help="Recipe YAML."),
    sources: str = typer.Option(None, help="Comma-separated subset of the phase's sources."),
    languages: str = typer.Option(None, help="Comma-separated languages instead of the phase's."),
) -> None:
    """Mirror just the files a phase needs (per language), resumable and size-checked."""
    from pipeline.build import Build, BuildOptions
    from pipeline.download import download_phase

    try:
        build = Build(
            BuildOptions(
                recipe=load_recipe(recipe),
                phase=phase,
                output=output,
                sources=_split(sources),
                languages=_split(languages),
            )
        )
        result = download_phase(
            build.input_files(), output, progress=lambda path, size: console.print(f"{size:>12,d}  {path}")
        )
    except (*USER_ERRORS, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"copied {result.copied} file(s) ({result.bytes:,d} bytes), {result.skipped} already present")


@app.command()
def stats(
    path: Path = typer.Argument(..., help="A phase directory (OUTPUT/PHASE) or its stats.json."),
    top: int = typer.Option(None, "--top", min=1, help="Only the N streams with the most tokens."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the rows and totals as JSON (for scripts) instead of a table."
    ),
) -> None:
    """Print a build's per-(source, language) statistics as a table."""
    from mixtures.counts import load_stats
    from pipeline.stats import print_stats, stats_summary

    try:
        loaded = load_stats(path)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if as_json:
        typer.echo(json.dumps(stats_summary(loaded, top), indent=1, ensure_ascii=False))
    else:
        print_stats(loaded, Console(), top)


app.command()(mixture)
app.command()(validate)
app.command()(inspect)

if __name__ == "__main__":
    app()
