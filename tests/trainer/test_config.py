"""The run configuration: overrides stated once, `--set` into the typed training section, resume checks."""

from __future__ import annotations

import re
from dataclasses import fields, replace

import pytest

from mixtures.manifest import load_manifest
from mixtures.recipe import load_recipe
from tests.conftest import write_synthetic_phase
from trainer.config import ConfigError, TrainConfig, apply_settings, resolve
from trainer.overrides import Overrides, RunOptions


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return load_manifest(write_synthetic_phase(tmp_path_factory.mktemp("phase"), documents=200))


def test_set_changes_nested_keys_with_yaml_values_and_keeps_the_rest():
    training = load_recipe().phase("decay").training
    changed = apply_settings(
        training,
        (
            "training.lr.peak=1e-3",
            "training.optimizer.betas=[0.9, 0.98]",
            "training.lr.schedule=linear",
            "training.batch_warmup_tokens=2M",
        ),
    )
    assert changed.lr.peak == 1e-3 and changed.lr.schedule == "linear"
    assert changed.optimizer.betas == (0.9, 0.98) and changed.batch_warmup_tokens == 2_000_000
    assert replace(changed, lr=training.lr, optimizer=training.optimizer, batch_warmup_tokens=0) == replace(
        training, batch_warmup_tokens=0
    )
    assert apply_settings(training, ()) is training


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("training.lr.peek=1", "--set training.lr: unknown key 'peek' (did you mean 'peak'?)"),
        ("training.mask_rat=0.1", "--set training: unknown key 'mask_rat' (did you mean 'mask_rate'?)"),
        ("training.mask_rate=2", "--set training.mask_rate: must be in (0, 1), got 2.0"),
        ("training.lr.schedule=lineer", "unknown schedule 'lineer' (did you mean 'linear'?)"),
        ("training.seq_len.x=1", "training.seq_len is a value, not a section"),
        ("lr.peak=1e-3", "expected training.KEY=VALUE"),
        ("training.lr.peak", "expected training.KEY=VALUE"),
        ("training.lr.peak=[1", "the value is not valid YAML"),
    ],
)
def test_set_refuses_what_the_recipe_would_refuse_naming_the_key(setting, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_settings(load_recipe().phase("decay").training, (setting,))


def test_every_override_is_applied_and_run_options_pass_through(manifest):
    overrides = Overrides(
        tokens="400k",
        batch_size=8,
        micro_batch_tokens=4096,
        lr=2e-3,
        seed=7,
        save_every="5min",
        model="tiny",
        attn_backend="sdpa",
        keep=3,
        verify=True,
        settings=("training.optimizer.eps=1e-6",),
    )
    config = resolve(manifest, overrides, "runs/x")
    assert (config.tokens, config.training.batch_size, config.micro_batch_tokens) == (400_000, 8, 4096)
    assert config.training.lr.peak == 2e-3 and config.seed == 7 and config.training.optimizer.eps == 1e-6
    assert (config.save_every_tokens, config.save_every_minutes) == (None, 5.0)
    for option in fields(RunOptions):
        assert getattr(config, option.name) == getattr(overrides, option.name)
    default = resolve(manifest, Overrides(batch_size=2))
    assert default.out == "runs/pretrain" and default.seed == manifest.seed and default.attn_backend == "auto"


def test_an_unknown_choice_is_named_before_the_numbers_are_checked(manifest):
    """`--model huge` on a run too short for its batch: the typo is the first thing to fix."""
    with pytest.raises(ConfigError, match="^--model 'huge': choose tiny, small, base$"):
        resolve(manifest, Overrides(model="huge", tokens="1k"))


def test_checkpoints_do_not_pile_up_by_default(manifest):
    """A run of weeks saves every 30 minutes: without a default --keep it fills the disk."""
    assert resolve(manifest, Overrides(batch_size=2)).keep == 3  # the newest and two to fall back on


def test_each_flag_has_help_and_says_whether_resuming_must_keep_it():
    for option in fields(Overrides):
        assert option.metadata["help"] and isinstance(option.metadata["changes_result"], bool)
    kept = {f.name for f in fields(TrainConfig) if f.metadata.get("changes_result")}
    assert kept == {
        *("phase", "tokens", "training", "seed", "micro_batch_tokens"),
        *("model", "attn_backend", "compile", "precision"),
    }


def test_differences_name_each_changed_setting(manifest):
    config = resolve(manifest, Overrides(batch_size=8, model="tiny"))
    saved = config.to_dict()
    assert config.differences(saved) == []
    other = resolve(manifest, Overrides(batch_size=8, model="tiny", settings=("training.lr.peak=9e-4",)))
    assert other.differences(saved) == [f"training.lr.peak: {config.training.lr.peak!r} -> 0.0009"]
    moved = resolve(manifest, Overrides(batch_size=8, model="tiny", keep=2, save_every="1h"), "elsewhere")
    assert moved.differences(saved) == []  # where and how often it saves do not change the result


def test_a_negative_seed_and_an_unknown_device_are_refused_before_training(manifest):
    from trainer.distributed import init_distributed

    with pytest.raises(ConfigError, match=r"^--seed must be >= 0 .*got -1$"):
        resolve(manifest, Overrides(batch_size=2, seed=-1))
    with pytest.raises(ConfigError, match=r"^--device 'tpu': choose cpu or cuda"):
        init_distributed("tpu")
