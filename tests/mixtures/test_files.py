"""Outputs appear whole under their final name or not at all, through one temporary name."""

from __future__ import annotations

import pytest

from mixtures.files import atomic_output, temporary_path, temporary_pattern, write_atomic


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
