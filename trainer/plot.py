"""The loss curve: loss and learning rate against tokens, one colour per phase.

Several runs given in order (pre-training, context extension, decay) are laid
end to end on one token axis, so the recipe's trapezoid and the loss across
phases read as one training. Drawn with matplotlib's object API (Agg canvas,
no display needed; imported once its font cache is pointed into the project's
cache) and written through a temporary name.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mixtures.cache import matplotlib_in_cache
from mixtures.files import make_parent, write_atomic
from trainer.metrics import METRICS_NAME, read_records

SMOOTHING_WINDOW = (8, 101)  # the smoothed loss averages over an eighth of a run's steps, at most 101


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (ValueError naming the file if there is none)."""
    path = Path(run_dir) / METRICS_NAME
    try:
        records = read_records(path)
    except OSError as err:
        raise ValueError(f"{path}: no metrics to plot ({err.strerror or err})") from err
    if not records:
        raise ValueError(f"{path}: no steps recorded yet")
    return records


def smoothed(values: Sequence[float]) -> list[float]:
    """A centred moving average (no lag) over a window that grows with the run, cut short at its ends."""
    share, cap = SMOOTHING_WINDOW
    half = int(min(cap, max(1, len(values) / share)) // 2)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    out = []
    for i in range(len(values)):
        start, stop = max(0, i - half), min(len(values), i + half + 1)
        out.append((sums[stop] - sums[start]) / (stop - start))
    return out


def plot_runs(run_dirs: Sequence[str | Path], path: str | Path) -> Path:
    """Draw the runs' loss and learning rate against tokens (runs end to end) into a PNG at ``path``."""
    matplotlib_in_cache()  # before matplotlib is first imported
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    loss_axes, lr_axes = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    offset = 0
    for index, run_dir in enumerate(run_dirs):
        records = read_metrics(run_dir)
        colour = f"C{index}"
        tokens = [offset + r["tokens"] for r in records]
        losses = [r["loss"] for r in records]
        phase, name = records[-1]["phase"], Path(run_dir).name
        label = phase if name == phase else f"{phase} ({name})"
        loss_axes.plot(tokens, losses, color=colour, alpha=0.25, linewidth=0.8)
        loss_axes.plot(tokens, smoothed(losses), color=colour, linewidth=1.8, label=label)
        lr_axes.plot(tokens, [r["lr"] for r in records], color=colour, linewidth=1.5)
        offset = tokens[-1]
    loss_axes.set_ylabel("MLM loss (masked tokens)")
    loss_axes.legend(loc="upper right")
    loss_axes.grid(alpha=0.3)
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("tokens")
    lr_axes.grid(alpha=0.3)
    make_parent(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return write_atomic(path, buffer.getvalue())
