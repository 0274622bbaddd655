"""Per-language token targets: the samplers (temperature sampling, UniMax) and an epoch cap.

Temperature sampling (XLM-R, Conneau et al., 2020, arXiv 1911.02116; mmBERT):
with q_i the share of language i in the pool, ``p_i = q_i^tau / sum_j q_j^tau``.
tau = 1 keeps the natural proportions, tau -> 0 tends to uniform, and for
tau > 0 a larger language never gets a smaller weight. Weights are computed in
log space so that tiny shares (FineWeb2's smallest subsets are ~1e-10 of the
pool) neither underflow nor lose precision.

The cap. Language i may be asked for at most ``c_i`` tokens (its available
tokens times the allowed epochs). Multiplying the budget B by p_i can exceed
c_i for small languages at low tau; such a language is held at its cap and the
budget it cannot absorb is shared by the others in proportion to their weights,
repeating until nobody exceeds their cap. The fixed point is
``t_i = min(c_i, lam * p_i)`` with ``sum_i t_i = B`` (water-filling), and it is
found in one pass instead of by repetition: order the languages by ``c_i / p_i``
and walk up that order keeping R, the budget not yet given to capped languages,
and W, the weight of the languages not yet capped. Language k is capped iff
``c_k / p_k <= R / W``; capping it never lowers R / W (the mediant of two
ratios lies between them), so the capped languages are a prefix of the order.
Everyone after the prefix gets ``R * p_i / W``. If every language is capped and
budget is left over, the pool cannot fill the budget and that is an error that
says by how much.

UniMax (Chung et al., 2023, "UniMax: Fairer and More Effective Language
Sampling", arXiv 2304.09151): spend the budget uniformly over languages, give
no language more than a fixed number of epochs of its data, and share what the
small ones cannot take among the rest. That is the capped allocation above with equal weights.

Targets are whole tokens: the real-valued targets are rounded with the largest
remainder method, which keeps the sum exactly equal to the budget and never
lifts a language above its cap.

``SAMPLERS`` names the samplers: the compiler, the ``--sampler`` choices and the
mixture table read that one table, so a new sampler is one function and one entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mixtures.errors import MixtureError


@dataclass(frozen=True)
class Allocation:
    """Whole-token targets, and which of them were held at their cap."""

    targets: tuple[int, ...]
    capped: tuple[bool, ...]


def check_temperature(temperature: float) -> None:
    """Refuse a tau the sampling formula has no meaning for, before it turns into a budget error."""
    if not 0 < temperature < math.inf:  # also false for nan
        raise MixtureError(f"temperature must be a finite number > 0, got {temperature}")


def temperature_weights(sizes: Sequence[float], temperature: float) -> list[float]:
    """``p_i = q_i^tau / sum_j q_j^tau`` with q_i = size_i / sum(sizes); empty languages get 0."""
    check_temperature(temperature)
    if any(not math.isfinite(size) or size < 0 for size in sizes):
        raise MixtureError("language sizes must be finite and >= 0")
    logs = [math.log(size) for size in sizes if size > 0]
    if not logs:
        raise MixtureError("the pool is empty: no language has any tokens")
    top = max(logs)
    powered = [math.exp(temperature * (math.log(size) - top)) if size > 0 else 0.0 for size in sizes]
    total = math.fsum(powered)
    return [value / total for value in powered]


def capped_allocation(budget: int, weights: Sequence[float], caps: Sequence[int | None]) -> Allocation:
    """Split ``budget`` tokens in proportion to ``weights``, no language above its cap (None = no cap)."""
    if budget < 0:
        raise MixtureError(f"budget must be >= 0, got {budget}")
    if len(weights) != len(caps):
        raise ValueError("weights and caps must have the same length")
    eligible = [i for i, weight in enumerate(weights) if weight > 0]
    order = sorted(eligible, key=lambda i: (math.inf if caps[i] is None else caps[i] / weights[i], i))
    suffix_weight = [0.0] * (len(order) + 1)
    for position in range(len(order) - 1, -1, -1):
        suffix_weight[position] = suffix_weight[position + 1] + weights[order[position]]
    remaining = budget
    position = 0
    while position < len(order):
        i = order[position]
        cap = caps[i]
        if cap is None or cap * suffix_weight[position] > remaining * weights[i]:
            break
        remaining -= cap
        position += 1
    values = [0.0] * len(weights)
    capped = [False] * len(weights)
    for i in order[:position]:
        values[i] = float(caps[i])
        capped[i] = True
    uncapped = order[position:]
    if not uncapped:
        if remaining > 0:
            raise MixtureError(
                f"cannot fill a budget of {budget:,} tokens: at most {budget - remaining:,} fit within the "
                f"epoch caps of its {len(order)} stream{'' if len(order) == 1 else 's'} ({remaining:,} short)"
            )
    else:
        weight = suffix_weight[position]
        for i in uncapped:
            values[i] = remaining * weights[i] / weight
    return Allocation(tuple(apportion(values, budget, caps)), tuple(capped))


def temperature_allocation(
    budget: int, sizes: Sequence[float], caps: Sequence[int | None], temperature: float
) -> Allocation:
    """Temperature sampling: ``budget`` split as ``p_i = q_i^tau / sum_j q_j^tau`` under the caps."""
    return capped_allocation(budget, temperature_weights(sizes, temperature), caps)


def unimax_allocation(
    budget: int, sizes: Sequence[float], caps: Sequence[int | None], temperature: float
) -> Allocation:
    """UniMax: a uniform split of ``budget`` under the caps (the sizes count through the caps alone)."""
    return capped_allocation(budget, [1.0] * len(caps), caps)


@dataclass(frozen=True)
class Sampler:
    """How the pool's budget is split over its languages, and how the mixture table names that."""

    allocate: Callable[[int, Sequence[float], Sequence[int | None], float], Allocation]
    title: str  # the mixture table's words for it; ``{temperature}`` is the phase's tau


SAMPLERS: dict[str, Sampler] = {
    "temperature": Sampler(temperature_allocation, "temperature {temperature:g}"),
    "unimax": Sampler(unimax_allocation, "UniMax"),
}


def apportion(values: Sequence[float], total: int, caps: Sequence[int | None] | None = None) -> list[int]:
    """Round ``values`` (which sum to ``total``) to integers summing exactly to ``total``.

    Largest remainder: every value is rounded down, then the values with the
    largest fractional parts are rounded up until the total is met (ties go to
    the earlier index, so the result is deterministic). A value at its cap, or
    zero, is never rounded up.
    """
    floors = [math.floor(value) for value in values]
    short = total - sum(floors)
    order = sorted(range(len(values)), key=lambda i: (floors[i] - values[i], i))
    raisable = [
        i for i in order if values[i] > 0 and (caps is None or caps[i] is None or floors[i] < caps[i])
    ]
    if not 0 <= short <= len(raisable):
        raise ValueError(f"values sum to {math.fsum(values)}, which cannot be rounded to {total}")
    for i in raisable[:short]:
        floors[i] += 1
    return floors
