"""torchrun's agent, seen from one of its workers: the worker ends when its agent is gone.

torchrun's agent starts each worker in a session of its own, so killing torchrun (or
its process group) would leave the workers training and writing beside a run
started after them. :func:`exit_with_agent` is called first thing in ``mmbert-train``,
before torch is imported (2-3 s), so the parent it records is the agent even when
the agent dies during the worker's start; a worker that finds itself orphaned
already (its parent is init, pid 1) stops at once. No torch here, for that reason.
"""

from __future__ import annotations

import os
import sys
import threading
import time

PARENT_POLL_S = 1.0
INIT_PID = 1  # where an orphan is re-parented (without a subreaper)


def started_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


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
