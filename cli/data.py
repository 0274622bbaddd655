"""`mmbert-data`: build per-language token shards, inspect them, compile mixtures."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import time
import traceback

# datatrove logs with loguru: keep its console output to warnings and errors (each task's full
# log stays in OUTPUT/PHASE/_logs), and print failures without variable dumps.
os.environ.setdefault("LOGURU_LEVEL", "WARNING")
os.environ.setdefault("LOGURU_DIAGNOSE", "NO")
# and without its tqdm bars (one per task and source, read by tqdm when it is imported, so before
# datatrove is): a build shows one bar per stage instead (`_stage_bar`).
os.environ.setdefault("TQDM_DISABLE", "1")

from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from cli.mixture import mixture, validate
from cli.options import choices, field_option, from_params, local_path
from cli.shard import inspect
from mixtures.recipe import DEFAULT_RECIPE, LID_BACKENDS, load_recipe
from pipeline.bad_input import ON_ERROR_CHOICES, USER_ERRORS
from pipeline.build_options import BuildOptions, SlurmOptions

app = typer.Typer(
    help="The mmBERT data pipeline: build per-language Arrow token shards from FineWeb2, DCLM, Dolmino, "
    "Wikipedia and ArXiv, then compile phase mixtures from their statistics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain help, as `mmbert-train` prints it: one style for both commands, and no shell-completion
    # options (whose typer metavars read `--install-completion <bool>`)
    rich_markup_mode=None,
    add_completion=False,
)
console = Console(stderr=True)


Lid = choices("Lid", LID_BACKENDS)
OnError = choices("OnError", ON_ERROR_CHOICES)


class Executor(str, Enum):
    local = "local"
    slurm = "slurm"


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


_option = functools.partial(field_option, BuildOptions)  # a build option, stated in BuildOptions


def _build_options(params: Mapping[str, Any]) -> BuildOptions:
    """BuildOptions from a command's parameters (``ctx.params``), with the command line's own conversions:
    the recipe path loaded, the comma-separated lists split, Slurm's options grouped."""
    return from_params(
        BuildOptions,
        params,
        recipe=load_recipe(params["recipe"]),
        sources=_split(params["sources"]),
        languages=_split(params["languages"]),
        slurm=from_params(SlurmOptions, params, sbatch_args=tuple(params.get("sbatch_args") or ())),
    )


@app.command()
def build(
    ctx: typer.Context,
    phase: str = _option("phase"),
    recipe: Path = typer.Option(DEFAULT_RECIPE, help="Recipe YAML (sources, languages, filters, budgets)."),
    output: str = _option("output", "--output", "-o"),
    staging: Path = _option("staging", callback=local_path),
    sources: str = _option("sources"),
    languages: str = _option("languages"),
    input_root: str = _option("input_root"),
    tokenizer: str = _option("tokenizer"),
    lid: Lid = _option("lid"),
    lid_model: str = _option("lid_model"),
    filter_configs: str = _option("filter_configs"),
    dedup: bool = _option("dedup", "--dedup/--no-dedup"),
    rehydrate: bool = _option("rehydrate", "--rehydrate/--no-rehydrate"),
    keep_removed: bool = _option("keep_removed"),
    overwrite: bool = _option("overwrite"),
    on_error: OnError = _option("on_error"),
    executor: Executor = _option("executor"),
    tasks: int = _option("tasks", min=1),
    workers: int = _option("workers", min=1),
    partition: str = field_option(SlurmOptions, "partition"),
    time: str = field_option(SlurmOptions, "time", "--slurm-time"),
    cpus_per_task: int = field_option(SlurmOptions, "cpus_per_task", min=1),
    mem_per_cpu_gb: int = field_option(SlurmOptions, "mem_per_cpu_gb", min=1),
    qos: str = field_option(SlurmOptions, "qos"),
    account: str = field_option(SlurmOptions, "account"),
    env: str = field_option(SlurmOptions, "env", "--slurm-env"),
    sbatch_args: list[str] = field_option(SlurmOptions, "sbatch_args", "--sbatch-arg"),
    limit: int = _option("limit"),
    dry_run: bool = typer.Option(False, help="Print the stage graph and the files it would read, then stop."),
    verbose: bool = _option("verbose"),
) -> None:
    """Build one phase's per-language token shards and stats.json. Rerunning the same command resumes;
    rerunning with other settings is refused (see OUTPUT/PHASE/build.json) unless --overwrite."""
    from pipeline.build import Build
    from pipeline.stats import print_stats

    try:
        build = Build(_build_options(ctx.params))
        if dry_run:
            typer.echo(build.describe())
            return
        stats = build.run(display=_stage_bar, say=lambda note: console.print(escape(note), soft_wrap=True))
    except KeyboardInterrupt:  # Ctrl-C: completed tasks survive it, so say so rather than exit silently
        from mixtures.slurm import SlurmError, queued_jobs

        try:
            queued = queued_jobs(build.job_tag) if build.options.executor == "slurm" else []
        except SlurmError:  # the rerun's own check asks squeue again before it submits anything
            queued = []
        if queued:  # interrupted while submitting: what went in is in the queue
            typer.echo(
                f"interrupted: jobs {', '.join(queued)} of this build were submitted and are queued; wait "
                "for them (`mmbert-data status --wait`) or scancel them, then run the same command again",
                err=True,
            )
        else:
            typer.echo(
                f"interrupted: the finished tasks are kept in {build.phase_dir}; "
                "run the same command again to resume (a task cut off midway is redone)",
                err=True,
            )
        raise typer.Exit(130) from None
    except USER_ERRORS as err:
        if verbose:
            traceback.print_exc()
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if stats is None:
        if build.published:
            typer.echo(
                f"submitted; when the last job finishes ({build.phase_dir}/stats.json appears), run the same "
                f"command again to publish to {build.published}"
            )
        else:
            typer.echo(f"submitted; stats.json appears in {build.phase_dir} when the last job finishes")
        return
    print_stats(stats, Console(), phase_dir=build.published or build.phase_dir)
    if build.publication is not None:
        done = build.publication
        typer.echo(
            f"published {build.phase_dir} to {build.published}: {done.uploaded} file(s) uploaded, "
            f"{done.kept} already there, {len(done.removed)} stray object(s) removed"
            + (
                f" ({', '.join(done.removed[:5])}{', ...' if len(done.removed) > 5 else ''})"
                if done.removed
                else ""
            )
        )
    typer.echo(f"wrote {build.stats_location}")


