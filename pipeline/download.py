"""Mirroring just the files a phase needs, resumably, into a local directory.

The mirror keeps each source's layout under ``DIR/<path of its URI>`` (for the hub:
``DIR/datasets/<repo>/...``), so a build reads it back with ``--input-root DIR``.
Files are copied to a temp name, checked against the remote size and renamed;
files already present with the right size are skipped, so an interrupted
download continues where it stopped.

On Slurm (``--executor slurm``) the files are shared out over the tasks of one array
job, :class:`MirrorFiles` copying each task's share; its logs are in
``DIR/_logs/download-PHASE`` (``mmbert-data status DIR`` reads them), and a rerun
resubmits only the tasks without a completion.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from mixtures.files import atomic_output, write_atomic
from mixtures.slurm import job_tag
from pipeline.build_options import BuildOptions
from pipeline.slurm import (
    ChainedSlurmExecutor,
    check_can_submit,
    cluster_max_array_size,
    slurm_executor,
    submit_chain,
)
from pipeline.sources import SourceReader, resolve_uri

CHUNK_BYTES = 8 << 20
PLAN_NAME = "files.json"  # in a Slurm download's logging dir: its tasks and the files they share out


@dataclass
class DownloadResult:
    copied: int = 0
    skipped: int = 0
    bytes: int = 0


def mirror_path(reader: SourceReader, path: str, target: Path) -> Path:
    """Where ``path`` (relative to the reader's source root) goes in the mirror ``target``."""
    uri = reader.source.uri
    if "://" not in uri:
        raise ValueError(f"source {reader.source.name} is already local ({uri}); nothing to download")
    return Path(resolve_uri(uri, str(target))) / path


def copy_file(reader: SourceReader, path: str, target: Path) -> int | None:
    """Copy one file into the mirror; return its size, or None when it was there already (same size).
    Raises OSError when the copy's size is not the remote one."""
    folder, destination = reader.data_folder, mirror_path(reader, path, target)
    size = folder.size(path)
    if destination.exists() and destination.stat().st_size == size:
        return None
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(destination) as tmp:
        with folder.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
        if tmp.stat().st_size != size:
            raise OSError(f"{folder.resolve_paths(path)}: copied {tmp.stat().st_size} bytes, expected {size}")
    return size


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
        for path in files:
            size = copy_file(reader, path, target)
            if size is None:
                result.skipped += 1
                continue
            result.copied += 1
            result.bytes += size
            if progress:
                progress(str(mirror_path(reader, path, target)), size)
    return result


class MirrorFiles(PipelineStep):
    """One task's share of a download: files ``rank``, ``rank + world_size``, ... of all, copied."""

    name = "⬇️ mirror"
    type = "📥 - DOWNLOAD"

    def __init__(self, inputs: list[tuple[SourceReader, list[str]]], target: Path):
        super().__init__()
        self.files = [(reader, path) for reader, files in inputs for path in files]
        self.target = Path(target)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for reader, path in self.files[rank::world_size]:
            with self.track_time():
                size = copy_file(reader, path, self.target)
            self.stat_update("skipped" if size is None else "copied")
            self.stat_update("bytes", value=size or 0)
        yield from data or ()


def submit_download(
    options: BuildOptions, inputs: list[tuple[SourceReader, list[str]]], target: Path
) -> ChainedSlurmExecutor:
    """Submit the download of ``inputs`` into ``target`` as one Slurm array of ``--tasks`` tasks (no
    more than there are files). A rerun of the same files resubmits only the tasks not done; another
    selection of files starts the download's tasks afresh (a file already copied is still kept)."""
    target = Path(target).resolve()
    logging_dir = target / "_logs" / f"download-{options.phase}"
    tag = job_tag(logging_dir)
    check_can_submit(tag, target, "download")
    step = MirrorFiles(inputs, target)
    tasks = min(options.tasks, len(step.files))
    files = {"tasks": tasks, "files": [f"{reader.source.name}/{path}" for reader, path in step.files]}
    plan = logging_dir / PLAN_NAME
    if logging_dir.is_dir() and (not plan.is_file() or json.loads(plan.read_text()) != files):
        shutil.rmtree(logging_dir)  # other files or tasks: the completions of the tasks before mean nothing
    logging_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(plan, json.dumps(files))
    executor = slurm_executor(
        [step],
        options.slurm,
        tasks=tasks,
        workers=options.workers,
        logging_dir=logging_dir,
        job_name=f"mmbert-download-{options.phase}-{tag}",
        max_array_size=cluster_max_array_size(),
    )
    submit_chain({"download": executor})
    return executor
