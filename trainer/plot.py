"""The loss curve, and the held-out evaluation's per-language picture.

Loss curve: loss and learning rate against tokens, one colour per phase. Several
runs given in order (pre-training, context extension, decay) are laid end to end on
one token axis, so the recipe's trapezoid and the loss across phases read as one
training; a run started with ``--init`` from another run of the plot (or one of its
checkpoints) starts where that run was, so the three decays branch from midtrain. Where a
run evaluated on held-out data (``--eval-every``), each group's mean held-out loss is drawn
at those marks, one marker shape per group.

Evaluation (``mmbert-train eval --plot``): each language's held-out loss and
accuracy, one colour of dots per model; languages grouped by the phase that added
them, sorted within a group by the first model's loss, groups separated by
vertical lines and named.

Drawn with matplotlib's object API (Agg canvas, no display needed; imported once
its font cache is pointed into the project's cache) and written through a
temporary name.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixtures.cache import matplotlib_in_cache
from mixtures.files import make_parent, write_atomic
from trainer.checkpoint import STATE_NAME, checkpoint_dirs
from trainer.metrics import METRICS_NAME, read_records

LOSS_PLOT_NAME = "loss.png"  # a run's own loss curve, RUN/loss.png
SMOOTHING_WINDOW = (8, 101)  # the smoothed loss averages over an eighth of a run's steps, at most 101
EVAL_MARKERS = "os^Dvp*"  # one per held-out group in the loss curve, one per model in the evaluation
LABELLED_LANGUAGES = 60  # up to this many languages, the evaluation plot names them


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


def branch_point(run_dir: str | Path, starts: dict[Path, int], default: int) -> int:
    """Where ``run_dir`` starts on the token axis: at the end of the run (or checkpoint) its newest
    checkpoint says it was ``--init`` from, when that run is in ``starts`` (run -> its start);
    else ``default``, the end of the run drawn before it."""
    found = checkpoint_dirs(run_dir)
    try:
        init = json.loads((found[-1] / STATE_NAME).read_text())["config"]["init"] if found else None
    except (OSError, ValueError, KeyError, TypeError):  # a damaged state: drawn end to end
        return default
    if not init:
        return default
    source = Path(init).resolve()
    if source in starts:  # a run: its newest checkpoint
        checkpoint = next(iter(checkpoint_dirs(source)[-1:]), None)
        run = source
    elif source.parent.parent in starts:  # one of a run's checkpoints
        checkpoint, run = source, source.parent.parent
    else:
        return default
    try:
        return starts[run] + json.loads((checkpoint / STATE_NAME).read_text())["tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        return default


def plot_runs(run_dirs: Sequence[str | Path], path: str | Path) -> Path:
    """Draw the runs' loss and learning rate against tokens (runs end to end) into a PNG at ``path``."""
    matplotlib_in_cache()  # before matplotlib is first imported
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    loss_axes, lr_axes = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    offset = 0
    starts: dict[Path, int] = {}  # each run's place on the token axis
    markers: dict[str, str] = {}
    for index, run_dir in enumerate(run_dirs):
        records = read_metrics(run_dir)
        offset = branch_point(run_dir, starts, default=offset)
        starts[Path(run_dir).resolve()] = offset
        colour = f"C{index}"
        tokens = [offset + r["tokens"] for r in records]
        losses = [r["loss"] for r in records]
        phase, name = records[-1]["phase"], Path(run_dir).name
        label = phase if name == phase else f"{phase} ({name})"
        loss_axes.plot(tokens, losses, color=colour, alpha=0.25, linewidth=0.8)
        loss_axes.plot(tokens, smoothed(losses), color=colour, linewidth=1.8, label=label)
        lr_axes.plot(tokens, [r["lr"] for r in records], color=colour, linewidth=1.5)
        for key in dict.fromkeys(k for r in records for k in r if k.startswith("eval_loss_")):
            marks = [(t, r[key]) for t, r in zip(tokens, records, strict=True) if r.get(key) is not None]
            if not marks:
                continue
            group = key.removeprefix("eval_loss_")
            new = group not in markers
            marker = markers.setdefault(group, EVAL_MARKERS[len(markers) % len(EVAL_MARKERS)])
            loss_axes.plot(
                *zip(*marks, strict=True),
                color=colour,
                marker=marker,
                linestyle=":",
                linewidth=0.8,
                markersize=5,
                label=f"held-out, {group} (mean over languages)" if new else None,
            )
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


def plot_eval(document: dict[str, Any], path: str | Path) -> Path:
    """Draw an evaluation report (``trainer.eval.report``) into a PNG at ``path``: per language, its
    loss (top) and accuracy (bottom), a dot per model; see the module docstring."""
    matplotlib_in_cache()  # before matplotlib is first imported
    from matplotlib.figure import Figure

    models, languages = document["models"], document["languages"]
    first = models[0]["languages"]
    order: list[str] = []
    bounds = []  # (first x, last x, label) of each group
    for group in document["groups"]:
        members = [name for name, language in languages.items() if language["group"] == group["key"]]
        members.sort(key=lambda name: (first[name]["loss"] is None, first[name]["loss"] or 0.0, name))
        bounds.append((len(order), len(order) + len(members) - 1, group["label"]))
        order += members
    fig = Figure(figsize=(max(8.0, min(24.0, 0.18 * len(order) + 4)), 7), layout="constrained")
    loss_axes, accuracy_axes = fig.subplots(2, 1, sharex=True)
    for index, model in enumerate(models):
        figures = model["languages"]
        shown = [x for x, name in enumerate(order) if figures[name]["loss"] is not None]
        marker = EVAL_MARKERS[index % len(EVAL_MARKERS)]  # a shape per model: equal figures stay visible
        style = {"color": f"C{index}", "linestyle": "none", "marker": marker, "markersize": 4, "alpha": 0.8}
        loss_axes.plot(shown, [figures[order[x]]["loss"] for x in shown], label=model["name"], **style)
        accuracy_axes.plot(shown, [100 * figures[order[x]]["accuracy"] for x in shown], **style)
    for start, stop, label in bounds:
        for axes in (loss_axes, accuracy_axes):
            if start:
                axes.axvline(start - 0.5, color="0.5", linewidth=1)
        loss_axes.text(
            (start + stop) / 2,
            1.01,
            label,
            transform=loss_axes.get_xaxis_transform(),
            ha="center",
            va="bottom",
        )
    loss_axes.set_ylabel("held-out MLM loss (nats)")
    loss_axes.legend(loc="upper left", fontsize=8)
    accuracy_axes.set_ylabel("masked-token accuracy (%)")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(axis="y", alpha=0.3)
    if len(order) <= LABELLED_LANGUAGES:
        accuracy_axes.set_xticks(range(len(order)), order, rotation=90, fontsize=7)
    else:
        accuracy_axes.set_xticks([])
        accuracy_axes.set_xlabel(f"{len(order):,} languages, by group, lowest loss first (too many to name)")
    fig.suptitle(f"held-out evaluation: {document['build']}, mask rate {document['mask_rate']}", fontsize=10)
    make_parent(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return write_atomic(path, buffer.getvalue())
