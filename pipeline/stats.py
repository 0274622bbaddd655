"""Build statistics: per (source, language) counts, compiled from datatrove's own stats.

Steps count what happens to each document of a (source, language) stream with datatrove's
``stat_update``, under the labels :mod:`pipeline.streams` defines (``read``, ``kept``,
``heldout``, ``repeated``, ``tokens``, ``bytes``, ``heldout_tokens``, ``dropped/{reason}``,
``skipped/{rule}``); the executor saves them per task. ``read == kept + sum(dropped)``; of the
kept, ``heldout`` are set aside for evaluation; rehydration's extra copies are counted apart, as
``repeated`` (the training shards hold ``kept - heldout + repeated`` documents, the held-out
shards ``heldout``). :func:`compile_stats` adds them up
over tasks and stages, joins the shard lists the writers left, and writes
``{phase_dir}/stats.json`` — the file the mixture compiler reads.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mixtures.files import write_atomic
from mixtures.formats import HELDOUT_DIR, STATS_FORMAT, STATS_VERSION
from mixtures.languages import count_languages, language_code
from mixtures.recipe import format_tokens
from mixtures.storage import join
from pipeline.streams import DROPPED, SKIPPED, parse_label
from pipeline.words import word_splitting


class StatsCompiler(PipelineStep):
    """The build's last stage (one task): writes ``stats.json`` once every other stage is done.

    Being a stage of its own, it runs wherever the build runs (locally or as the last
    Slurm job) and, like any stage, only once.
    """

    name = "📊 stats.json"
    type = "📊 - STATS"

    def __init__(self, phase_dir: str, phase: str, recipe: dict, tokenizer: dict):
        super().__init__()
        self.phase_dir = phase_dir
        self.phase = phase
        self.recipe = recipe
        self.tokenizer = tokenizer

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        compile_stats(Path(self.phase_dir), self.phase, self.recipe, self.tokenizer)
        yield from data or ()


def _metric_total(value) -> int:
    return int(value["total"] if isinstance(value, dict) else value)


def stream_counters(logs_dir: Path) -> dict[tuple[str, str], dict]:
    """Add up the stream counters (:mod:`pipeline.streams`) of every task of every stage in ``logs_dir``."""
    streams: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"counts": defaultdict(int), DROPPED: defaultdict(int), SKIPPED: defaultdict(int)}
    )
    for stats_file in sorted(logs_dir.glob("*/stats/*.json")):
        for step in json.loads(stats_file.read_text()):
            for label, value in step.get("stats", {}).items():
                parsed = parse_label(label)
                if parsed is None:
                    continue
                entry = streams[(parsed.source, parsed.language)]
                if parsed.counter in (DROPPED, SKIPPED):
                    entry[parsed.counter][parsed.detail] += _metric_total(value)
                else:
                    entry["counts"][parsed.counter] += _metric_total(value)
    return streams


def compile_stats(phase_dir: Path, phase: str, recipe: dict, tokenizer: dict) -> dict:
    """Write ``stats.json`` for a finished build and return it."""
    shards: dict[tuple[str, str, bool], list[dict]] = defaultdict(list)
    for index in sorted((phase_dir / "_shards").glob("*.json")):
        for shard in json.loads(index.read_text()):
            shards[(shard["source"], shard["language"], shard["heldout"])].append(
                {k: shard[k] for k in ("path", "documents", "tokens", "bytes", "sha256")}
            )
    lines = [
        line
        for report in sorted((phase_dir / "_errors").glob("*.jsonl"))
        for line in report.read_text(encoding="utf-8").splitlines()
        if line
    ]
    problems = [json.loads(line) for line in lines]
    errors_path = phase_dir / "errors.jsonl"
    write_atomic(errors_path, "".join(line + "\n" for line in lines))
    errors_by_source: dict[str, int] = defaultdict(int)
    for problem in problems:
        errors_by_source[problem["source"]] += 1

    streams = []
    for (source, language), entry in sorted(stream_counters(phase_dir / "_logs").items()):
        counts, drops = entry["counts"], entry[DROPPED]
        listed = {
            heldout: sorted(shards.get((source, language, heldout), []), key=lambda s: s["path"])
            for heldout in (False, True)
        }
        streams.append(
            {
                "source": source,
                "language": language,
                "documents_read": counts["read"],
                "documents_kept": counts["kept"],
                "documents_heldout": counts["heldout"],
                "documents_repeated": counts["repeated"],
                "drops": dict(sorted(drops.items())),
                "tokens": counts["tokens"],
                "bytes": counts["bytes"],
                "shards": listed[False],
                "heldout_tokens": counts["heldout_tokens"],
                "heldout": listed[True],
                **_skipped_rules(language, entry[SKIPPED]),
            }
        )
    stats = {
        "format": STATS_FORMAT,
        "version": STATS_VERSION,
        "phase": phase,
        "recipe": recipe,
        "tokenizer": tokenizer,
        "streams": streams,
        "errors": {
            "count": len(problems),
            "by_source": dict(sorted(errors_by_source.items())),
            "report": errors_path.name if problems else None,
        },
    }
    write_atomic(phase_dir / "stats.json", json.dumps(stats, indent=1, ensure_ascii=False) + "\n")
    return stats


def _skipped_rules(language: str, skipped: dict[str, int]) -> dict:
    """``skipped_rules``: the quality rules not applied to a stream, with the documents and the reason."""
    if not skipped:
        return {}
    reasons = word_splitting(language).skipped
    return {
        "skipped_rules": {
            rule: {"documents": n, "why": reasons.get(rule, "")} for rule, n in sorted(skipped.items())
        }
    }


def stats_summary(stats: dict, top: int | None = None) -> dict:
    """What `mmbert-data stats` shows: one row per stream, or the ``top`` streams with the most tokens
    (largest first), and the totals over every stream. ``errors`` is the build's record of bad input
    (``count``, ``by_source`` and the ``report`` file beside stats.json)."""
    streams = stats["streams"]
    shown = streams if top is None else sorted(streams, key=lambda s: -s["tokens"])[:top]
    subsets = {s["language"] for s in streams}
    counted = (
        "documents_read",
        "documents_kept",
        "documents_heldout",
        "documents_repeated",
        "tokens",
        "bytes",
        "heldout_tokens",
    )
    totals = {key: sum(s[key] for s in streams) for key in counted}
    shard_counts = {key: sum(len(s[key]) for s in streams) for key in ("shards", "heldout")}
    return {
        "phase": stats["phase"],
        "streams": len(streams),
        "languages": len({language_code(name) for name in subsets}),
        "language_script_subsets": len(subsets),
        "totals": {**totals, "shards": shard_counts["shards"], "heldout_shards": shard_counts["heldout"]},
        "errors": stats["errors"],
        "rows": [
            {
                **{key: stream[key] for key in ("source", "language", *counted, "drops")},
                "shards": len(stream["shards"]),
                "heldout_shards": len(stream["heldout"]),
                "skipped_rules": stream.get("skipped_rules", {}),
            }
            for stream in shown
        ],
    }


def print_stats(
    stats: dict, console: Console | None = None, top: int | None = None, phase_dir: str | Path | None = None
) -> None:
    """The per-(source, language) table a user checks after a build (``top``: see ``stats_summary``).

    ``phase_dir`` (where ``stats`` was read: a path or URL) makes the held-out and bad-input reports
    places one can open from here.
    """
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    summary = stats_summary(stats, top)
    rows, totals = summary["rows"], summary["totals"]
    languages = count_languages(stream["language"] for stream in stats["streams"])
    title = f"{stats['phase']}: {summary['streams']} streams, {languages}"
    if len(rows) < summary["streams"]:
        title += f"; the {len(rows)} with the most tokens"
    table = Table(title=title, show_footer=True)
    repeated = totals["documents_repeated"] > 0  # only rehydrated builds repeat documents
    table.add_column("source", footer="total")
    table.add_column("language")
    table.add_column("read", justify="right", footer=str(totals["documents_read"]))
    table.add_column("kept", justify="right", footer=str(totals["documents_kept"]))
    table.add_column("held out", justify="right", footer=str(totals["documents_heldout"]))
    if repeated:
        table.add_column("repeated", justify="right", footer=str(totals["documents_repeated"]))
    table.add_column("tokens", justify="right", footer=format_tokens(totals["tokens"]))
    table.add_column("bytes", justify="right", footer=format_tokens(totals["bytes"]))
    table.add_column("shards", justify="right", footer=str(totals["shards"]))
    table.add_column("drops (reason: documents)")
    for row in rows:
        table.add_row(
            row["source"],
            row["language"],
            str(row["documents_read"]),
            str(row["documents_kept"]),
            str(row["documents_heldout"]),
            *([str(row["documents_repeated"])] if repeated else []),
            format_tokens(row["tokens"]),
            format_tokens(row["bytes"]),
            str(row["shards"]),
            " ".join(f"{reason}:{n}" for reason, n in row["drops"].items()),
        )
    if len(rows) < summary["streams"]:
        table.add_row("...", f"{summary['streams'] - len(rows)} more")
    console.print(table)
    if totals["documents_heldout"]:
        heldout_dir = join(phase_dir, HELDOUT_DIR) if phase_dir else HELDOUT_DIR
        console.print(
            f"held out for evaluation, never trained on: {totals['documents_heldout']} documents, "
            f"{format_tokens(totals['heldout_tokens'])} tokens in {totals['heldout_shards']} shards "
            f"under {escape(str(heldout_dir))}",
            soft_wrap=True,
        )
    for stream in stats["streams"]:
        rules_by_reason = defaultdict(list)
        for rule, skipped in stream.get("skipped_rules", {}).items():
            rules_by_reason[skipped["why"]].append(rule)
        for why, rules in rules_by_reason.items():
            console.print(
                f"[yellow]{stream['source']}/{stream['language']}: {', '.join(rules)} not applied: "
                f"{escape(why)}[/]",
                soft_wrap=True,
            )
    errors = stats["errors"]
    if errors["count"]:
        report = join(phase_dir, errors["report"]) if phase_dir else errors["report"]
        console.print(
            f"[yellow]{errors['count']} bad input file(s)/record(s) skipped; see {escape(str(report))}[/]",
            soft_wrap=True,
        )
