"""The recipe file: a typed training section, token amounts, and unknown keys refused by name."""

from __future__ import annotations

import copy

import pytest
import yaml

from mixtures.recipe import DEFAULT_RECIPE, LRSchedule, RecipeError, TrainingSpec, load_recipe

RAW = yaml.safe_load(DEFAULT_RECIPE.read_text())


def load_variant(tmp_path, edit) -> object:
    raw = copy.deepcopy(RAW)
    edit(raw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_recipe(path)


def test_training_sections_are_typed_with_the_recipe_numbers():
    recipe = load_recipe()
    pretrain, midtrain, decay = (recipe.phase(name).training for name in ("pretrain", "midtrain", "decay"))
    assert pretrain.lr == LRSchedule("warmup_constant", 8e-4, warmup_tokens=3_000_000_000)
    assert midtrain.lr == LRSchedule("constant", 8e-4)
    assert decay.lr == LRSchedule("one_minus_sqrt", 8e-4, final_fraction=0.02)
    assert (pretrain.mask_rate, midtrain.mask_rate, decay.mask_rate) == (0.30, 0.15, 0.05)
    assert (pretrain.seq_len, decay.seq_len) == (1024, 8192)
    assert decay.rope_theta_global == decay.rope_theta_local == 160_000.0
    # shared keys come from the top-level training section, phases override them key by key
    assert pretrain.optimizer.betas == (0.9, 0.95) and pretrain.optimizer.eps == 1e-8
    assert pretrain.optimizer.weight_decay == decay.optimizer.weight_decay == 8e-5
    assert pretrain.batch_warmup_tokens == 60_000_000_000 and decay.batch_warmup_tokens == 0
    assert pretrain.batch_size == 4608 and pretrain.batch_warmup_min == 768
    assert pretrain.tokens_per_step == 4608 * 1024  # batch_size counts sequences of seq_len tokens


def test_training_round_trips_through_the_manifest_form_and_scales():
    for phase in load_recipe().phases.values():
        spec = phase.training
        assert TrainingSpec.from_dict(spec.to_dict(), "manifest") == spec
    pretrain = load_recipe().phase("pretrain").training
    short = pretrain.scaled(2_000_000 / 2.3e12)
    assert short.lr.warmup_tokens == round(3e9 * 2e6 / 2.3e12) and short.batch_warmup_tokens == round(
        6e10 * 2e6 / 2.3e12
    )
    assert short.lr.peak == pretrain.lr.peak and short.batch_size == pretrain.batch_size


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(phase=r.pop("phases")), "unknown key 'phase' (did you mean 'phases'?)"),
        (lambda r: r.update(version=1), "unknown key 'version' (known keys: name, tokenizer,"),
        (lambda r: r["phases"]["decay"].update(unique_tokens="103.3B"), "decay: unknown key 'unique_tokens'"),
        (
            lambda r: r["phases"]["pretrain"].update(processing={"lid": "cld3"}),
            "pretrain.processing.lid: must be one of trust, glotlid, ft176, got 'cld3'",
        ),
        (
            lambda r: r["phases"]["decay"]["training"]["lr"].update(schedul="linear"),
            "phases.decay.training.lr: unknown key 'schedul' (did you mean 'schedule'?)",
        ),
        (
            lambda r: r["training"]["optimizer"].update(weight_decy=0.1),
            ": training.optimizer: unknown key 'weight_decy' (did you mean 'weight_decay'?)",
        ),
        (
            lambda r: r["phases"]["midtrain"].update(trainig={}),
            "phases.midtrain: unknown key 'trainig' (did you mean 'training'?)",
        ),
        (lambda r: r["sources"]["dclm"].update(formt="dclm"), "sources.dclm: unknown key 'formt'"),
        (
            lambda r: r["sources"].update({"../../elsewhere": r["sources"]["arxiv"]}),
            "sources.../../elsewhere: a source name is lower-case letters, digits, '-' and '_' "
            "(one directory name), got '../../elsewhere'",
        ),
        (
            lambda r: r["sources"].update({"starcoder/python": r["sources"]["arxiv"]}),
            "(one directory name), got 'starcoder/python'",
        ),
        (
            lambda r: r["processing"].update(dedupe=True),
            "processing: unknown key 'dedupe' (did you mean 'dedup'?)",
        ),
        (
            lambda r: r["phases"]["decay"]["training"]["lr"].update(schedule="one_minus_sqr"),
            "decay.training.lr.schedule: unknown schedule 'one_minus_sqr' (did you mean 'one_minus_sqrt'?)",
        ),
        (
            lambda r: r["phases"]["decay"]["training"]["lr"].update(schedule="cosine"),
            "unknown schedule 'cosine' (choose warmup_constant, constant, one_minus_sqrt, linear)",
        ),
        (
            lambda r: r["phases"]["midtrain"]["training"]["lr"].update(warmup_tokens="1B"),
            "midtrain.training.lr.warmup_tokens: 'constant' has no warmup; use schedule 'warmup_constant'",
        ),
        (
            lambda r: r["phases"]["pretrain"]["training"]["lr"].update(final_fraction=0.1),
            "pretrain.training.lr.final_fraction: only the decays (one_minus_sqrt, linear) take one",
        ),
        (
            lambda r: r["phases"]["pretrain"]["training"].update(batch_warmup_tokens="60X"),
            "pretrain.training.batch_warmup_tokens: not a token amount: '60X'",
        ),
        (
            lambda r: r["phases"]["pretrain"]["training"].update(batch_size=512),
            "pretrain.training.batch_warmup_min: 768 exceeds batch_size 512",
        ),
        (
            lambda r: r["phases"]["decay"]["training"].update(mask_rate=1.5),
            "decay.training.mask_rate: must be in (0, 1)",
        ),
        (
            lambda r: r["phases"]["decay"]["training"].update(seq_len="long"),
            "decay.training.seq_len: expected an integer",
        ),
        (lambda r: r["training"]["optimizer"].update(betas=[0.9]), "optimizer.betas: expected two numbers"),
    ],
)
def test_bad_recipes_name_the_key_and_the_fix(tmp_path, edit, message):
    with pytest.raises(RecipeError) as caught:
        load_variant(tmp_path, edit)
    assert message in str(caught.value)
    assert str(tmp_path / "recipe.yaml") in str(caught.value)


def test_token_amounts_take_suffixes(tmp_path):
    def edit(raw):
        raw["phases"]["pretrain"]["training"]["lr"]["warmup_tokens"] = "2.5M"
        raw["phases"]["pretrain"]["training"]["batch_warmup_tokens"] = "512k"

    training = load_variant(tmp_path, edit).phase("pretrain").training
    assert training.lr.warmup_tokens == 2_500_000 and training.batch_warmup_tokens == 512_000


def test_a_recipe_that_is_not_yaml_is_one_line_with_its_line_and_column(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\nphases:\n  - a: [1, 2\n  b: 3\n")
    with pytest.raises(RecipeError) as raised:
        load_recipe(path)
    assert str(raised.value) == f"{path}: invalid YAML: line 4, column 4: expected ',' or ']', but got ':'"
