"""Plain implementations that the library's faster ones are measured against (bench/) and checked
against (tests/): each is the textbook algorithm, written for clarity, not speed."""

from __future__ import annotations

import math


def redistribute_until_stable(budget: int, weights: list[float], caps: list[int]) -> list[float]:
    """The epoch cap as the issue words it: cap, share the excess over the uncapped, repeat.

    ``mixtures.sampling.capped_allocation`` reaches the same targets in one pass over the
    streams sorted by cap / weight.
    """
    capped: set[int] = set()
    while True:
        free = [i for i in range(len(weights)) if i not in capped]
        remaining = budget - sum(caps[i] for i in capped)
        weight = math.fsum(weights[i] for i in free)
        targets = {i: remaining * weights[i] / weight for i in free}
        over = {i for i in free if targets[i] > caps[i]}
        if not over:
            return [float(caps[i]) if i in capped else targets[i] for i in range(len(weights))]
        capped |= over
