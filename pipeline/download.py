"""Mirroring just the files a phase needs, resumably, into a local directory.

The mirror keeps each source's layout under ``DIR/<path of its URI>`` (for the hub:
``DIR/datasets/<repo>/...``), so a build reads it back with ``--input-root DIR``.
Files are copied to a temp name, checked against the remote size and checksum
(the hub's sha256 for LFS files and git blob id for others, an S3 object's MD5
ETag) and renamed; files already present with the right size and checksum are
skipped, so an interrupted download continues where it stopped and a damaged one
is fetched again. ``--dry-run`` lists what would be copied, with the total size.

On Slurm (``--executor slurm``) the files are shared out over the tasks of one array
job, :class:`MirrorFiles` copying each task's share; its logs are in
``DIR/_logs/download-PHASE`` (``mmbert-data status DIR`` reads them), and a rerun
resubmits only the tasks without a completion.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from mixtures.files import atomic_output, write_atomic
from mixtures.slurm import job_tag
from mixtures.storage import etag_md5
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


@dataclass(frozen=True)
class Checksum:
    """A file's digest as its store publishes it: ``sha256`` (a hub file kept in LFS), ``git-sha1``
    (another hub file: its git blob id, sha1 of ``blob <size>\\0`` + its bytes) or ``md5`` (an S3
    object uploaded in one part, whose ETag is the MD5 of its bytes)."""

    algorithm: str
    digest: str

    @classmethod
    def published(cls, info: dict) -> Checksum | None:
        """The checksum in an fsspec ``info()`` of a file, or None when its store gives none."""
        if isinstance(info.get("lfs"), dict) and info["lfs"].get("sha256"):
            return cls("sha256", info["lfs"]["sha256"])
        if info.get("blob_id"):
            return cls("git-sha1", info["blob_id"])
        md5 = etag_md5(info.get("ETag") or info.get("etag"))
        return cls("md5", md5) if md5 else None

    def hasher(self, size: int):
        """A hashlib object that, fed a file's bytes, gives ``digest`` when the file is right."""
        if self.algorithm == "git-sha1":
            return hashlib.sha1(f"blob {size}\0".encode())
        return hashlib.new(self.algorithm)

    def of_file(self, path: Path) -> str:
        digest = self.hasher(path.stat().st_size)
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest()


def mirror_path(reader: SourceReader, path: str, target: Path) -> Path:
    """Where ``path`` (relative to the reader's source root) goes in the mirror ``target``."""
    uri = reader.source.uri
    if "://" not in uri:
        raise ValueError(f"source {reader.source.name} is already local ({uri}); nothing to download")
    return Path(resolve_uri(uri, str(target))) / path


def is_mirrored(destination: Path, size: int, checksum: Checksum | None) -> bool:
    """Whether ``destination`` already holds the file: its size, and its checksum when there is one."""
    if not destination.is_file() or destination.stat().st_size != size:
        return False
    return checksum is None or checksum.of_file(destination) == checksum.digest


def copy_file(reader: SourceReader, path: str, target: Path) -> int | None:
    """Copy one file into the mirror; return its size, or None when it was there already.
    Raises OSError when the copy's size or checksum is not the remote one (nothing is kept)."""
    folder, destination = reader.data_folder, mirror_path(reader, path, target)
    info = folder.info(path)
    size, checksum = int(info["size"]), Checksum.published(info)
    if is_mirrored(destination, size, checksum):
        return None
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(destination) as tmp:
        digest = checksum.hasher(size) if checksum else None
        with folder.open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(CHUNK_BYTES):
                dst.write(chunk)
                if digest:
                    digest.update(chunk)
        remote = folder.resolve_paths(path)
        if tmp.stat().st_size != size:
            raise OSError(f"{remote}: copied {tmp.stat().st_size} bytes, expected {size}; run again")
        if digest and digest.hexdigest() != checksum.digest:
            raise OSError(
                f"{remote}: copied bytes have {checksum.algorithm} {digest.hexdigest()}, "
                f"expected {checksum.digest}; run again (the file may have changed mid-copy)"
            )
    return size


@dataclass
class PlannedFile:
    path: Path  # in the mirror
    size: int  # bytes
    present: bool  # already mirrored, by size and checksum


def plan_download(inputs: Iterable[tuple[SourceReader, list[str]]], target: Path) -> list[PlannedFile]:
    """What `download` would do, copying nothing: each file's place in the mirror, size and state."""
    planned = []
    for reader, files in inputs:
        for path in files:
            info = reader.data_folder.info(path)
            destination = mirror_path(reader, path, target)
            present = is_mirrored(destination, int(info["size"]), Checksum.published(info))
            planned.append(PlannedFile(destination, int(info["size"]), present))
    return planned


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
