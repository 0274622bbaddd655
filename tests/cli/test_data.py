"""`mmbert-data`'s reading commands given the wrong kind of path: one line naming what to give instead."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.data import app
from tests.corpus import build_args, small_hub
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


def test_both_commands_answer_help_in_one_plain_style():
    from cli.train import app as train_app

    for command in (app, train_app):
        text = runner.invoke(command, ["--help"]).output
        assert "\nOptions:\n" in text and "Commands:" in text
        assert not set("╭│╰") & set(text), "rich boxes in one command, plain text in the other"
        assert "--install-completion" not in text


def test_ctrl_c_in_a_build_says_what_is_kept_and_how_to_resume(tmp_path, monkeypatch):
    from pipeline.build import Build

    def interrupted(self, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Build, "run", interrupted)
    small_hub(tmp_path / "hub")
    args = build_args(tmp_path / "hub", tmp_path / "out", "--tasks", "2")
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert result.output.splitlines() == [
        f"interrupted: the finished tasks are kept in {tmp_path / 'out' / 'pretrain'}; "
        "run the same command again to resume (a task cut off midway is redone)"
    ]
