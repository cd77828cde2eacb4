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


def test_a_library_writing_by_name_gets_a_temporary_file_renamed_only_on_success(tmp_path):
    out = tmp_path / "adapter.gguf"
    with atomic.writing(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(atomic.TMP_PREFIX)
        with open(tmp, "wb") as f:            # as gguf.GGUFWriter does
            f.write(b"GGUF1")
        assert not out.exists()               # nothing at the final name until the block ends
    assert out.read_bytes() == b"GGUF1" and (out.stat().st_mode & 0o777) == 0o644
    with pytest.raises(ValueError):
        with atomic.writing(out) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("the writer failed")
    assert out.read_bytes() == b"GGUF1" and [q.name for q in tmp_path.iterdir()] == ["adapter.gguf"]


def test_a_folder_another_writer_finished_meanwhile_is_kept(tmp_path):
    final = tmp_path / "model"

    def fill(d):
        final.mkdir()                          # the other process, while this one was filling
        (final / "w.bin").write_bytes(b"theirs")
        (d / "w.bin").write_bytes(b"ours")

    atomic.write_folder(final, fill, keep=lambda d: (d / "w.bin").is_file())
    assert (final / "w.bin").read_bytes() == b"theirs" and [q.name for q in tmp_path.iterdir()] == ["model"]
