import json
import os
import threading

import pytest

from sleepy_tui.store import Store, dump_tables, recover_tables


def ep(run="r1", koan="k1", attempt=1, **kw):
    return {"run_id": run, "koan_id": koan, "attempt": attempt, "outcome": "pass", "signature": None, **kw}


def test_roundtrip_and_reload(tmp_path):
    s = Store(tmp_path)
    s.add_episodes([ep(koan=f"k{i}") for i in range(5)])
    s.add_episode(ep(run="r2"))
    s.save_run({"run_id": "r1", "kind": "day", "started": 1})
    s.close()
    s2 = Store(tmp_path)
    assert len(s2.episodes()) == 6 and len(s2.episodes("r2")) == 1
    assert s2.runs()[0].kind == "day"


def test_unflushed_episodes_are_not_on_disk_but_flushed_ones_are(tmp_path):
    s = Store(tmp_path)
    s.add_episode(ep(koan="a"))
    s.flush()
    s.add_episode(ep(koan="b"))
    # a second process sees only what was flushed
    assert [e["koan_id"] for e in Store(tmp_path).episodes()] == ["a"]


def test_crash_during_write_keeps_the_old_file(tmp_path, monkeypatch):
    s = Store(tmp_path)
    s.add_episode(ep(koan="a"))
    s.flush()
    before = (tmp_path / "episodes" / "r1.json").read_text()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    s.add_episode(ep(koan="b"))
    with pytest.raises(OSError, match="No space"):
        s.flush()
    monkeypatch.undo()
    assert (tmp_path / "episodes" / "r1.json").read_text() == before
    assert not [p for p in (tmp_path / "episodes").iterdir() if p.name.endswith(".tmp")]


def test_damaged_file_is_recovered_line_by_line_with_backup(tmp_path):
    s = Store(tmp_path)
    s.add_episodes([ep(koan=f"k{i}") for i in range(4)])
    s.close()
    path = tmp_path / "episodes" / "r1.json"
    lines = path.read_text().splitlines()
    lines[3] = lines[3][:20]  # k1 torn mid-record
    path.write_text("\n".join(lines[:-1]))  # and a truncated end
    warnings = []
    s2 = Store(tmp_path, on_warning=warnings.append)
    kept = s2.episodes()
    assert sorted(e["koan_id"] for e in kept) == ["k0", "k2", "k3"]
    assert warnings and "recovered 3 record(s)" in warnings[0]
    assert list(tmp_path.glob("episodes/r1.json.corrupt-*"))
    json.loads(path.read_text())  # rewritten whole


def test_dump_and_recover_agree():
    data = {"episodes": {"1": {"a": 1}, "2": {"b": "x\ny"}}, "other": {"7": {"c": [1, 2]}}}
    text = dump_tables(data)
    assert json.loads(text) == data and recover_tables(text) == data


def test_threads_write_concurrently(tmp_path):
    s = Store(tmp_path)

    def work(t):
        for i in range(50):
            s.add_episode(ep(run=f"r{t % 2}", koan=f"t{t}-{i}"))
            if i % 10 == 0:
                s.flush()
            s.episodes(f"r{t % 2}")
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.close()
    assert len(Store(tmp_path).episodes()) == 200


def test_values_and_tables(tmp_path):
    s = Store(tmp_path)
    s.set_value("current_adapter", "c001")
    s.save_cycle({"cycle": 1, "x": 1})
    s.save_cycle({"cycle": 1, "x": 2})
    s.flag_koan("bc_001", "ambiguous")
    assert s.get_value("current_adapter") == "c001" and [(c.cycle, c.extra) for c in s.cycles()] == [(1, {"x": 2})]
    assert s.flags()[0]["reason"] == "ambiguous"


def test_a_writer_starts_from_the_disk_not_from_what_it_read_before_the_lock(tmp_path):
    Store(tmp_path).close()                       # a state folder made earlier
    reader = Store(tmp_path)                      # opened (and read) before the other process wrote
    assert reader.runs() == []
    other = Store(tmp_path)
    other.save_run({"run_id": "r1", "status": "done", "started": 1.0})
    other.close()                                 # the lock is free again
    reader.save_run({"run_id": "r2", "status": "done", "started": 2.0})
    reader.close()
    assert [r.run_id for r in Store(tmp_path).runs()] == ["r1", "r2"]


def test_runs_a_dead_process_left_running_are_marked_interrupted_by_the_next_writer(tmp_path):
    Store(tmp_path).close()
    dead = Store(tmp_path)
    dead.save_run({"run_id": "r1", "status": "running", "started": 1.0})
    dead.close()                                  # as if killed: the run never finished
    warnings: list[str] = []
    s = Store(tmp_path, on_warning=warnings.append)
    assert s.run("r1").status == "running"     # reading alone changes nothing
    s.save_run({"run_id": "r2", "status": "running", "started": 2.0})
    assert s.run("r1").status == "interrupted" and "ended before" in s.run("r1").error
    assert s.run("r2").status == "running"     # this process's own run is live
    assert any("r1" in w for w in warnings)
    s.close()
    assert Store(tmp_path).run("r1").status == "interrupted"
