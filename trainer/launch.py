"""How this process was started: alone, as a ``torchrun`` worker, or as one task of ``srun``.

Both are read first thing in ``mmbert-train``, before torch is imported (2-3 s), so
no torch here.

- **torchrun**: its agent starts each worker in a session of its own, so killing
  torchrun (or its process group) would leave the workers training and writing
  beside a run started after them. :func:`exit_with_agent` records the parent
  early enough that it is the agent even when the agent dies during the worker's
  start; a worker that finds itself orphaned already (its parent is init) stops.
- **srun** without torchrun (``srun --ntasks-per-node=G mmbert-train ...``):
  :func:`ranks_from_slurm` sets the ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` and ``MASTER_PORT`` that torchrun would have set, from
  ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the step's first node and
  the job id (and ``OMP_NUM_THREADS`` from ``SLURM_CPUS_PER_TASK``), so the rest of the
  trainer sees one way of being distributed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import MutableMapping

PARENT_POLL_S = 1.0
INIT_PID = 1  # where an orphan is re-parented (without a subreaper)


PORT_BASE, PORT_SPAN = 20_000, 20_000  # MASTER_PORT under srun: one per job id, so jobs on a node differ


def started_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def ranks_from_slurm(environ: MutableMapping[str, str] = os.environ) -> None:
    """Under ``srun`` and not torchrun, set torchrun's variables from Slurm's (see the module docstring).

    A task of a job step has ``SLURM_STEP_NUM_TASKS``; the batch script itself (one process,
    whatever ``--ntasks`` says) does not, and is left alone. Variables already set win.
    """
    if started_by_torchrun() or "RANK" in environ or "SLURM_STEP_NUM_TASKS" not in environ:
        return
    environ.setdefault("WORLD_SIZE", environ["SLURM_STEP_NUM_TASKS"])
    environ.setdefault("RANK", environ.get("SLURM_PROCID", "0"))
    environ.setdefault("LOCAL_RANK", environ.get("SLURM_LOCALID", "0"))
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "localhost"
    environ.setdefault("MASTER_ADDR", first_host(nodes))
    environ.setdefault("MASTER_PORT", str(PORT_BASE + int(environ.get("SLURM_JOB_ID", "0")) % PORT_SPAN))
    if "SLURM_CPUS_PER_TASK" in environ:  # torch's threads: the task's CPUs, not the whole node's
        environ.setdefault("OMP_NUM_THREADS", environ["SLURM_CPUS_PER_TASK"])


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: ``gpu[007-009,012],cpu1`` -> ``gpu007``.

    The same as the first line of ``scontrol show hostnames``, without needing scontrol.
    """
    head, bracket, rest = nodelist.partition("[")
    if not bracket or "," in head:
        return head.split(",")[0]
    return head + rest.split(",")[0].split("-")[0].rstrip("]")


def exit_with_agent() -> None:
    """Under torchrun, end this process as soon as its parent (the agent) is gone, as SIGKILL would.

    A thread polls the parent's pid every ``PARENT_POLL_S`` seconds. Nothing is saved on the
    way out: the last checkpoint stands, and ``--resume`` continues from it.
    """
    if not started_by_torchrun():
        return
    parent = os.getppid()
    if parent == INIT_PID:
        _stop("its torchrun agent was gone before it started")

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        _stop(f"its torchrun agent (pid {parent}) is gone")

    threading.Thread(target=watch, name="exit-with-agent", daemon=True).start()


def _stop(why: str) -> None:
    print(f"rank {os.environ.get('RANK', '?')}: {why}; stopping", file=sys.stderr, flush=True)
    os._exit(1)
