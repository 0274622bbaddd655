"""Writing files so that a crash never leaves a half-written one under its final name.

Every output is written under a temporary name in its own directory and renamed when
complete: a reader sees the old file or the new one, never a part. There is one
temporary name (:func:`temporary_path`): hidden, and unique per host and process, so two
processes writing the same file never write into each other's; what a killed writer left
under it is removed by the next write of the same file on that host.

A directory that one process at a time may write (a build's phase directory, a
training run) is guarded by a :class:`FileLock`.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

HOST = socket.gethostname()


def temporary_path(path: str | Path) -> Path:
    """The name ``path`` is written under before it is renamed: ``.{name}.{host}.{pid}.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.tmp")


def remove_dead_temporaries(path: str | Path) -> None:
    """Remove what writers of ``path`` on this host left under their temporary names when they died
    (a SIGKILL leaves no time to clean up): a live writer's temporary, or another host's, stays."""
    path = Path(path)
    prefix = f".{path.name}.{HOST}."
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = leftover.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                _remove(leftover)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_pattern(pattern: str) -> str:
    """A glob matching the temporary names of files named like ``pattern``, whichever process wrote them
    (to remove what an interrupted writer left)."""
    return f".{pattern}.*.tmp"


# What an OSError says when an output cannot be written at all (not a passing failure)
UNWRITABLE = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC}


def unwritable_reason(err: OSError) -> str:
    """Why ``err`` stopped a write, in words: "a file or directory is in the way" for the errnos that
    mean so (a file where a directory must go, or the reverse), else the system's message."""
    if err.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return "a file or directory is in the way"
    return err.strerror or str(err)


class OutputError(OSError):
    """An output that cannot be written (read-only, full, a file in the way): one line naming it."""

    def __str__(self) -> str:
        return self.strerror


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Raise an OSError of the block as an OutputError naming ``path`` (the output, not a temporary)."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(err.errno, f"{path}: cannot be written ({unwritable_reason(err)})") from err


def make_parent(path: str | Path) -> None:
    """Create the directory ``path`` goes in (an OutputError naming ``path`` if that fails)."""
    with writing(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through its temporary name, synced, then rename it."""
    path = Path(path)
    temporary = temporary_path(path)
    remove_dead_temporaries(path)
    try:
        with writing(path), open(temporary, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        with writing(path):
            os.replace(temporary, path)
    finally:
        _remove(temporary)
    return path


def _remove(temporary: Path) -> None:
    """Remove a temporary left by a failed write, if there is one (none when its directory is a file)."""
    with suppress(FileNotFoundError, NotADirectoryError):
        temporary.unlink()


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """For writers that take a file name (savefig, safetensors, a copy): they write the path this
    yields, and it becomes ``path`` when the block ends without an error; otherwise it is removed."""
    path = Path(path)
    temporary = temporary_path(path)
    remove_dead_temporaries(path)
    try:
        with writing(path):
            yield temporary
            os.replace(temporary, path)
    finally:
        _remove(temporary)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """For outputs that are directories: the block fills the directory this yields, which becomes
    ``path`` (replacing an empty directory there) when the block ends without an error; otherwise it
    is removed with all it holds, so a writer that fails midway leaves nothing."""
    path = Path(path)
    temporary = temporary_path(path)
    shutil.rmtree(temporary, ignore_errors=True)  # left by a killed process that had this pid
    remove_dead_temporaries(path)
    try:
        with writing(path):
            temporary.mkdir(parents=True)
        yield temporary
        with writing(path):
            os.rename(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


class LockHeld(Exception):
    """Another live process holds the lock; the message names it (pid, host, started)."""

    def __init__(self, holder: Mapping[str, Any]):
        super().__init__(describe_holder(holder))


class FileLock:
    """An exclusive ``flock`` on ``path`` for as long as the ``with`` block runs; the file names the holder.

    The kernel releases a ``flock`` when its holder dies, however it dies, so a lock
    file left by a killed process is taken over, never waited for (``taken_over``
    is then the dead holder's record); the pid inside only serves the messages.
    Entering raises :class:`LockHeld` while a live process holds it, OSError on a
    filesystem without ``flock``. :meth:`holder_now` tells whether the file is still
    this lock's, for writers that must stop once another process took their directory.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.taken_over: dict[str, Any] | None = None
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise LockHeld(holder) from None
            except OSError:  # a filesystem without flock (some NFS or Lustre mounts)
                os.close(fd)
                raise
            if self._same_file(fd):  # the holder before us may have removed it between our open and flock
                break
            os.close(fd)
        self.taken_over = _holder(fd) or None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._same_file(self._fd):  # still holding it, so nobody waits on a removed file
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def takeover_note(self) -> str:
        """What to tell the user when ``taken_over`` is set."""
        holder = self.taken_over or {}
        return (
            f"note: took over {self.path} from pid {holder.get('pid')} on {holder.get('host')}, "
            "which stopped without releasing it"
        )

    def holder_now(self) -> dict[str, Any] | None:
        """None while ``path`` is still this lock's file; else the record of the one there now
        (empty when the file is gone or names nobody)."""
        if self._same_file(self._fd):
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return {}
        try:
            return _holder(fd)
        finally:
            os.close(fd)

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False


def _holder(fd: int) -> dict[str, Any]:
    """The record a lock file holds (empty when it holds none, or something else)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def describe_holder(holder: Mapping[str, Any]) -> str:
    """The process a lock record names, for messages (``pid 123 on node7, started ...``)."""
    if not holder:
        return "pid unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's content, read in chunks (shards are large)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
