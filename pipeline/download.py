"""Mirroring just the files a phase needs, resumably, into a local directory.

The mirror keeps each source's layout under ``DIR/<path of its URI>`` (for the hub:
``DIR/datasets/<repo>/...``), so a build reads it back with ``--input-root DIR``.
Files are copied to a temp name, checked against the remote size and renamed;
files already present with the right size are skipped, so an interrupted
download continues where it stopped.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mixtures.files import atomic_output
from pipeline.sources import SourceReader, resolve_uri

CHUNK_BYTES = 8 << 20


@dataclass
class DownloadResult:
    copied: int = 0
    skipped: int = 0
    bytes: int = 0


def download_phase(
    inputs: Iterable[tuple[SourceReader, list[str]]],
    target: Path,
    progress: Callable[[str, int], None] | None = None,
) -> DownloadResult:
    """Copy each reader's ``files`` (relative to its source root) into ``target``; return what was done.

    ``inputs`` is what a build would read, as ``Build.input_files`` lists it: listing stops at
    once, in one line, when the hub cannot be reached or a source or language has no files.
    """
    result = DownloadResult()
    for reader, files in inputs:
        folder, uri = reader.data_folder, reader.source.uri
        if "://" not in uri:
            raise ValueError(f"source {reader.source.name} is already local ({uri}); nothing to download")
        mirror = Path(resolve_uri(uri, str(target)))
        for path in files:
            destination = mirror / path
            size = folder.size(path)
            if destination.exists() and destination.stat().st_size == size:
                result.skipped += 1
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(destination) as tmp:
                with folder.open(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
                if tmp.stat().st_size != size:
                    raise OSError(
                        f"{folder.resolve_paths(path)}: copied {tmp.stat().st_size} bytes, expected {size}"
                    )
            result.copied += 1
            result.bytes += size
            if progress:
                progress(str(destination), size)
    return result
