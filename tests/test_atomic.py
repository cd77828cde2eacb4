"""atomic.py: a file or folder is its old self or its complete new self, whatever happens while writing."""

from __future__ import annotations

import json

import pytest

from sleepy_tui import atomic


def test_write_json_replaces_whole(tmp_path):
    p = tmp_path / "a" / "state.json"
    atomic.write_json(p, {"x": 1})
    atomic.write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert [q.name for q in p.parent.iterdir()] == ["state.json"]       # no temporary sibling left


def test_a_failed_file_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "state.json"
    atomic.write_text(p, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic.write_text(p, "new")
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_folder_fill_keeps_the_old_folder(tmp_path):
    final = tmp_path / "adapter"
    atomic.write_folder(final, lambda d: (d / "w.bin").write_bytes(b"old"))

    def crash(d):
        (d / "w.bin").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic.write_folder(final, crash)
    assert (final / "w.bin").read_bytes() == b"old" and [q.name for q in tmp_path.iterdir()] == ["adapter"]
    atomic.write_folder(final, lambda d: (d / "w.bin").write_bytes(b"new"))
    assert (final / "w.bin").read_bytes() == b"new" and [q.name for q in tmp_path.iterdir()] == ["adapter"]


def test_leftovers_of_a_crash_are_removed(tmp_path):
    (tmp_path / ".tmp-adapter-123").mkdir()
    (tmp_path / ".tmp-state.json.abc").write_text("half")
    (tmp_path / "keep.json").write_text("{}")
    atomic.remove_leftovers(tmp_path)
    assert [q.name for q in tmp_path.iterdir()] == ["keep.json"]
