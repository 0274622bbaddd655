"""The recipe's three decays: one build serves them, and planned over FineWeb2's size table they
give mmBERT's shares (its release's per-language token table)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from cli.data import app as data_app
from cli.mixture import mixture
from mixtures.compiler import compile_phase
from mixtures.counts import read_counts_csv
from mixtures.languages import CODE, language_code
from mixtures.recipe import RecipeError, load_recipe

FINEWEB2_TABLE = Path(__file__).resolve().parents[2] / "../shared/data/fineweb2-language-distribution.csv"
DECAYS = ("decay", "decay-cont", "decay-eng")
# mmBERT's English share of each decay (its release's per-language token table)
ENGLISH = {"decay": 0.102, "decay-cont": 0.132, "decay-eng": 0.179}
# mmBERT's code share of each phase: StarCoder's of phases 1 and 2, the release's 5.5% of Decay-All,
# Decay-Cont's Code + StarCoder (3.3B), which Decay-Eng is given too
CODE_SHARES = {"pretrain": 0.051, "midtrain": 0.029, "decay": 0.055, "decay-cont": 0.033, "decay-eng": 0.033}

app = typer.Typer()
app.command()(mixture)
runner = CliRunner()


def test_the_three_decays_compile_from_the_one_decay_build(sample_builds, sample_manifests):
    recipe = load_recipe()
    decay_dir, _ = sample_builds["decay"]
    assert {name for name, spec in recipe.phases.items() if spec.built_as == "decay"} == set(DECAYS)
    assert set(sample_builds) == {"pretrain", "midtrain", "decay"}  # no build per variant
    phase2 = {language_code(name) for name in recipe.phase("midtrain").languages} | {"eng"}
    for phase in DECAYS:
        manifest = json.loads(sample_manifests[phase].read_text())
        assert manifest["phase"] == phase
        assert (sample_manifests[phase].parent / manifest["data_root"]).resolve() == decay_dir
        languages = {language_code(stream["language"]) for stream in manifest["streams"]}
        if phase == "decay":
            assert languages - phase2, "Decay-All holds languages added in the decay"
        else:
            assert languages <= phase2, f"{phase} holds only the 110 languages of phase 2"
        english = sum(s["target_tokens"] for s in manifest["streams"] if s["language"] == "eng_Latn")
        assert english / manifest["sampling"]["tokens"] > 0.05


def test_a_variant_names_its_build_and_an_unknown_one_the_phases(sample_builds, tmp_path, monkeypatch):
    pretrain_dir, _ = sample_builds["pretrain"]
    wrong = runner.invoke(
        app, ["--phase", "decay-eng", "--stats", str(pretrain_dir), "-o", str(tmp_path / "m")]
    )
    assert wrong.exit_code == 1
    assert "phase decay-eng is compiled from the build of 'decay': pass --stats OUTPUT/decay" in wrong.output
    monkeypatch.chdir(tmp_path)  # no runs/build here
    missing = runner.invoke(app, ["--phase", "decay-cont"])
    assert missing.exit_code == 1 and "run `mmbert-data build --phase decay`" in missing.output
    unknown = runner.invoke(app, ["--phase", "decay-foo"])
    assert unknown.exit_code == 1
    assert "no phase 'decay-foo' (phases: pretrain, midtrain, decay, decay-cont, decay-eng)" in unknown.output
    built = runner.invoke(data_app, ["build", "--phase", "decay-eng", "-o", str(tmp_path / "out")])
    assert built.exit_code == 1 and not (tmp_path / "out").exists()
    assert built.output.strip().endswith("run `mmbert-data build --phase decay`")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["decay-eng"].update(build="nowhere"), "phases.decay-eng.build: no phase 'nowhere'"),
        (lambda p: p["decay"].update(build="decay-eng"), "decay-eng reads the build of decay itself"),
        (lambda p: p["decay-eng"].update(processing={"dedup": False}), "set processing there"),
        (lambda p: p["decay-cont"].update(build="pretrain"), "the build of pretrain lacks languages als"),
        (lambda p: p["decay-eng"]["budgets"].update(dclm="1B"), "the build of decay has no source dclm"),
    ],
)
def test_a_variant_that_its_build_cannot_serve_is_refused(tmp_path, edit, message):
    raw = yaml.safe_load(load_recipe().path.read_text())
    edit(raw["phases"])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


@pytest.mark.skipif(not FINEWEB2_TABLE.exists(), reason=f"FineWeb2's table is not at {FINEWEB2_TABLE}")
def test_planned_over_fineweb2s_table_the_decays_have_mmberts_shares():
    """English within 2 points of mmBERT's share in each decay; the languages Decay-All adds (none
    of phase 2's) between 8% and 12% of its tokens (mmBERT: 11.0B of 114.2B, 9.6%)."""
    recipe = load_recipe()
    counts = read_counts_csv(FINEWEB2_TABLE, "fineweb2")
    phase2 = {language_code(name) for name in recipe.phase("midtrain").languages}
    for phase, share in ENGLISH.items():
        mixture = compile_phase(recipe, phase, counts)
        english = sum(t.target_tokens for t in mixture.targets if t.language == "eng_Latn") / mixture.tokens
        assert abs(english - share) <= 0.02, (phase, english)
        added = sum(
            t.target_tokens
            for t in mixture.targets
            if t.source == "fineweb2" and language_code(t.language) not in phase2
        )
        if phase == "decay":
            assert 0.08 <= added / mixture.tokens <= 0.12, added / mixture.tokens
            assert all(t.expected_epochs <= 1 for t in mixture.targets if t.source == "fineweb2")
        else:
            assert added == 0


