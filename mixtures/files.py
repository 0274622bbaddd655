"""Writing files so that a crash never leaves a half-written one under its final name.

Every output is written under a temporary name in its own directory and renamed when
complete: a reader sees the old file or the new one, never a part. There is one
temporary name (:func:`temporary_path`): hidden, and unique per process, so two
processes writing the same file never write into each other's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_path(path: str | Path) -> Path:
    """The name ``path`` is written under before it is renamed: ``.{name}.{pid}.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temporary_pattern(pattern: str) -> str:
    """A glob matching the temporary names of files named like ``pattern``, whichever process wrote them
    (to remove what an interrupted writer left)."""
    return f".{pattern}.*.tmp"


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through its temporary name, synced, then rename it."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """For writers that take a file name (savefig, safetensors, a copy): they write the path this
    yields, and it becomes ``path`` when the block ends without an error; otherwise it is removed."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's content, read in chunks (shards are large)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
