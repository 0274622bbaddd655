"""`mmbert-train`: train ModernBERT encoders and move them to and from transformers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from mixtures.recipe import DEFAULT_RECIPE, load_recipe

app = typer.Typer(
    help="Train mmBERT encoders, export them to transformers and import released checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # keep paths in errors on one line


@app.command("export")
def export(
    model_dir: Path = typer.Argument(..., help="A model directory (config.json + model.safetensors)."),
    out: Path = typer.Option(..., help="Output directory for transformers' AutoModelForMaskedLM."),
    tokenizer: str = typer.Option(
        None, help="tokenizer.json, a tokenizer directory or a hub name. Default: the recipe's tokenizer."
    ),
    recipe: Path = typer.Option(DEFAULT_RECIPE, help="Recipe YAML naming the default tokenizer."),
) -> None:
    """Write config.json, model.safetensors and the tokenizer files for transformers."""
    from trainer.hf import export_hf

    try:
        export_hf(model_dir, out, tokenizer=tokenizer or load_recipe(recipe).tokenizer)
    except (ValueError, OSError) as err:  # bad model files, recipe or tokenizer
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from err
    typer.echo(f"wrote {out}")


@app.command("import")
def import_(
    hf_dir: Path = typer.Argument(..., help="A transformers ModernBertForMaskedLM directory."),
    out: Path = typer.Option(..., help="Model directory to write (config.json + model.safetensors)."),
) -> None:
    """Turn a transformers ModernBERT checkpoint into a model directory to continue training from."""
    from trainer.hf import import_hf

    try:
        model = import_hf(hf_dir, out)
    except (ValueError, OSError) as err:  # bad or unsupported checkpoint files
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from err
    typer.echo(f"wrote {out} ({model.num_parameters() / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    app()
