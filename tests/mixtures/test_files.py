"""Outputs appear whole under their final name or not at all, through one temporary name."""

from __future__ import annotations

import re
import subprocess

import pytest

from mixtures.files import (
    HOST,
    OutputError,
    atomic_directory,
    atomic_output,
    make_parent,
    temporary_path,
    temporary_pattern,
    write_atomic,
)


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text("old")
    write_atomic(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "shares.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(path) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["shares.png"]


def test_the_temporary_name_is_hidden_and_found_by_its_pattern(tmp_path):
    temporary = temporary_path(tmp_path / "00003-0000.arrow")
    temporary.write_bytes(b"")
    assert temporary.name.startswith(".") and temporary.parent == tmp_path
    assert list(tmp_path.glob(temporary_pattern("00003-*.arrow"))) == [temporary]


def test_the_next_write_removes_what_killed_writers_left_and_only_that(tmp_path):
    """A SIGKILLed writer leaves its temporary (a file, or a directory of a model being written); the
    next write of the same output on this host removes it, but not a live writer's or another host's."""
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is a process that no longer runs

    def write_directory(path):
        with atomic_directory(path) as staged:
            (staged / "model.safetensors").write_bytes(b"")

    for name, write in (("eval.json", lambda path: write_atomic(path, "{}")), ("model", write_directory)):
        path = tmp_path / name
        left = path.with_name(f".{name}.{HOST}.{dead.pid}.tmp")
        left.mkdir() if name == "model" else left.write_text("half")
        live = path.with_name(f".{name}.{HOST}.1.tmp")  # pid 1 always runs
        elsewhere = path.with_name(f".{name}.another-host.{dead.pid}.tmp")
        live.write_text("")
        elsewhere.write_text("")
        write(path)
        assert not left.exists() and live.exists() and elsewhere.exists()


def test_an_output_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    """Not `[Errno 20] Not a directory: '.../.out.json.123.tmp'`: the output's own path, and why."""
    (tmp_path / "afile").write_text("in the way")
    (tmp_path / "adir").mkdir()
    under_a_file, a_directory = tmp_path / "afile" / "out.json", tmp_path / "adir"
    in_the_way = "cannot be written (a file or directory is in the way)"
    with pytest.raises(OutputError, match=f"^{re.escape(str(under_a_file))}: {re.escape(in_the_way)}$"):
        make_parent(under_a_file)
    with pytest.raises(OutputError, match=f"^{re.escape(str(under_a_file))}: "):
        write_atomic(under_a_file, b"{}")
    with pytest.raises(OutputError, match=f"^{re.escape(str(a_directory))}: {re.escape(in_the_way)}$"):
        write_atomic(a_directory, b"{}")
    with (
        pytest.raises(OutputError, match=r"out.png: cannot be written"),
        atomic_output(tmp_path / "afile" / "out.png") as temporary,
    ):
        temporary.write_bytes(b"png")
    assert (tmp_path / "afile").read_text() == "in the way"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["adir", "afile"]
