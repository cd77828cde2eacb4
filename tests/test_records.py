"""Typed records (records.py): old shapes migrate, damaged ones are repaired or skipped with one warning each, and
fields this version does not know survive a round trip."""

from __future__ import annotations

import json

import pytest

from sleepy_tui.records import AdapterRecord, CycleRecord, RecordError, RunRecord
from sleepy_tui.store import Store


def test_a_run_of_the_first_shape_migrates_to_the_current_one():
    old = {"run_id": "day-1", "kind": "day", "split": "train", "cycle": 0, "backend": "embedded", "model": "m",
           "adapter": "", "started": 1.0, "finished": 2.0, "status": "done", "koan_ids": ["a", "b"], "passed": 1,
           "total": 2}
    run = RunRecord.from_dict(old)
    assert run.adapter_id == "" and run.retry_strategy["name"] == "fixed" and run.parallel == 1
    assert run.temperature is None and run.every_koan_finished
    doc = run.to_dict()
    assert doc["schema"] == RunRecord.SCHEMA and RunRecord.from_dict(doc) == run


def test_the_version_of_an_unversioned_document_comes_from_its_fields():
    assert RunRecord.implied_version({"run_id": "r"}) == 1
    assert RunRecord.implied_version({"run_id": "r", "adapter_id": ""}) == 2
    assert RunRecord.implied_version({"run_id": "r", "parallel": 2}) == 3
    assert CycleRecord.implied_version({"cycle": 1}) == 1
    assert AdapterRecord.implied_version({"adapter_id": "a", "base_gguf": ""}) == 2
    # a version-2 run keeps its own fields; only what version 3 added is filled in
    run = RunRecord.from_dict({"run_id": "r", "adapter_id": "c001", "temperature": 0.2, "parallel": 3})
    assert (run.adapter_id, run.temperature, run.parallel) == ("c001", 0.2, 3)


def test_a_cycle_before_the_validation_slice_reads_as_unmeasured():
    from sleepy_tui.records import GateFacts
    old = CycleRecord.from_dict({"schema": 2, "cycle": 1, "day_run_id": "day-1", "regressions_allowed": 0})
    assert old.day_run_ids == ["day-1"] and old.validation_run_id == "" and old.validation_after is None
    assert CycleRecord.implied_version({"cycle": 1, "validation_run_id": "v"}) == 3
    assert CycleRecord.from_dict(old.to_dict()) == old and old.to_dict()["schema"] == CycleRecord.SCHEMA
    facts = GateFacts.from_dict({"pass_rate_before": 0.5, "regressions": ["k"]})
    assert facts.validation_before is None and facts.validation_regressions == [] and facts.regressions == ["k"]


def test_a_cycle_before_repeated_evals_reads_as_one_run_each_and_untested():
    from sleepy_tui.records import GateFacts
    old = CycleRecord.from_dict({"schema": 3, "cycle": 1, "eval_run_id": "eval-2", "baseline_eval_run_id": "eval-1",
                                 "validation_run_id": "v"})
    assert (old.eval_run_ids, old.baseline_eval_run_ids) == (["eval-2"], ["eval-1"])
    assert (old.runs_before, old.runs_after, old.p_value, old.diff_ci) == (1, 1, None, [])
    assert CycleRecord.implied_version({"cycle": 1, "eval_run_ids": []}) == 4
    facts = GateFacts.from_dict({"schema": 2, "pass_rate_before": 0.5, "validation_after": 0.4})
    assert facts.p_value is None and facts.runs_after == 1 and facts.validation_after == 0.4


def test_unknown_fields_are_kept_and_written_back():
    doc = {"schema": 1, "cycle": 2, "promoted": True, "a_later_field": [1, 2]}
    cycle = CycleRecord.from_dict({**doc, "schema": 2})
    assert cycle.extra == {"a_later_field": [1, 2]} and cycle.to_dict()["a_later_field"] == [1, 2]


def test_a_field_of_the_wrong_type_is_read_as_its_default_and_said():
    notes: list[str] = []
    run = RunRecord.from_dict({"run_id": "r", "parallel": 2, "koan_ids": ["a", 3], "status": 7}, on_repair=notes.append)
    assert run.koan_ids == [] and run.status == "done"
    assert len(notes) == 1 and "run r" in notes[0] and "koan_ids was a list holding a number" in notes[0]
    with pytest.raises(RecordError, match="koan_ids"):          # the program's own documents are never repaired
        RunRecord.checked({"run_id": "r", "koan_ids": "a"})


def test_a_bad_loss_curve_point_is_left_out():
    notes: list[str] = []
    a = AdapterRecord.from_dict({"adapter_id": "a", "base_gguf": "", "loss_curve": [{"step": 1, "loss": 2.0},
                                                                                    {"step": "x"}]},
                                on_repair=notes.append)
    assert a.loss_curve == [{"step": 1, "loss": 2.0}] and "1 point(s)" in notes[0]


@pytest.mark.parametrize("doc, why", [
    ({"kind": "day"}, "no run_id"),
    ({"run_id": 5}, "run_id is a number"),
    ({"run_id": "r", "schema": 99}, "newer sleepy"),
    ({"run_id": "r", "schema": "2"}, "not a version number"),
    (["r"], "not an object"),
])
def test_a_document_that_cannot_be_a_record_is_refused(doc, why):
    with pytest.raises(RecordError, match=why):
        RunRecord.from_dict(doc)


def test_the_store_skips_an_unreadable_record_and_warns_once(tmp_path):
    s = Store(tmp_path)
    s.save_run({"run_id": "good", "kind": "day", "status": "done", "started": 1.0})
    s.close()
    path = tmp_path / "sleepy.json"
    data = json.loads(path.read_text())
    data["runs"]["99"] = {"kind": "day", "status": "done"}                     # no run_id
    data["runs"]["100"] = {"run_id": "future", "schema": 99}                   # a newer sleepy's
    data["runs"]["101"] = {"run_id": "odd", "started": "yesterday"}            # one bad field
    path.write_text(json.dumps(data))
    warnings: list[str] = []
    s = Store(tmp_path, on_warning=warnings.append)
    for _ in range(3):                                                         # every refresh reads them again
        runs = s.runs()
    assert [r.run_id for r in runs] == ["odd", "good"] and runs[0].started == 0.0
    assert len(warnings) == 3, warnings
    assert any("record 99 skipped: no run_id" in w for w in warnings)
    assert any("newer sleepy" in w for w in warnings)
    assert any("run odd: started was a string" in w for w in warnings)
    s.close()


def test_opening_an_old_store_writes_nothing_and_saving_writes_the_new_shape(tmp_path):
    s = Store(tmp_path)
    s.close()
    path = tmp_path / "sleepy.json"
    data = json.loads(path.read_text())
    data["runs"] = {"1": {"run_id": "old", "kind": "eval", "status": "done", "started": 1.0, "koan_ids": ["a"]}}
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    s = Store(tmp_path)
    (run,) = s.runs()
    assert path.read_bytes() == before                                         # reading migrated in memory only
    s.save_run(run)
    s.close()
    stored = json.loads(path.read_text())["runs"]["1"]
    assert stored["schema"] == RunRecord.SCHEMA and stored["retry_strategy"]["name"] == "fixed"
