"""Processes from /proc, for the kill tests and bench/kill_resume.py: a process's children, whether one lives.

torchrun's agent starts its workers in sessions of their own, so they are found by
parent pid, not by process group.
"""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first, then the parent's pid)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(_stat(entry.name)[1]) == pid:
                found.append(int(entry.name))
        except OSError:  # it exited while we looked
            continue
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False
