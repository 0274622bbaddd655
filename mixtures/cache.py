"""Where mmbert-data keeps downloaded and derived assets between runs.

One directory (``$MMBERT_DATA_CACHE``, default ``~/.cache/mmbert-data``) holds the
offline LID model, trained demo tokenizers, matplotlib's font cache and the pointer to the last build, so
that every command finds them without flags and tests can isolate them.

The last-build pointer (``last-build.json``) is written by `mmbert-data build` and read by
`mmbert-data mixture`; both go through this module, so its name and shape are defined once:
``{"output": OUTPUT, "phases": {PHASE: PHASE_DIR, ...}}``, the phases built into that output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixtures.errors import MixtureError
from mixtures.files import write_atomic

LAST_BUILD = "last-build.json"


def cache_dir() -> Path:
    """The cache directory (created on first use)."""
    root = os.environ.get("MMBERT_DATA_CACHE") or Path.home() / ".cache" / "mmbert-data"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def matplotlib_in_cache() -> None:
    """Point matplotlib's configuration and font cache into the cache (unless ``MPLCONFIGDIR`` already
    says where): left alone it writes them under ``$HOME``. Call it before importing matplotlib."""
    os.environ.setdefault("MPLCONFIGDIR", str(cache_dir() / "matplotlib"))


def record_last_build(output: Path, phase: str, phase_dir: Path) -> None:
    """Remember where the last build wrote, so `mmbert-data mixture` finds it without flags.

    Phases built into the same output accumulate; a build into another output starts a new record.
    """
    pointer = cache_dir() / LAST_BUILD
    try:
        last = json.loads(pointer.read_text())
    except (OSError, json.JSONDecodeError):
        last = {}
    if last.get("output") != str(output):
        last = {"output": str(output), "phases": {}}
    last["phases"][phase] = str(phase_dir)
    write_atomic(pointer, json.dumps(last, indent=1))


def last_build_stats(phase: str) -> Path:
    """The ``stats.json`` of ``phase`` in the last build, as recorded by :func:`record_last_build`."""
    pointer = cache_dir() / LAST_BUILD
    if not pointer.exists():
        raise MixtureError(
            f"no --stats or --counts given and no build recorded at {pointer}; "
            "run `mmbert-data build` first or pass --stats DIR / --counts CSV"
        )
    try:
        record = json.loads(pointer.read_text(encoding="utf-8"))
        phases = record["phases"]
        output = record.get("output", "?")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise MixtureError(
            f"{pointer}: not a last-build record ({err}); run `mmbert-data build` again"
        ) from err
    if not isinstance(phases, dict) or phase not in phases:
        known = ", ".join(phases) if isinstance(phases, dict) else "none"
        raise MixtureError(
            f"the last build ({output}) has no phase {phase!r} (phases: {known}); "
            f"run `mmbert-data build --phase {phase}` or pass --stats DIR"
        )
    stats = Path(phases[phase]) / "stats.json"
    if not stats.exists():
        raise MixtureError(f"the last build's {phase} phase has no statistics: {stats} is missing")
    return stats
