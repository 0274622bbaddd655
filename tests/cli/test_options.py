"""What the command-line tools spell the same way as the Makefile and the library: the output option,
the cache, the choices of each option, and the recipe's phases."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from cli import data, train
from mixtures.recipe import DEFAULT_RECIPE, LID_BACKENDS
from mixtures.sampling import SAMPLERS
from pipeline.bad_input import ON_ERROR_CHOICES
from tests.corpus import build_args, small_hub

ROOT = Path(__file__).resolve().parents[2]
# Every command that writes something, and the older spelling it still accepts (None: none).
WRITERS = {
    ("mmbert-data", "build"): None,
    ("mmbert-data", "download"): "--to",
    ("mmbert-data", "mixture"): None,
    ("mmbert-train", None): "--out",
    ("mmbert-train", "export"): "--out",
    ("mmbert-train", "import"): "--out",
    ("mmbert-train", "merge"): None,
    ("mmbert-train", "plot"): None,
}


def _output_option(tool: str, name: str | None) -> list[str]:
    group = typer.main.get_command(data.app if tool == "mmbert-data" else train.app)
    command = group if name is None else group.commands[name]
    (option,) = (param for param in command.params if "--output" in param.opts)
    return option.opts


@pytest.mark.parametrize(("tool", "name"), list(WRITERS))
def test_every_command_that_writes_takes_output_and_o(tool, name):
    opts = _output_option(tool, name)
    alias = WRITERS[(tool, name)]
    assert sorted(opts) == sorted(["--output", "-o", *([alias] if alias else [])])


def test_the_makefile_puts_the_lid_model_in_mmbert_data_cache(tmp_path):
    env = {**os.environ, "MMBERT_DATA_CACHE": str(tmp_path / "cache")}
    dry = subprocess.run(
        ["make", "-n", "-B", "setup"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert f"{tmp_path / 'cache'}/lid.176.ftz" in dry.stdout
    assert ".cache/mmbert-data" not in dry.stdout


@pytest.mark.parametrize(
    ("args", "constant"),
    [
        (["build", "--phase", "decay", "--lid", "cld3"], LID_BACKENDS),
        (["build", "--phase", "decay", "--on-error", "ignore"], ON_ERROR_CHOICES),
        (["mixture", "--sampler", "uniform"], SAMPLERS),
    ],
)
def test_choices_are_the_librarys_constants(args, constant):
    result = CliRunner().invoke(data.app, args)
    assert result.exit_code == 2
    message = " ".join(result.output.replace("│", " ").split())
    assert f"is not one of {', '.join(repr(value) for value in constant)}." in message


@pytest.mark.parametrize(
    "args",
    [
        ["build", "--phase", "anneal"],
        ["download", "--phase", "anneal", "--output", "mirror"],
        ["mixture", "--phase", "anneal", "--counts", "plan.csv"],
    ],
)
def test_an_unknown_phase_is_one_line_naming_the_recipes_phases(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data.app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    phases = "pretrain, midtrain, decay, decay-cont, decay-eng"
    assert lines[0].endswith(f"{DEFAULT_RECIPE}: no phase 'anneal' (phases: {phases})")


def test_a_recipe_with_other_phase_names_works(tmp_path):
    raw = yaml.safe_load(DEFAULT_RECIPE.read_text())
    raw["phases"] = {"anneal": raw["phases"]["decay"], "warmup": raw["phases"]["pretrain"]}
    recipe = tmp_path / "renamed.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    hub = tmp_path / "hub"
    small_hub(hub)
    runner = CliRunner()
    args = build_args(hub, tmp_path / "out", "--recipe", str(recipe), "--dry-run", phase="warmup")
    dry = runner.invoke(data.app, args)
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith(f"phase warmup -> {tmp_path / 'out' / 'warmup'}")
    plan = tmp_path / "plan.csv"
    plan.write_text("language,tokens\nfra_Latn,300B\ndeu_Latn,250B\n")
    compiled = runner.invoke(
        data.app, ["mixture", "--recipe", str(recipe), "--phase", "anneal", "--counts", str(plan)]
    )
    assert compiled.exit_code == 0, compiled.output
    assert "phase anneal:" in compiled.output
    unknown = runner.invoke(data.app, ["build", "--recipe", str(recipe), "--phase", "decay"])
    assert unknown.exit_code == 1 and "no phase 'decay' (phases: anneal, warmup)" in unknown.output


@pytest.mark.parametrize(
    "app, args",
    [
        (data.app, ["download", "--phase", "decay", "-o", "s3://bucket/mirror"]),
        (data.app, ["build", "--phase", "decay", "-o", "s3://bucket/run", "--staging", "s3://bucket/x"]),
        (data.app, ["mixture", "--phase", "decay", "--plot", "s3://bucket/shares.png"]),
        (data.app, ["inspect", "s3://bucket/decay/fineweb2/fra_Latn/00000-0000.arrow"]),
        (data.app, ["status", "s3://bucket/build"]),
        (train.app, ["--manifest", "s3://bucket/decay.json", "-o", "s3://bucket/run"]),
        (train.app, ["eval", "runs/decay", "--data", "s3://bucket/build/decay", "--plot", "s3://b/e.png"]),
        (train.app, ["export", "runs/decay", "-o", "s3://bucket/hf"]),
        (train.app, ["merge", "a", "b", "--method", "linear", "-o", "s3://bucket/merged"]),
        (train.app, ["merge", "s3://bucket/a", "b", "--method", "linear", "-o", "merged"]),
        (train.app, ["--manifest", "m.json", "--cache-dir", "s3://bucket/cache"]),
        (train.app, ["--manifest", "m.json", "--init", "s3://bucket/run"]),
        (train.app, ["eval", "s3://bucket/run", "--data", "build/decay"]),
        (train.app, ["eval", "runs/decay", "--data", "build/decay", "--json", "s3://bucket/e.json"]),
    ],
    ids=[
        "download",
        "staging",
        "plot",
        "inspect",
        "status",
        "train",
        "eval",
        "export",
        "merge",
        "merge-model",
        "cache-dir",
        "init",
        "eval-model",
        "eval-json",
    ],  # fmt: skip
)
def test_a_url_where_a_local_path_is_taken_is_refused_and_writes_nothing(app, args, tmp_path, monkeypatch):
    """``Path`` would turn ``s3://bucket/x`` into the local directory ``s3:/bucket/x``."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    url = [arg for arg in args if "://" in arg][-1]  # the last: before it, URLs that are taken
    assert f"{url} is a URL; this takes a local path" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []
