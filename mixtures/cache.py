"""Where mmbert-data keeps downloaded and derived assets between runs.

One directory (``$MMBERT_DATA_CACHE``, default ``~/.cache/mmbert-data``) holds the
offline LID model, trained demo tokenizers and matplotlib's font cache, so that every
command finds them without flags and tests can isolate them; under ``staging/``, the local
copies of builds whose output is an object store (safe to delete once they are uploaded).
It holds assets only, never a record of what a command did: every clone and job shares it,
so such a record would leak one project's state into another's.
"""

from __future__ import annotations

import os
from pathlib import Path


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
