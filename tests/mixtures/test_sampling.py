"""Properties of temperature sampling, the epoch cap and UniMax (issue 3, acceptance 1)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.peers import redistribute_until_stable
from mixtures.errors import MixtureError
from mixtures.sampling import SAMPLERS, apportion, capped_allocation, temperature_weights, unimax_allocation

sizes = st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=40)
temperatures = st.floats(min_value=0.05, max_value=2.0)


@given(sizes, temperatures)
def test_weights_sum_to_one(counts, tau):
    assert math.isclose(math.fsum(temperature_weights(counts, tau)), 1.0, rel_tol=1e-12)


@given(sizes)
def test_temperature_one_is_proportional(counts):
    total = sum(counts)
    for weight, count in zip(temperature_weights(counts, 1.0), counts, strict=True):
        assert math.isclose(weight, count / total, rel_tol=1e-9)


@given(sizes)
def test_temperature_towards_zero_is_uniform(counts):
    for weight in temperature_weights(counts, 1e-9):
        assert math.isclose(weight, 1 / len(counts), rel_tol=1e-6)


@given(sizes, temperatures)
def test_weights_are_monotone_in_size(counts, tau):
    pairs = sorted(zip(counts, temperature_weights(counts, tau), strict=True))
    for (size_a, weight_a), (size_b, weight_b) in zip(pairs, pairs[1:], strict=False):
        assert weight_a <= weight_b if size_a < size_b else weight_a == weight_b


@given(sizes, temperatures)
def test_lower_temperature_flattens(counts, tau):
    """The largest language's weight never grows as tau falls (the annealing of the schedule)."""
    largest = counts.index(max(counts))
    assert temperature_weights(counts, tau / 2)[largest] <= temperature_weights(counts, tau)[largest] + 1e-12


def test_empty_languages_get_no_weight_and_bad_input_is_refused():
    assert temperature_weights([0, 10, 0], 0.3) == [0.0, 1.0, 0.0]
    with pytest.raises(MixtureError, match="empty"):
        temperature_weights([0, 0], 0.5)
    with pytest.raises(MixtureError, match="temperature"):
        temperature_weights([1, 2], 0.0)


@settings(max_examples=200)
@given(sizes, temperatures, st.floats(min_value=0.5, max_value=10), st.floats(min_value=0.01, max_value=1.0))
def test_capped_allocation_conserves_budget_and_holds_every_cap(counts, tau, epochs, fill):
    caps = [math.floor(count * epochs) for count in counts]
    budget = int(sum(caps) * fill)
    weights = temperature_weights(counts, tau)
    allocation = capped_allocation(budget, weights, caps)
    assert sum(allocation.targets) == budget
    assert all(0 <= target <= cap for target, cap in zip(allocation.targets, caps, strict=True))
    reference = redistribute_until_stable(budget, weights, caps)
    for target, expected in zip(allocation.targets, reference, strict=True):
        assert abs(target - expected) <= 1 + 1e-9 * budget
    uncapped = [i for i, capped in enumerate(allocation.capped) if not capped]
    for i, capped in enumerate(allocation.capped):
        if capped:
            assert allocation.targets[i] == caps[i]
            # it was capped because it asked for more than its cap at the final level
            for j in uncapped:
                assert caps[i] <= (allocation.targets[j] + 1) / weights[j] * weights[i] * (1 + 1e-9)


@given(sizes, temperatures)
def test_without_caps_targets_follow_the_weights(counts, tau):
    budget = 10**9
    weights = temperature_weights(counts, tau)
    allocation = capped_allocation(budget, weights, [None] * len(counts))
    assert sum(allocation.targets) == budget
    assert not any(allocation.capped)
    for target, weight in zip(allocation.targets, weights, strict=True):
        assert abs(target - budget * weight) < 1 + 1e-9 * budget


def test_pool_too_small_is_an_error_saying_by_how_much():
    with pytest.raises(
        MixtureError, match=r"budget of 1,000 tokens: at most 150 fit .* of its 2 streams \(850 short\)"
    ):
        capped_allocation(1000, [0.5, 0.5], [100, 50])


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=40), st.floats(0.01, 1.0))
def test_unimax_is_uniform_below_the_caps(caps, fill):
    budget = int(sum(caps) * fill)
    allocation = unimax_allocation(budget, caps, caps, 0.7)  # one epoch each: the caps are the sizes
    assert sum(allocation.targets) == budget
    assert all(target <= cap for target, cap in zip(allocation.targets, caps, strict=True))
    free = [t for t, capped in zip(allocation.targets, allocation.capped, strict=True) if not capped]
    if free:
        assert max(free) - min(free) <= 1
        assert all(cap <= max(free) for cap, capped in zip(caps, allocation.capped, strict=True) if capped)


@pytest.mark.parametrize("name", list(SAMPLERS))
@given(counts=sizes, tau=temperatures, fill=st.floats(0.01, 1.0))
def test_every_sampler_fills_the_budget_within_the_caps(name, counts, tau, fill):
    caps = [2 * count for count in counts]  # two epochs
    budget = int(sum(caps) * fill)
    allocation = SAMPLERS[name].allocate(budget, counts, caps, tau)
    assert sum(allocation.targets) == budget
    assert all(0 <= target <= cap for target, cap in zip(allocation.targets, caps, strict=True))
    assert all(
        target == cap
        for target, cap, held in zip(allocation.targets, caps, allocation.capped, strict=True)
        if held
    )


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=30))
def test_apportion_rounds_to_the_exact_total(values):
    total = round(math.fsum(values))
    scaled = [v * total / math.fsum(values) for v in values] if math.fsum(values) else values
    rounded = apportion(scaled, total)
    assert sum(rounded) == total
    assert all(math.floor(v) <= r <= math.floor(v) + 1 for v, r in zip(scaled, rounded, strict=True))


@given(sizes, temperatures)
def test_allocation_is_deterministic(counts, tau):
    weights = temperature_weights(counts, tau)
    caps = [count * 3 for count in counts]
    budget = sum(counts)
    assert capped_allocation(budget, weights, caps) == capped_allocation(budget, weights, caps)
