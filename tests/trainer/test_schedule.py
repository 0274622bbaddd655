"""Learning-rate and batch-size schedules against their closed forms at named token counts."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import yaml

from mixtures.recipe import DEFAULT_RECIPE, LRSchedule, RecipeError, load_recipe
from mixtures.schedules import DECAYS
from trainer.schedule import batch_size_at, describe_step, lr_at, micro_batch_sizes

PEAK = 8e-4
TOTAL = 100_000


def test_warmup_constant_rises_linearly_then_holds():
    spec = LRSchedule("warmup_constant", PEAK, warmup_tokens=10_000)
    assert lr_at(0, spec, TOTAL) == 0.0
    assert lr_at(2_500, spec, TOTAL) == pytest.approx(PEAK / 4)
    assert lr_at(5_000, spec, TOTAL) == pytest.approx(PEAK / 2)
    assert lr_at(10_000, spec, TOTAL) == PEAK
    assert lr_at(99_999, spec, TOTAL) == PEAK
    assert (
        lr_at(TOTAL, LRSchedule("constant", PEAK), TOTAL)
        == PEAK
        == lr_at(1, LRSchedule("constant", PEAK), TOTAL)
    )


def test_one_minus_sqrt_decays_to_its_floor():
    spec = LRSchedule("one_minus_sqrt", PEAK, final_fraction=0.02)
    assert lr_at(0, spec, TOTAL) == PEAK
    # a quarter of the way: 1 - sqrt(1/4) = 1/2 of the way from the floor to the peak
    assert lr_at(25_000, spec, TOTAL) == pytest.approx(PEAK * (0.02 + 0.98 * 0.5))
    assert lr_at(64_000, spec, TOTAL) == pytest.approx(PEAK * (0.02 + 0.98 * 0.2))
    assert lr_at(TOTAL, spec, TOTAL) == pytest.approx(0.02 * PEAK)
    assert lr_at(2 * TOTAL, spec, TOTAL) == pytest.approx(0.02 * PEAK)  # past the end: the floor


def test_linear_decay_after_warmup():
    spec = LRSchedule("linear", PEAK, warmup_tokens=20_000, final_fraction=0.04)
    assert lr_at(10_000, spec, TOTAL) == pytest.approx(PEAK / 2)
    assert lr_at(20_000, spec, TOTAL) == pytest.approx(PEAK)
    assert lr_at(60_000, spec, TOTAL) == pytest.approx(PEAK * (0.04 + 0.96 * 0.5))
    assert lr_at(TOTAL, spec, TOTAL) == pytest.approx(0.04 * PEAK)


@pytest.mark.parametrize("name", list(DECAYS))
def test_every_decay_shape_falls_from_one_to_zero(name):
    shape = DECAYS[name]
    values = [shape(step / 1000) for step in range(1001)]
    assert values[0] == 1.0 and values[-1] == 0.0
    assert all(later <= earlier for earlier, later in zip(values[:-1], values[1:], strict=True))


def test_a_new_decay_shape_is_one_entry_of_the_table(tmp_path, monkeypatch):
    """The recipe accepts a shape added to DECAYS, and lr_at follows it, with no other change."""
    monkeypatch.setitem(DECAYS, "cosine", lambda p: 0.5 * (1.0 + math.cos(math.pi * p)))
    raw = yaml.safe_load(DEFAULT_RECIPE.read_text())
    path = tmp_path / "recipe.yaml"
    raw["phases"]["decay"]["training"]["lr"]["schedule"] = "cosine"
    path.write_text(yaml.safe_dump(raw))
    decay = load_recipe(path).phase("decay")
    spec, total = decay.training.lr, decay.tokens
    assert spec == LRSchedule("cosine", PEAK, final_fraction=0.02)
    assert lr_at(0, spec, total) == PEAK
    assert lr_at(total // 2, spec, total) == pytest.approx(PEAK * (0.02 + 0.98 * 0.5))
    assert lr_at(total // 4, spec, total) == pytest.approx(
        PEAK * (0.02 + 0.98 * (0.5 + 0.5 * math.sqrt(0.5)))
    )
    assert lr_at(total, spec, total) == pytest.approx(0.02 * PEAK)
    raw["phases"]["decay"]["training"]["lr"]["schedule"] = "cosin"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError, match=r"unknown schedule 'cosin' \(did you mean 'cosine'\?\)"):
        load_recipe(path)
    raw["phases"]["decay"]["training"]["lr"]["schedule"] = "wsd"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        RecipeError, match=r"\(choose warmup_constant, constant, one_minus_sqrt, linear, cosine\)"
    ):
        load_recipe(path)


def test_the_three_phases_form_one_trapezoid():
    recipe = load_recipe()
    pretrain, midtrain, decay = (recipe.phase(name) for name in ("pretrain", "midtrain", "decay"))
    end_of_pretrain = lr_at(pretrain.tokens, pretrain.training.lr, pretrain.tokens)
    assert end_of_pretrain == lr_at(0, midtrain.training.lr, midtrain.tokens) == PEAK
    assert lr_at(midtrain.tokens, midtrain.training.lr, midtrain.tokens) == lr_at(
        0, decay.training.lr, decay.tokens
    )
    assert lr_at(decay.tokens, decay.training.lr, decay.tokens) == pytest.approx(0.02 * PEAK)
    assert lr_at(1_500_000_000, pretrain.training.lr, pretrain.tokens) == pytest.approx(
        PEAK / 2
    )  # half the 3B warmup


def test_batch_size_warmup_ramps_from_the_minimum():
    spec = replace(load_recipe().phase("pretrain").training, batch_warmup_tokens=60_000)
    assert batch_size_at(0, spec) == 768
    assert batch_size_at(30_000, spec) == 768 + (4608 - 768) // 2
    assert batch_size_at(15_000, spec) == 768 + math.floor((4608 - 768) * 0.25)
    assert batch_size_at(60_000, spec) == batch_size_at(10**12, spec) == 4608
    assert batch_size_at(0, replace(spec, batch_warmup_tokens=0)) == 4608


def test_micro_batches_hold_exactly_the_batch():
    assert micro_batch_sizes(4608, 1024, 8192, 4608) == [8192] * 576  # the recipe's batch, as before
    assert micro_batch_sizes(16, 1024, 8192, 16) == [8192] * 2  # the demo's
    assert micro_batch_sizes(2, 8192, 16384, 2) == [16384]
    # a batch smaller than a micro-batch is one micro-batch of the batch, not a micro-batch's worth
    assert micro_batch_sizes(1, 1024, 8192, 1) == [1024] and micro_batch_sizes(1, 8192, 16384, 1) == [8192]
    assert micro_batch_sizes(3, 1024, 8192, 3) == [3072] and micro_batch_sizes(5, 1024, 8192, 5) == [5120]
    assert micro_batch_sizes(12, 1024, 8192, 12) == [6144, 6144]  # not rounded to 2 x 8192
    for sequences in range(1, 80):
        for seq_len, micro in ((512, 8192), (1024, 3000), (8192, 16384)):
            sizes = micro_batch_sizes(sequences, seq_len, micro, sequences)
            assert sum(sizes) == sequences * seq_len and all(seq_len <= size <= micro for size in sizes)
            assert len(sizes) == -(-sequences * seq_len // micro)  # as few as hold the batch


def test_batch_warmup_steps_are_whole_micro_batches_within_the_batch():
    assert micro_batch_sizes(768, 1024, 8192, 4608) == [8192] * 96  # the recipe's ramp starts whole
    # the demo's ramp (3, 6, 10, 14 of 16 sequences) as it always trained: nearest whole, at least one
    assert [len(micro_batch_sizes(n, 1024, 8192, 16)) for n in (3, 6, 10, 14)] == [1, 1, 1, 2]
    assert micro_batch_sizes(20, 1024, 8192, 32) == [8192] * 3  # 2.5 rounds up, not to even
    # never beyond the full batch: then the ramp's own tokens, split as a full batch's are
    assert micro_batch_sizes(1, 1024, 8192, 3) == [1024]
    assert micro_batch_sizes(10, 1024, 8192, 12) == [8192]
    assert micro_batch_sizes(6, 1024, 4096, 7) == [3072, 3072]  # 2 x 4096 would exceed 7 x 1024


def test_the_banner_says_what_a_step_trains():
    assert describe_step(4, 512, 8192) == "batch 4 x 512 = 2,048 tokens per step, in 1 micro-batch of 2,048"
    assert describe_step(16, 1024, 8192) == (
        "batch 16 x 1024 = 16,384 tokens per step, in 2 micro-batches of 8,192"
    )
    assert describe_step(3, 1024, 2048) == (
        "batch 3 x 1024 = 3,072 tokens per step, in 2 micro-batches of 1,536"
    )
    assert describe_step(5, 1000, 2048) == (
        "batch 5 x 1000 = 5,000 tokens per step, in 3 micro-batches of 1,666 to 1,667"
    )
