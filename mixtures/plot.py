"""The annealing picture: each language's share of the multilingual tokens, phase by phase.

Languages run along the x axis from the largest to the smallest pool (by rank,
on a log scale when there are too many to name); the y axis is a percentage on a
log scale, so the flattening from tau 0.7 to 0.3 and the epoch cap on the tiny
tail are both visible. Each language is a dot, as a phase's languages need not be
adjacent; a grey line shows the natural share (tau = 1) for reference.

A log axis cannot show a zero: a language of a phase whose target rounds to no
tokens, or a pool language the build kept no tokens of, is not drawn, and the
legend and a note under the plot say how many were left out, so that every
language is either on the plot or counted. Drawn with matplotlib's object API on
the Agg canvas: no display, no global pyplot state; matplotlib is imported once
its font cache is pointed into the project's cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mixtures.cache import matplotlib_in_cache
from mixtures.files import atomic_output, make_parent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABELLED_LANGUAGES = 60  # up to this many languages, the x axis names them
NAMED_LEFT_OUT = 8  # the note names this many of the languages it leaves out


def plot_shares(
    series: Sequence[tuple[str, Mapping[str, float]]], pool: Mapping[str, int], path: str | Path
) -> None:
    """Draw ``series`` (label, language -> share) over the ``pool`` sizes and write a PNG atomically."""
    path = Path(path)
    fig = shares_figure(series, pool)
    make_parent(path)
    with atomic_output(path) as temporary:
        fig.savefig(temporary, format="png", dpi=120)


def shares_figure(series: Sequence[tuple[str, Mapping[str, float]]], pool: Mapping[str, int]) -> Figure:
    """The figure ``plot_shares`` writes (see the module docstring)."""
    matplotlib_in_cache()  # before matplotlib is first imported
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

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
        label=f"natural share (tau = 1, {len(order):,} languages)",
    )
    left_out: dict[str, None] = {}  # in order of appearance
    for label, shares in series:
        names = sorted((name for name in shares if name in rank and shares[name] > 0), key=rank.__getitem__)
        missing = [name for name in shares if name not in names]
        left_out.update(dict.fromkeys(missing))
        ax.plot(
            [rank[name] for name in names],
            [shares[name] for name in names],
            linestyle="none",
            marker="o",
            markersize=5 if len(order) <= LABELLED_LANGUAGES else 2,
            alpha=0.85,
            zorder=3 + 1 / (1 + len(names)),  # sparser phases on top
            label=f"{label} ({len(names):,} languages"
            + (f"; {len(missing):,} with no tokens not drawn)" if missing else ")"),
        )
    ax.set_yscale("log")
    ax.set_ylabel("share of the multilingual tokens (log scale)")
    percent = FuncFormatter(lambda share, _: f"{share * 100:.3g}%")
    ax.yaxis.set_major_formatter(percent)
    low, high = ax.get_ylim()
    # within a decade or two the log axis has few major ticks, so its minor ticks are labelled too
    ax.yaxis.set_minor_formatter(percent if math.log10(high / low) < 2 else NullFormatter())
    if len(order) <= LABELLED_LANGUAGES:
        ax.set_xticks(list(rank.values()), order, rotation=90, fontsize=8)
        ax.set_xlabel("language, largest pool first")
    else:
        ax.set_xscale("log")
        ax.set_xlabel(
            f"language rank by available tokens (1 = largest, log scale; {len(order):,} languages, "
            "too many to name)"
        )
    empty = sorted(name for name, size in pool.items() if size <= 0)
    left_out.update(dict.fromkeys(empty))
    if left_out:
        named = ", ".join(list(left_out)[:NAMED_LEFT_OUT]) + (
            " ..." if len(left_out) > NAMED_LEFT_OUT else ""
        )
        fig.supxlabel(
            f"Not drawn, as a zero share has no place on a log axis: {len(left_out):,} "
            f"language{'s' if len(left_out) != 1 else ''} with no tokens ({named})",
            x=0.01,
            ha="left",
            fontsize=8,
            color="0.3",
        )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("Per-language share across phases")
    return fig