class _StageFigures(ProgressColumn):
    """``3/4 tasks, 2.0/min, 0:01:30, ETA 0:00:30``: tasks finished, the rate (rich's running
    estimate over its last 30 s, or this run's mean once the stage is done), time spent, time left."""

    def render(self, task: Task) -> Text:
        run = task.completed - task.fields["before"]
        rate = run / task.elapsed if task.finished and task.elapsed else task.speed or 0.0
        per = f"{rate:.1f}/s" if rate >= 1 else f"{rate * 60:.1f}/min" if rate else "-/min"
        spent = datetime.timedelta(seconds=int(task.elapsed or 0))
        if task.finished:
            left = "0:00:00"
        elif task.time_remaining is None:
            left = "-:--:--"
        else:
            left = str(datetime.timedelta(seconds=int(task.time_remaining)))
        figures = f"{task.completed:.0f}/{task.total:.0f} tasks, {per}, {spent}, ETA {left}"
        return Text(figures, no_wrap=True, overflow="ellipsis")


@contextlib.contextmanager
def _stage_bar(name: str, tasks: int, done: int) -> Iterator[Callable[[int], None]]:
    """One bar for a build stage: tasks finished of all, their rate, time spent and ETA.

    On a terminal it redraws in place; in a log (not a terminal) rich prints it once, finished.
    """
    if done == tasks:
        console.print(f"[bold]stage {escape(name)}[/]: done before ({tasks} task{'s' if tasks != 1 else ''})")
        yield lambda finished: None
        return
    resumed = f" ({done} done before)" if done else ""
    with Progress(
        TextColumn(f"[bold]stage {escape(name)}[/]{resumed}"),
        BarColumn(bar_width=12),
        _StageFigures(),
        console=console,
    ) as progress:
        bar = progress.add_task(name, total=tasks, completed=done, before=done)
        yield lambda finished: progress.update(bar, completed=finished)


@app.command()
def download(
    ctx: typer.Context,
    phase: str = typer.Option(..., help="Which phase of the recipe to mirror the files of."),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        "--to",
        help="Mirror directory; build from it later with --input-root DIR. (--to: an older spelling.)",
        callback=local_path,
    ),
    recipe: Path = typer.Option(DEFAULT_RECIPE, help="Recipe YAML."),
    sources: str = _option("sources"),
    languages: str = _option("languages"),
    executor: Executor = typer.Option(
        Executor.local, help="Copy here, one file after another, or as the tasks of a Slurm array job."
    ),
    tasks: int = typer.Option(16, min=1, help="Slurm tasks the files are shared out over."),
    workers: int = typer.Option(None, min=1, help="Slurm tasks running at once (default: all)."),
    partition: str = field_option(SlurmOptions, "partition"),
    time: str = field_option(SlurmOptions, "time", "--slurm-time"),
    cpus_per_task: int = field_option(SlurmOptions, "cpus_per_task", min=1),
    mem_per_cpu_gb: int = field_option(SlurmOptions, "mem_per_cpu_gb", min=1),
    qos: str = field_option(SlurmOptions, "qos"),
    account: str = field_option(SlurmOptions, "account"),
    env: str = field_option(SlurmOptions, "env", "--slurm-env"),
    sbatch_args: list[str] = field_option(SlurmOptions, "sbatch_args", "--sbatch-arg"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the files (size, place in DIR) and the total size; copy nothing."
    ),
) -> None:
    """Mirror just the files a phase needs (per language), resumable, size- and checksum-checked:
    here, or on Slurm (rerun the same command to resubmit only unfinished tasks;
    `mmbert-data status DIR`)."""
    from pipeline.build import Build
    from pipeline.download import download_phase, plan_download, submit_download
    from pipeline.slurm import submitted_line

    try:
        options = _build_options(ctx.params)
        inputs = Build(options).input_files(downloading=True)
        if dry_run:
            planned = plan_download(inputs, output)
            for file in planned:
                typer.echo(f"{file.size:>12,d}  {file.path}{'  (present)' if file.present else ''}")
            missing = [f for f in planned if not f.present]
            typer.echo(
                f"{len(planned)} file(s), {sum(f.size for f in planned):,d} bytes; to copy: "
                f"{len(missing)} file(s), {sum(f.size for f in missing):,d} bytes"
            )
            return
        if executor == Executor.slurm:
            submitted = submit_download(options, inputs, output)
            typer.echo(submitted_line("download", submitted))
            return
        result = download_phase(
            inputs, output, progress=lambda path, size: console.print(f"{size:>12,d}  {path}", soft_wrap=True)
        )
    except (*USER_ERRORS, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"copied {result.copied} file(s) ({result.bytes:,d} bytes), {result.skipped} already present")


