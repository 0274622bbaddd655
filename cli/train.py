"""`mmbert-train`: train one phase from its manifest; evaluate, export, import, merge and plot encoders.

mmbert-train --manifest manifests/pretrain.json --output runs/pretrain
mmbert-train --manifest manifests/midtrain.json --output runs/midtrain --init runs/pretrain
mmbert-train --manifest manifests/decay.json --output runs/decay --init runs/midtrain
torchrun --nproc-per-node 8 --no-python mmbert-train --manifest M --output R   # DDP, same global batch
torchrun --nproc-per-node 8 --no-python mmbert-train --manifest M --output R --parallel fsdp  # FSDP2
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from cli.options import field_option, from_params, local_path, location
from mixtures.hub import HubUnavailable
from mixtures.recipe import DEFAULT_RECIPE, RecipeError, load_recipe
from trainer.launch import exit_with_agent, ranks_from_slurm
from trainer.overrides import Overrides

app = typer.Typer(
    help="Train mmBERT encoders phase by phase from compiled manifests; export them to transformers, "
    "import released checkpoints, merge models, plot loss curves.",
    epilog="Example: mmbert-train -m manifests/pretrain.json -o runs/pretrain; then "
    "mmbert-train -m manifests/midtrain.json -o runs/midtrain --init runs/pretrain; "
    "add --resume to continue after a crash.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)  # keep paths in errors on one line


def _fail(err: Exception) -> typer.Exit:
    """One line on the console (rank 0 only under torchrun), exit status 1."""
    if os.environ.get("RANK", "0") == "0":
        console.print(f"[red]error:[/] {escape(str(err))}")
    return typer.Exit(1)


def option(name: str, *declarations: str, **settings: Any) -> Any:
    """The typer option of the ``Overrides`` field ``name`` (default and help from the field)."""
    return field_option(Overrides, name, *declarations, **settings)


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    manifest: str = typer.Option(
        None,
        "--manifest",
        "-m",
        help="Phase manifest from `mmbert-data mixture`: a path or URL.",
        callback=location,
    ),
    out: Path = typer.Option(
        None,
        "--output",
        "-o",
        "--out",
        callback=local_path,
        help="Run directory (checkpoints, metrics). Default: runs/PHASE. (--out: an older spelling.)",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest intact checkpoint in --output."
    ),
    force: bool = typer.Option(
        False, "--force", help="Resume or init even when the manifest, tokenizer or settings differ."
    ),
    device: str = typer.Option(None, help="cpu | cuda (default: a GPU when there is one)."),
    init: str = option("init", callback=local_path),
    tokens: str = option("tokens"),
    batch_size: int = option("batch_size"),
    micro_batch_tokens: int = option("micro_batch_tokens"),
    lr: float = option("lr"),
    settings: list[str] = option("settings", "--set", metavar="training.KEY=VALUE"),
    model: str = option("model"),
    attn_backend: str = option("attn_backend", "--attn"),
    compile: bool = option("compile", "--compile"),
    precision: str = option("precision"),
    parallel: str = option("parallel"),
    seed: int = option("seed"),
    save_every: str = option("save_every"),
    eval_every: str = option("eval_every"),
    keep: int = option("keep"),
    verify: bool = option("verify", "--verify"),
    cache_dir: str = option("cache_dir", callback=local_path),
) -> None:
    """Train one phase of the recipe from its manifest (or run one of the commands below)."""
    if ctx.invoked_subcommand is not None:
        return
    if manifest is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    exit_with_agent()  # before torch is imported, so that the parent it watches is torchrun's agent
    ranks_from_slurm()  # srun's tasks, seen as torchrun's workers from here on
    from mixtures.errors import MixtureError
    from mixtures.manifest import load_manifest
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError, resolve
    from trainer.data import DataError, say_fetched, shard_cache
    from trainer.metrics import RunFileError
    from trainer.model import ModelFormatError
    from trainer.train import train

    try:
        overrides = from_params(Overrides, ctx.params, settings=tuple(settings))
        cache = shard_cache(overrides.cache_dir)  # for a manifest whose data is remote
        phase = load_manifest(manifest, check_hashes=overrides.verify, cache_dir=cache, fetched=say_fetched)
        train(resolve(phase, overrides, out), phase, resume=resume, force=force, device=device)
    except (
        ConfigError,
        CheckpointError,
        DataError,
        ModelFormatError,
        MixtureError,
        RecipeError,
        RunFileError,
    ) as err:
        raise _fail(err) from err
    except KeyboardInterrupt as err:  # a second Ctrl-C: nothing saved beyond the last checkpoint
        _fail(RuntimeError("interrupted; continue from the last checkpoint with --resume"))
        raise typer.Exit(130) from err  # 128 + SIGINT, as for the first Ctrl-C


@app.command("plot")
def plot(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUN...", help="Run directories, in training order (e.g. the three phases)."
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="PNG to write. Default: loss.png in the last run.", callback=local_path
    ),
) -> None:
    """Draw loss and learning rate against tokens, one colour per run (phases end to end)."""
    from trainer.plot import LOSS_PLOT_NAME, plot_runs

    try:
        path = plot_runs(runs, output or runs[-1] / LOSS_PLOT_NAME)
    except (ValueError, OSError) as err:
        raise _fail(err) from err
    typer.echo(f"wrote {path}")


def eval_option(name: str, *declarations: str, **settings: Any) -> Any:
    """The typer option of the ``EvalOptions`` field ``name``."""
    from trainer.eval import EvalOptions

    return field_option(EvalOptions, name, *declarations, **settings)


@app.command("eval")
def evaluate(
    models: list[str] = typer.Argument(
        ...,
        metavar="MODEL...",
        help="Runs (their newest checkpoint), checkpoints, model directories or transformers ModernBERT "
        "directories, side by side.",
        callback=local_path,
    ),
    data: str = typer.Option(
        ...,
        "--data",
        help="The build to evaluate on: a phase directory (OUTPUT/PHASE, with stats.json and its held-out "
        "shards), OUTPUT holding one phase, or a phase's s3:// or hf:// URL.",
        callback=location,
    ),
    cache_dir: str = option("cache_dir", callback=local_path),
    mask_rate: float = eval_option("mask_rate"),
    seed: int = eval_option("seed"),
    seq_len: int = eval_option("seq_len"),
    batch_tokens: int = eval_option("batch_tokens"),
    max_tokens_per_language: str = eval_option("max_tokens_per_language"),
    top: int = typer.Option(
        0, "--top", min=0, help="Under each group, its N languages with the most tokens."
    ),
    json_out: str = typer.Option(
        None,
        "--json",
        metavar="PATH",
        help="Write every figure as JSON to PATH (- : standard output).",
        callback=local_path,
    ),
    plot_out: Path = typer.Option(
        None,
        "--plot",
        metavar="PNG",
        help="Draw each language's loss and accuracy per model, by group.",
        callback=local_path,
    ),
    recipe: Path = typer.Option(DEFAULT_RECIPE, help="Recipe whose phases group the languages."),
    device: str = typer.Option(None, help="cpu | cuda (default: a GPU when there is one)."),
) -> None:
    """Masked-LM loss and accuracy per language on a build's held-out documents, the same masked
    tokens for every model; languages grouped by the phase that added them (high / mid / low resource)."""
    import json

    from cli.options import token_amount
    from mixtures.errors import MixtureError
    from mixtures.files import write_atomic
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError
    from trainer.data import DataError
    from trainer.distributed import close, init_distributed
    from trainer.eval import EvalError, EvalOptions, eval_table, evaluate_models
    from trainer.model import ModelFormatError
    from trainer.plot import plot_eval

    dist = None
    try:
        limit = token_amount(max_tokens_per_language, "--max-tokens-per-language")
        options = EvalOptions(
            mask_rate=mask_rate,
            seed=seed,
            seq_len=seq_len,
            batch_tokens=batch_tokens,
            max_tokens_per_language=limit,
        )
        dist = init_distributed(device)
        say = (lambda line: console.print(escape(line))) if dist.main else (lambda line: None)
        document = evaluate_models(models, data, options, load_recipe(recipe), dist, say, cache_dir)
        if not dist.main:
            return
        out = Console(stderr=json_out == "-")
        if not out.is_terminal:  # logs and pipes: a width that fits the columns instead of rich's 80
            out.width = max(out.width, 34 + 20 * len(models))
        out.print(eval_table(document, top))
        text = json.dumps(document, indent=1) + "\n"
        if json_out == "-":
            typer.echo(text, nl=False)
        elif json_out is not None:
            say(f"wrote {write_atomic(json_out, text)}")
        if plot_out is not None:
            say(f"wrote {plot_eval(document, plot_out)}")
    except (
        CheckpointError,
        ConfigError,
        DataError,
        EvalError,
        MixtureError,
        ModelFormatError,
        RecipeError,
        OSError,
    ) as err:
        raise _fail(err) from err
    finally:
        if dist is not None:
            close(dist)


def submit_option(name: str, *declarations: str, **settings: Any) -> Any:
    """The typer option of the ``SubmitOptions`` field ``name``."""
    from trainer.submit import SubmitOptions

    return field_option(SubmitOptions, name, *declarations, **settings)


@app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    manifest: str = typer.Option(
        ...,
        "--manifest",
        "-m",
        help="Phase manifest from `mmbert-data mixture`: a path or URL.",
        callback=location,
    ),
    out: Path = typer.Option(
        None, "--output", "-o", help="Run directory. Default: runs/PHASE.", callback=local_path
    ),
    nodes: int = submit_option("nodes"),
    gpus_per_node: int = submit_option("gpus_per_node"),
    procs_per_node: int = submit_option("procs_per_node"),
    cpus_per_task: int = submit_option("cpus_per_task"),
    mem: str = submit_option("mem"),
    time: str = submit_option("time"),
    partition: str = submit_option("partition"),
    account: str = submit_option("account"),
    qos: str = submit_option("qos"),
    warning: int = submit_option("warning"),
    max_requeues: int = submit_option("max_requeues"),
    env: str = submit_option("env"),
    sbatch_args: list[str] = submit_option("sbatch_args", "--sbatch-arg"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the batch script; write and submit nothing."
    ),
) -> None:
    """Train on Slurm: write RUN/submit.sbatch (torchrun on every node; it checkpoints before its time
    limit and requeues itself) and submit it. Other flags are mmbert-train's, checked here first."""
    from typer._click.exceptions import UsageError

    from mixtures.errors import MixtureError
    from mixtures.files import write_atomic
    from mixtures.manifest import load_manifest
    from mixtures.slurm import SlurmError
    from trainer.config import ConfigError, resolve
    from trainer.submit import SCRIPT_NAME, SubmitOptions, check_not_queued, jobs_of, sbatch_script
    from trainer.submit import submit as sbatch

    where = manifest if isinstance(manifest, str) else str(manifest.resolve())  # a URL, or a path
    train_args = ["--manifest", where, *(arg for arg in ctx.args if arg != "--resume")]
    try:
        options = from_params(SubmitOptions, ctx.params, sbatch_args=tuple(sbatch_args))
        options.check()
        # the training flags, parsed and resolved as the job will: a mistake is refused now, not in the queue
        parsed = typer.main.get_command(app).make_context("mmbert-train", list(train_args))
        overrides = from_params(Overrides, parsed.params, settings=tuple(parsed.params["settings"]))
        phase = load_manifest(manifest)
        config = resolve(phase, overrides, out)
        run = Path(config.out).resolve()
        after = jobs_of(Path(config.init)) if config.init else []  # the phase before, still training
        script = sbatch_script(options, phase.phase, run, train_args, after)
        if dry_run:
            typer.echo(script, nl=False)
            return
        check_not_queued(run)
        run.mkdir(parents=True, exist_ok=True)
        path = write_atomic(run / SCRIPT_NAME, script)
        job = sbatch(path)
    except UsageError as err:  # typer's own click raises it
        raise _fail(ValueError(f"a training flag: {err.format_message()}")) from err
    except (ConfigError, MixtureError, RecipeError, SlurmError, OSError) as err:
        raise _fail(err) from err
    waits = f"; it starts when job {', '.join(after)} of {config.init} has ended well" if after else ""
    typer.echo(f"submitted job {job}: {path}; its log is {run}/slurm-{job}.out{waits}")


