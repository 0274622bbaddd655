"""Bad input handling: one policy (`fail` or `skip`) applied everywhere input is read.

With ``fail`` the first bad file or record stops the build with an :class:`InputError`
naming the file and line/row. With ``skip`` the build goes on and every problem is
kept in a per-task report, so nothing bad is silently lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mixtures.files import write_atomic
from mixtures.hub import HubUnavailable
from mixtures.storage import StorageError

ON_ERROR_CHOICES = ("fail", "skip")


class InputError(ValueError):
    """A bad input file or record; the message starts with ``path[:line]``."""


class NoInputError(ValueError):
    """A source or selected language for which no input file is found; the message says where it looked."""


# Errors whose message says all the user needs (what is wrong, where, and the fix): a command prints
# them in one line; their traceback goes to the task log (`--verbose` shows it).
USER_ERRORS = (ValueError, FileNotFoundError, HubUnavailable, StorageError)


@dataclass(frozen=True)
class InputProblem:
    """One bad file or record, as listed in the errors report."""

    source: str
    path: str
    line: int | None  # 1-based line (JSON lines) or 0-based row (parquet); None for a whole file
    error: str

    def record(self) -> dict:
        """The problem as a line of ``errors.jsonl``: where a parquet file's record is its ``row`` (from 0,
        as pyarrow counts), a JSON lines file's its ``line`` (from 1), as the messages say."""
        key = "row" if self.path.endswith(".parquet") else "line"
        return {"source": self.source, "path": self.path, key: self.line, "error": self.error}

    def __str__(self) -> str:
        if self.line is None:
            where = self.path
        elif self.path.endswith(".parquet"):
            where = f"{self.path} (row {self.line}, from 0)"
        else:
            where = f"{self.path}:{self.line}"
        return f"{where}: {self.error}"


class ErrorLog:
    """Collects the problems one task meets and applies the ``on_error`` policy."""

    def __init__(self, on_error: str = "fail"):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.on_error = on_error
        self.problems: list[InputProblem] = []

    def report(self, source: str, path: str, line: int | None, error: str) -> None:
        """Raise under ``fail``; remember the problem under ``skip``."""
        problem = InputProblem(source, path, line, error)
        if self.on_error == "fail":
            raise InputError(f"{problem} (rerun with --on-error skip to skip bad input and list it)")
        self.problems.append(problem)

    def write(self, path: Path) -> None:
        """Write the problems as JSON lines (temp name, then rename).

        A path that is not valid Unicode (an undecodable file name) is written as JSON escapes.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(problem.record(), ensure_ascii=False) + "\n" for problem in self.problems)
        write_atomic(path, text.encode("utf-8", errors="backslashreplace"))
