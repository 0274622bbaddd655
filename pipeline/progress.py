"""Following a local stage's tasks as they finish, for one progress bar per stage.

datatrove marks each finished task with a completion file under the stage's
logging directory (the same files a rerun reads to skip finished tasks).
:class:`TaskWatch` counts them from a thread while the executor runs in the
caller's thread, and hands the count to a display: the command's progress bar,
which shows tasks done, their rate and the time left. datatrove's own bars (one
per task and source) are switched off by the command, so a build prints one bar
per stage whatever its number of tasks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from datatrove.executor.base import PipelineExecutor


class StageDisplay(Protocol):
    """What shows a stage's progress: entered before the stage runs, given the finished count."""

    def __call__(self, name: str, tasks: int, done: int) -> AbstractContextManager[Callable[[int], None]]:
        """Open the display of stage ``name`` with ``done`` of its ``tasks`` finished by an earlier run;
        the context yields the function to call with each new count of finished tasks."""
        ...


def finished_tasks(executor: PipelineExecutor) -> int:
    """How many of the executor's tasks have a completion file (0..world_size)."""
    tasks = executor.world_size
    return tasks - len(executor.get_incomplete_ranks(range(tasks)))


class TaskWatch:
    """Calls ``report(finished)`` each time the executor's count of finished tasks changes.

    ``interval`` (seconds) is how often the completion files are counted: one
    ``stat`` per unfinished task each time, cheap beside any task.
    """

    def __init__(self, executor: PipelineExecutor, report: Callable[[int], None], interval: float = 0.5):
        self.executor, self.report, self.interval = executor, report, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="task-watch", daemon=True)
        self._last = -1

    def _count(self) -> None:
        finished = finished_tasks(self.executor)
        if finished != self._last:
            self._last = finished
            self.report(finished)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._count()

    def __enter__(self) -> TaskWatch:
        self._count()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._count()


@contextlib.contextmanager
def watched(executor: PipelineExecutor, name: str, display: StageDisplay | None) -> Iterator[None]:
    """Run the body (the executor's ``run``) with ``display`` following stage ``name``'s tasks."""
    if display is None:
        yield
        return
    with display(name, executor.world_size, finished_tasks(executor)) as report, TaskWatch(executor, report):
        yield
