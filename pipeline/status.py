"""Where a build or a Slurm download stands (`mmbert-data status`), read from datatrove's logging
directories.

Every stage logs under ``OUTPUT/PHASE/_logs/STAGE/`` (a download under
``MIRROR/_logs/download-PHASE/``): ``executor.json`` (its task count), ``completions/NNNNN`` (a
finished task), ``logs/task_NNNNN.log`` (a started task; a failed one ends with an ERROR record and
its traceback). A Slurm build also leaves ``slurm_jobs.json``
(``pipeline.slurm``), the arrays of its latest submission, so ``squeue`` tells which of the
unfinished tasks are running or pending. A local build has no queue: its unfinished tasks are
running or were interrupted, and the command cannot tell which.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.slurm import SUBMITTED_JOBS

STAGE_ORDER = ("process", "buckets", "clusters", "write", "select", "heldout", "stats")
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STAGE_OUT"}


@dataclass
class StageStatus:
    """One stage's tasks by state; ``errors`` maps a failed task to the last line of its log."""

    name: str
    tasks: int
    done: int = 0
    running: int = 0
    pending: int = 0
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.errors)

    @property
    def unfinished(self) -> int:
        """Neither done, failed, nor in the queue: running locally, interrupted, or cancelled."""
        return self.tasks - self.done - self.failed - self.running - self.pending


def phase_dirs(run_dir: Path) -> list[Path]:
    """The phase directories under ``run_dir``: itself when it is one (it has ``_logs``), else its children"""
    if (run_dir / "_logs").is_dir():
        return [run_dir]
    return sorted(p for p in run_dir.iterdir() if (p / "_logs").is_dir()) if run_dir.is_dir() else []


def queue_states() -> dict[str, str] | None:
    """Each queued array element (``34_2``) and its state, or None where ``squeue`` does not answer."""
    try:
        listed = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(line.split(maxsplit=1) for line in listed.splitlines() if " " in line)


def stage_status(stage_dir: Path, queue: dict[str, str] | None) -> StageStatus:
    """The state of each task of the stage logging in ``stage_dir``."""
    tasks = json.loads((stage_dir / "executor.json").read_text())["world_size"]
    status = StageStatus(stage_dir.name, tasks)
    completions = stage_dir / "completions"
    done = {int(p.name) for p in completions.iterdir() if p.name.isdigit()} if completions.is_dir() else set()
    status.done = len(done)
    queued = _queued_ranks(stage_dir, queue) if queue is not None else {}
    for rank in range(tasks):
        if rank in done:
            continue
        state = queued.get(rank)
        if state in RUNNING_STATES:
            status.running += 1
        elif state is not None:
            status.pending += 1
        else:
            error = _last_error(stage_dir / "logs" / f"task_{rank:05d}.log")
            if error is not None:
                status.errors[rank] = error
    return status


def _queued_ranks(stage_dir: Path, queue: dict[str, str]) -> dict[int, str]:
    """The queue state of each task of the stage's latest Slurm submission (datatrove runs task
    ``ranks_to_run[element + max_array_size * array]`` in element ``element`` of its ``array``-th array)."""
    jobs_file, ranks_file = stage_dir / SUBMITTED_JOBS, stage_dir / "ranks_to_run.json"
    if not jobs_file.is_file() or not ranks_file.is_file():
        return {}
    jobs = json.loads(jobs_file.read_text())
    ranks = json.loads(ranks_file.read_text())
    states = {}
    for offset, array in enumerate(jobs["arrays"]):
        for element_id, state in queue.items():
            job, _, element = element_id.partition("_")
            if job != array or not element.isdigit():
                continue
            index = int(element) + jobs["max_array_size"] * offset
            if index < len(ranks):
                states[ranks[index]] = state
    return states


def _last_error(log: Path) -> str | None:
    """The last line of a task log that ends in an error (its exception), or None if it does not."""
    if not log.is_file():
        return None
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    if not any("| ERROR" in line for line in lines):
        return None
    return lines[-1]


def build_status(run_dir: Path) -> dict[Path, list[StageStatus]]:
    """Every phase under ``run_dir`` and the status of each of its stages, in build order."""
    queue = queue_states()
    found = {}
    for phase_dir in phase_dirs(run_dir):
        logs = phase_dir / "_logs"
        stages = [d for d in logs.iterdir() if (d / "executor.json").is_file()]
        stages.sort(
            key=lambda d: (STAGE_ORDER.index(d.name) if d.name in STAGE_ORDER else len(STAGE_ORDER), d.name)
        )
        found[phase_dir] = [stage_status(d, queue) for d in stages]
    return found