@app.command("export")
def export(
    model_dir: Path = typer.Argument(
        ..., help="A run directory (its newest checkpoint), checkpoint, merged or other model directory."
    ),
    out: Path = typer.Option(
        ...,
        "--output",
        "-o",
        "--out",
        help="Output directory for transformers' AutoModelForMaskedLM. (--out: an older spelling.)",
        callback=local_path,
    ),
    tokenizer: str = typer.Option(
        None,
        help="tokenizer.json, a tokenizer directory, a hub name or sample:DIR. "
        "Default: the tokenizer of the checkpoint's (or merged models') data, else the recipe's.",
    ),
    recipe: Path = typer.Option(DEFAULT_RECIPE, help="Recipe YAML naming the default tokenizer."),
) -> None:
    """Write config.json, model.safetensors and the tokenizer files for transformers."""
    from pipeline.tokenizer import find_tokenizer
    from trainer.checkpoint import model_directory, recorded_tokenizer
    from trainer.hf import export_hf

    try:
        model_dir = model_directory(model_dir)
        recorded = recorded_tokenizer(model_dir)
        if tokenizer is None:
            tokenizer = recorded["name"] if recorded else load_recipe(recipe).tokenizer
        same = recorded is not None and tokenizer == recorded["name"]
        export_hf(model_dir, out, tokenizer=find_tokenizer(tokenizer, recorded["sha256"] if same else None))
    except (ValueError, OSError, HubUnavailable) as err:  # bad model files, recipe or tokenizer
        raise _fail(err) from err
    typer.echo(f"wrote {out} (from {model_dir})")


