"""The annealing picture: each language's share of the multilingual tokens, phase by phase.

Languages run along the x axis from the largest to the smallest pool (by rank,
on a log scale when there are too many to name); the y axis is logarithmic, so
the flattening from tau 0.7 to 0.3 and the epoch cap on the tiny tail are both
visible. Each language is a dot, as a phase's languages need not be adjacent;
a grey line shows the natural share (tau = 1) for reference. Drawn with
matplotlib's object API on the Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

LABELLED_LANGUAGES = 60  # up to this many languages, the x axis names them


def plot_shares(
    series: Sequence[tuple[str, Mapping[str, float]]], pool: Mapping[str, int], path: str | Path
) -> None:
    """Draw ``series`` (label, language -> share) over the ``pool`` sizes and write a PNG atomically."""
    path = Path(path)
    order = sorted((name for name, size in pool.items() if size > 0), key=lambda name: (-pool[name], name))
    rank = {name: i + 1 for i, name in enumerate(order)}
    total = sum(pool[name] for name in order)
    fig = Figure(figsize=(11, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(
        list(rank.values()),
        [pool[name] / total for name in order],
        color="0.6",
        linestyle="--",
        linewidth=1,
        label="natural share (tau = 1)",
    )
    for label, shares in series:
        names = sorted((name for name in shares if name in rank and shares[name] > 0), key=rank.__getitem__)
        ax.plot(
            [rank[name] for name in names],
            [shares[name] for name in names],
            linestyle="none",
            marker="o",
            markersize=5 if len(order) <= LABELLED_LANGUAGES else 2,
            alpha=0.85,
            zorder=3 + 1 / (1 + len(names)),  # sparser phases on top
            label=f"{label} ({len(names)} languages)",
        )
    ax.set_yscale("log")
    ax.set_ylabel("share of the multilingual tokens (log scale)")
    if len(order) <= LABELLED_LANGUAGES:
        ax.set_xticks(list(rank.values()), order, rotation=90, fontsize=8)
        ax.set_xlabel("language, largest pool first")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("language rank by available tokens (1 = largest, log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("Per-language share across phases")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(temp, format="png", dpi=120)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
