"""`mmbert-data`'s reading commands given the wrong kind of path: one line naming what to give instead."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.data import app
from tests.fixtures import write_build

runner = CliRunner()


def error_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = result.output.splitlines()
    return line


def test_stats_of_a_build_root_names_its_phases(tmp_path):
    out = tmp_path / "out"
    write_build(out, phase="decay")
    write_build(out, phase="pretrain")
    assert error_line(["stats", str(out)]) == (
        f"error: {out} is a build's output, not one of its phases: pass {out}/decay or {out}/pretrain"
    )


def test_inspect_of_a_directory_names_a_shard_in_it(tmp_path):
    phase_dir = write_build(tmp_path / "out")
    first = min(phase_dir.rglob("*.arrow"))
    assert error_line(["inspect", str(phase_dir)]) == (
        f"error: {phase_dir} is a directory; inspect takes one shard, such as {first}"
    )