@app.command("import")
def import_(
    hf_dir: Path = typer.Argument(..., help="A transformers ModernBertForMaskedLM directory."),
    out: Path = typer.Option(
        ...,
        "--output",
        "-o",
        "--out",
        help="Model directory to write (config.json + model.safetensors). (--out: an older spelling.)",
        callback=local_path,
    ),
) -> None:
    """Turn a transformers ModernBERT checkpoint into a model directory to continue training from."""
    from trainer.hf import import_hf

    try:
        model = import_hf(hf_dir, out)
    except (ValueError, OSError) as err:  # bad or unsupported checkpoint files
        raise _fail(err) from err
    typer.echo(f"wrote {out} ({model.num_parameters() / 1e6:.2f}M parameters)")


@app.command("merge")
def merge(
    models: list[str] = typer.Argument(
        ...,
        metavar="MODEL...",
        help="Run directories (their newest checkpoint), checkpoints, model directories or transformers "
        "ModernBERT directories; for --method ema, one run directory.",
        callback=local_path,
    ),
    method: str = typer.Option(..., help="ties | linear | ema (of a run's checkpoints, in step order)."),
    out: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Model directory to write (config.json, model.safetensors, merge.json).",
        callback=local_path,
    ),
    base: str = typer.Option(
        None, help="ties: the model the others were trained from; task vectors are taken against it."
    ),
    density: float = typer.Option(
        None, help="ties: fraction of each task vector kept per tensor, by magnitude, in (0, 1]. Default 0.2."
    ),
    lam: float = typer.Option(
        None, "--lambda", help="ties: scale of the merged task vector added to the base. Default 1.0."
    ),
    weights: str = typer.Option(
        None, help="linear: one weight >= 0 per model, comma-separated, normalised to sum 1. Default: equal."
    ),
    decay: float = typer.Option(
        None, help="ema: m_k = decay * m_(k-1) + (1 - decay) * checkpoint_k, in (0, 1). Default 0.9."
    ),
) -> None:
    """Merge models into one model directory: TIES, a weighted average, or an EMA of a run's checkpoints.
    It carries the tokenizer record of the inputs' data, for export and --init."""
    from trainer.merge import merge_models

    try:
        numbers = None if weights is None else [float(weight) for weight in weights.split(",")]
    except ValueError as err:
        raise _fail(ValueError(f"--weights {weights}: expected numbers separated by commas")) from err
    try:
        record = merge_models(
            models, out, method, base=base, density=density, lam=lam, weights=numbers, decay=decay
        )
    except (ValueError, OSError) as err:  # models that cannot be merged, an output that cannot be written
        raise _fail(err) from err
    typer.echo(f"wrote {out} ({method} of {len(record['models'])} models)")


if __name__ == "__main__":
    app()
