"""The learning-rate schedules a recipe's ``lr.schedule`` may name.

A decay's shape is a pure function of the decay's progress ``p`` in [0, 1] (the
fraction of the tokens after warmup seen so far) to the share of the way from
the floor to the peak still left: 1 at the start, 0 at the end. The learning
rate is then ``peak * (f + (1 - f) * shape(p))`` with ``f`` the schedule's
``final_fraction`` (``trainer/schedule.py::lr_at``).

The shapes live here, in the contract between the recipe and the trainer, so
that both read one table: the recipe checks a schedule's name against its keys
and the trainer looks the shape up in it. A new decay shape is one entry of
``DECAYS``, its comment naming the formula's source. Standard library only, so
that the trainer needs nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Callable

# The schedules without a decay: a linear warmup to the peak, then the peak; the peak from the start.
CONSTANT_SCHEDULES = ("warmup_constant", "constant")

DECAYS: dict[str, Callable[[float], float]] = {
    "one_minus_sqrt": lambda p: 1.0 - math.sqrt(p),  # Hägele et al. 2024, arXiv 2405.18392; mmBERT's decay
    "linear": lambda p: 1.0 - p,
}