@app.command()
def stats(
    path: str = typer.Argument(
        ..., help="A phase directory (OUTPUT/PHASE) or its stats.json: a path, or an s3:// or hf:// URL."
    ),
    top: int = typer.Option(None, "--top", min=1, help="Only the N streams with the most tokens."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the rows and totals as JSON (for scripts) instead of a table."
    ),
) -> None:
    """Print a build's per-(source, language) statistics as a table."""
    from mixtures.counts import load_stats
    from mixtures.storage import is_remote, parent
    from pipeline.stats import print_stats, stats_summary

    try:
        loaded = load_stats(path)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if as_json:
        typer.echo(json.dumps(stats_summary(loaded, top), indent=1, ensure_ascii=False))
    else:
        a_file = path.rstrip("/").endswith("/stats.json") if is_remote(path) else not Path(path).is_dir()
        print_stats(loaded, Console(), top, parent(path) if a_file else path)


@app.command()
def status(
    run_dir: Path = typer.Argument(
        ...,
        help="A build's --output (every phase in it), one phase (OUTPUT/PHASE), or a download's mirror "
        "(for an s3:// build: its --staging directory).",
        callback=local_path,
    ),
    wait: bool = typer.Option(
        False, "--wait", help="Wait until no task is queued or running, then exit 1 if any failed or is left."
    ),
    every: float = typer.Option(30.0, min=0.1, help="With --wait: seconds between two looks at the queue."),
) -> None:
    """Per stage, its tasks done, failed, running, pending and unfinished (from OUTPUT/PHASE/_logs or
    MIRROR/_logs, and squeue where it answers), with the last log line of each failed task and how to
    resubmit."""
    from pipeline.status import build_status

    phases, said = build_status(run_dir), None
    while wait and (queued := sum(s.running + s.pending for stages in phases.values() for s in stages)):
        if queued != said:
            console.print(f"waiting: {queued} task(s) queued or running", highlight=False)
            said = queued
        time.sleep(every)
        phases = build_status(run_dir)
    if not phases:
        typer.echo(
            f"error: {run_dir}: no build here (no _logs); pass a build's --output, OUTPUT/PHASE or a mirror",
            err=True,
        )
        raise typer.Exit(1)
    header = ("stage", "tasks", "done", "failed", "running", "pending", "unfinished")
    rerun: dict[str, int] = {}  # the command to run again, and its tasks failed or unfinished
    for phase_dir, stages in phases.items():
        command = "download" if all(s.name.startswith("download-") for s in stages) else "build"
        missing = command == "build" and not (phase_dir / "stats.json").is_file()
        typer.echo(f"{phase_dir.name}: {phase_dir}" + (" (no stats.json yet)" if missing else ""))
        typer.echo(f"  {header[0]:<18}" + "".join(f"{h:>11}" for h in header[1:]))
        for stage in stages:
            figures = (stage.tasks, stage.done, stage.failed, stage.running, stage.pending, stage.unfinished)
            typer.echo(f"  {stage.name:<18}" + "".join(f"{n:>11}" for n in figures))
            if stage.failed + stage.unfinished:
                rerun[command] = rerun.get(command, 0) + stage.failed + stage.unfinished
        for stage in stages:
            for rank, error in stage.errors.items():
                typer.echo(
                    f"  {stage.name} task {rank} failed: {error} "
                    f"(log: _logs/{stage.name}/logs/task_{rank:05d}.log)"
                )
    for command, left in rerun.items():
        typer.echo(
            f"{left} task(s) failed or unfinished and not queued: rerun the same `mmbert-data {command}` "
            "command to resubmit only those (finished tasks are skipped)"
        )
    if wait and rerun:
        raise typer.Exit(1)


app.command()(mixture)
app.command()(validate)
app.command()(inspect)

if __name__ == "__main__":
    app()
