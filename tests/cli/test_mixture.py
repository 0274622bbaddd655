"""`mmbert-data mixture` and `validate` end to end: the demo's phases, the build read by default, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.mixture import mixture, validate
from mixtures.plot import shares_figure
from tests.fixtures import DECAY_STREAMS, write_build, write_last_build

FINEWEB2_TABLE = Path(__file__).resolve().parents[2] / "../shared/data/fineweb2-language-distribution.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

app = typer.Typer()
app.command()(mixture)
validate_app = typer.Typer()
validate_app.command()(validate)
runner = CliRunner()

PRETRAIN = {
    ("fineweb2", "fra_Latn"): [3000],
    ("fineweb2", "deu_Latn"): [2000],
    ("fineweb2", "rus_Cyrl"): [2500],
    ("dclm", "eng_Latn"): [6000],
    ("arxiv", "eng_Latn"): [500],
    ("dolmino", "eng_Latn"): [800],
    ("wikipedia", "fra_Latn"): [300],
    ("code", "zxx_Zyyy"): [700],
}
MIDTRAIN = {**PRETRAIN, ("fineweb2", "srp_Cyrl"): [600], ("fineweb2", "srp_Latn"): [150]}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(path))
    return path


def run(*args: str, code: int = 0, command: typer.Typer = app) -> str:
    result = runner.invoke(command, [str(arg) for arg in args])
    assert result.exit_code == code, result.output
    return result.output


def test_demo_phases_give_manifests_a_plot_and_tables(tmp_path):
    """What `make demo` runs after the three builds (acceptance 2)."""
    data, manifests = tmp_path / "runs/demo/data", tmp_path / "runs/demo/manifests"
    for phase, streams in (("pretrain", PRETRAIN), ("midtrain", MIDTRAIN), ("decay", DECAY_STREAMS)):
        write_build(data, phase=phase, streams=streams)
    outputs = {}
    for phase in ("pretrain", "midtrain"):
        outputs[phase] = run(
            "--stats", data / phase, "--tokens", "10k", "--output", manifests / f"{phase}.json"
        )
    outputs["decay"] = run(
        "--stats", data / "decay", "--tokens", "10k", "--output", manifests / "decay.json",
        "--plot", manifests / "shares.png",
    )  # fmt: skip
    for phase, output in outputs.items():
        doc = json.loads((manifests / f"{phase}.json").read_text())
        assert doc["phase"] == phase and sum(s["target_tokens"] for s in doc["streams"]) == 10_000
        assert f"phase {phase}:" in output and "tokens per source" in output and "fra_Latn" in output
        assert f"wrote manifest {manifests / phase}.json" in output
        assert run(manifests / f"{phase}.json", command=validate_app).startswith(
            f"{manifests / phase}.json: valid"
        )
    assert "56 of the phase's languages have no counts" in outputs["pretrain"]
    # Serbian is written in two scripts: two FineWeb2 subsets of one language
    assert "phase midtrain: 4 languages (5 language-script subsets)" in outputs["midtrain"]
    assert "wrote plot" in outputs["decay"]
    png = (manifests / "shares.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000


def test_the_shares_plot_draws_each_phase_from_its_own_manifest(tmp_path, monkeypatch):
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    for phase, streams in (("pretrain", PRETRAIN), ("decay", DECAY_STREAMS)):
        write_build(data, phase=phase, streams=streams)
    run("--stats", data / "pretrain", "--tokens", "10k", "--output", manifests / "pretrain.json")
    drawn = {}
    monkeypatch.setattr("cli.mixture.plot_shares", lambda series, pool, path: drawn.update(series=series))
    output = run(
        "--stats", data / "decay", "--tokens", "10k", "-o", manifests / "decay.json",
        "--plot", tmp_path / "p.png",
    )  # fmt: skip
    series = dict(drawn["series"])
    doc = json.loads((manifests / "pretrain.json").read_text())
    pool = doc["sampling"]["multilingual_tokens"]
    expected = {s["language"]: s["target_tokens"] / pool for s in doc["streams"] if s["source"] == "fineweb2"}
    # rus_Cyrl is in the pretrain build only: recomputed over the decay counts it would be missing
    assert series["pretrain, tau 0.7"] == expected and "rus_Cyrl" in expected
    assert f"plot: phase pretrain from {manifests / 'pretrain.json'}" in output
    # midtrain was never compiled: not drawn, and the output says where its manifest was looked for
    assert "midtrain, tau 0.5" not in series and len(series) == 2
    assert f"no manifest of phase midtrain at {manifests / 'midtrain.json'} or" in output


def test_streams_repeated_far_beyond_their_data_are_named(tmp_path):
    build = write_build(tmp_path / "data", phase="pretrain", streams=PRETRAIN)
    output = run("--stats", build, "-o", tmp_path / "m.json")  # the recipe's 2.3T over 15k tokens
    warning = next(line for line in output.splitlines() if line.startswith("warning:"))
    assert warning.startswith("warning: 8 streams repeat their data more than 100 times: fineweb2/deu_Latn (")
    assert warning.endswith("...; cap them with --max-epochs or train fewer --tokens")
    assert "warning:" not in run("--stats", build, "--tokens", "10k", "-o", tmp_path / "m.json")


def test_a_temperature_above_one_is_said_to_sharpen(tmp_path):
    build = write_build(tmp_path / "data")
    output = run("--stats", build, "--tokens", "10k", "--temperature", "1.5", "-o", tmp_path / "m.json")
    assert (
        "note: temperature 1.5 is above 1, so it sharpens the mixture: the larger a language, the more "
        "than its natural share it gets (below 1 flattens, 1 keeps the natural shares)"
    ) in output
    assert "sharpens" not in run("--stats", build, "--tokens", "10k", "-o", tmp_path / "m.json")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_temperature_that_is_not_finite_is_refused_as_such(tmp_path, value):
    build = write_build(tmp_path / "data")
    output = run("--stats", build, "--tokens", "10k", "--temperature", value, code=1)
    assert f"error: temperature must be a finite number > 0, got {value}" in output


def test_temperature_alone_compiles_that_phase_of_the_build_here(tmp_path, cache, monkeypatch):
    """Without --stats, the build `mmbert-data build` writes by default under the current directory
    is read, whatever another clone or job built last."""
    here, elsewhere = tmp_path / "project", tmp_path / "other-project"
    write_build(here / "runs/build", phase="decay")
    write_build(elsewhere / "runs/build", phase="decay", streams={("fineweb2", "fra_Latn"): [9000]})
    write_last_build(cache, elsewhere / "runs/build", ["decay"])  # what a global pointer would say
    monkeypatch.chdir(here)
    output = run("--temperature", "0.3", "--tokens", "10k")
    stats = here / "runs/build/decay/stats.json"
    assert f"counts: build statistics {stats} (phase decay, tokenizer" in output
    manifest = here / "runs/build/decay/manifest.json"
    assert f"wrote manifest {manifest}" in output
    assert json.loads(manifest.read_text())["sampling"]["temperature"] == 0.3
    assert not (elsewhere / "runs/build/decay/manifest.json").exists()


def test_a_missing_build_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_build(tmp_path / "runs/build", phase="pretrain")
    output = run("--temperature", "0.3", code=1)
    assert (
        "no --stats or --counts given, and runs/build/decay/stats.json (the build's default output) "
        "is missing" in output
    )
    assert "run `mmbert-data build --phase decay` or pass --stats OUTPUT/decay" in output
    assert "no phase has temperature 0.4" in run("--temperature", "0.4", code=1)


def test_validate_reports_problems_and_fails(tmp_path):
    build = write_build(tmp_path / "data")
    manifest = tmp_path / "decay.json"
    run("--stats", build, "--tokens", "10k", "-o", manifest)
    (build / "fineweb2/srp_Latn/00000.arrow").unlink()
    output = run(manifest, "--no-hash", code=1, command=validate_app)
    assert f"{manifest}: 1 problem" in output and "missing shard: fineweb2/srp_Latn/00000.arrow" in output


def test_validate_checks_every_manifest_given(tmp_path):
    build = write_build(tmp_path / "data")
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    run("--stats", build, "--tokens", "10k", "-o", good)
    bad.write_text(json.dumps({**json.loads(good.read_text()), "seed": 1}))  # edited by hand
    output = run(bad, good, code=1, command=validate_app)
    assert f"{bad}: 1 problem" in output and "fingerprint" in output
    assert f"{good}: valid (fingerprint, content sha256 and schema of every shard" in output
    assert run(good, good, command=validate_app).count(f"{good}: valid") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokens", "lots"], "--tokens: not a token amount: 'lots'"),
        (
            ["--languages", "fra,srp_Latm"],
            "--languages: unknown language names: 'srp_Latm' (near misses: srp_Latn",
        ),
        (["--phase", "pretrain"], "phase pretrain is compiled from the build of 'pretrain'"),
        (["--max-epochs", "0"], "max epochs must be > 0"),
        (["--bytes-per-token", "Latn=3"], "--bytes-per-token applies to --counts only"),
    ],
)
def test_bad_options_are_named(tmp_path, args, message):
    build = write_build(tmp_path / "data")
    assert message in run("--stats", build, "--tokens", "10k", *args, code=1)


def test_planning_from_a_plain_csv(tmp_path):
    plain = tmp_path / "plan.csv"
    plain.write_text("language,tokens\nfra_Latn,300B\ndeu_Latn,250B\nsrp_Cyrl,20B\nsrp_Latn,5B\n")
    output = run(
        "--counts", plain, "--phase", "midtrain", "--sampler", "unimax", "-o", tmp_path / "plan.json"
    )
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["sampling"]["sampler"] == "unimax" and doc["data_root"] is None
    assert "3 languages (4 language-script subsets), UniMax" in output and "tokens per source" in output


@pytest.mark.skipif(not FINEWEB2_TABLE.exists(), reason=f"FineWeb2's table is not at {FINEWEB2_TABLE}")
def test_planning_over_fineweb2s_table_with_a_plot(tmp_path):
    """Acceptance 3 through the command line, as a user plans the decay phase before any build."""
    output = run(
        "--counts", FINEWEB2_TABLE, "--temperature", "0.3", "--bytes-per-token", "Latn=3.0",
        "--plot", tmp_path / "shares.png", "--top", "5",
    )  # fmt: skip
    assert "phase decay: 1,813 languages (1,870 language-script subsets)" in output and "capped" in output
    assert (tmp_path / "shares.png").read_bytes().startswith(PNG_MAGIC)


def test_the_shares_plot_draws_every_language_or_says_how_many_it_left_out():
    pool = {"fra_Latn": 9000, "deu_Latn": 900, "fao_Latn": 90, "chr_Cher": 0}
    shares = {"fra_Latn": 0.8, "deu_Latn": 0.15, "fao_Latn": 0.05}
    drawn = shares_figure([("pretrain, tau 0.7", shares)], pool)
    legend = [text.get_text() for text in drawn.axes[0].get_legend().get_texts()]
    assert legend == ["natural share (tau = 1, 3 languages)", "pretrain, tau 0.7 (3 languages)"]
    # chr_Cher has no tokens: the note under the plot names it
    assert [text.get_text() for text in drawn.texts] == [
        "Not drawn, as a zero share has no place on a log axis: 1 language with no tokens (chr_Cher)"
    ]
    assert drawn.axes[0].yaxis.get_major_formatter()(0.05, 0) == "5%"
    # a phase whose smallest language gets no tokens says so in its legend entry
    rounded = shares_figure([("decay, tau 0.3", {"fra_Latn": 0.7, "deu_Latn": 0.3, "fao_Latn": 0.0})], pool)
    legend = [text.get_text() for text in rounded.axes[0].get_legend().get_texts()]
    assert legend[1] == "decay, tau 0.3 (2 languages; 1 with no tokens not drawn)"
    assert "2 languages with no tokens (fao_Latn, chr_Cher)" in rounded.texts[0].get_text()