@pytest.mark.skipif(not FINEWEB2_TABLE.exists(), reason=f"FineWeb2's table is not at {FINEWEB2_TABLE}")
def test_every_phase_holds_mmberts_share_of_code():
    """Code is a fixed budget in every phase, at mmBERT's share (within 0.1 point), taken from the pool."""
    recipe = load_recipe()
    counts = read_counts_csv(FINEWEB2_TABLE, "fineweb2")
    for phase, share in CODE_SHARES.items():
        mixture = compile_phase(recipe, phase, counts)
        (code,) = (t for t in mixture.targets if t.source == "code")
        assert code.language == CODE and abs(code.target_tokens / mixture.tokens - share) <= 0.001, phase
        fixed = sum(t.target_tokens for t in mixture.targets if t.source != "fineweb2")
        assert mixture.multilingual_tokens == mixture.tokens - fixed


def test_each_language_belongs_to_the_phase_that_added_it():
    recipe = load_recipe()
    added = {
        name: recipe.phase_that_added(name)
        for name in ("fra_Latn", "eng", CODE, "cat_Latn", "srp", "fao_Latn")
    }
    assert added == {
        "fra_Latn": "pretrain",
        "eng": "pretrain",
        CODE: "pretrain",  # like English: the language of a fixed budget from the first phase on
        "cat_Latn": "midtrain",
        "srp": "midtrain",
        "fao_Latn": "decay",
    }


@pytest.mark.skipif(not FINEWEB2_TABLE.exists(), reason=f"FineWeb2's table is not at {FINEWEB2_TABLE}")
def test_the_mixture_table_shows_the_tokens_of_the_languages_each_phase_added():
    result = runner.invoke(app, ["--counts", str(FINEWEB2_TABLE), "--phase", "decay", "--top", "3"])
    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: cells
        for line in result.output.splitlines()
        if len(cells := [cell.strip() for cell in line.strip("│ ").split("│")]) == 6
    }
    assert rows["decay"][1] == "1739" and 8 <= float(rows["decay"][4].rstrip("%")) <= 12
    assert set(rows) >= {"pretrain", "midtrain", "decay", "several"}
