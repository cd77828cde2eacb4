from sleepy_tui.metrics import (compare, cycle_table, koan_outcomes, repeat_error_rate_across, run_metrics)
from sleepy_tui.records import RunRecord


def e(koan, attempt, outcome, sig=None, run="r", family="borrow_checker"):
    return {"run_id": run, "koan_id": koan, "attempt": attempt, "outcome": outcome,
            "signature": None if outcome == "pass" else sig, "family": family}


EPISODES = [
    e("a", 1, "compile_error", "E0382:x"), e("a", 2, "pass"),                     # green in 2
    e("b", 1, "pass", family="trait_bounds"),                                     # green in 1
    e("c", 1, "compile_error", "E0502:y"), e("c", 2, "compile_error", "E0502:y"),  # repeat
    e("c", 3, "test_failure", "test_failure:assert_eq"),
    e("d", 1, "no_code", "no_code", family="trait_bounds"),
]


def test_run_metrics():
    m = run_metrics(EPISODES)
    assert (m.total, m.passed) == (4, 2) and m.pass_rate == 0.5
    assert m.median_steps_to_green == 1.5
    # retries: a1->a2 (x->None), c1->c2 (same), c2->c3 (different): 1 of 3
    assert abs(m.repeat_error_rate - 1 / 3) < 1e-9
    assert m.signature_counts["E0502:y"] == 2
    assert m.final_signature_counts == {"test_failure:assert_eq": 1, "no_code": 1}
    assert m.per_family["trait_bounds"] == {"passed": 1, "total": 2, "rate": 0.5}


def test_regressions_gains_and_repeat_across_cycles():
    prev = koan_outcomes(EPISODES)
    cur = koan_outcomes([e("a", 1, "compile_error", "E0382:x"), e("b", 1, "pass"), e("c", 1, "pass"),
                         e("d", 1, "no_code", "no_code")])
    assert compare(prev, cur) == (["a"], ["c"])
    assert repeat_error_rate_across(prev, cur) == 1.0  # d failed both times with the same signature


def test_cycle_table_reads_eval_runs_only():
    runs = [{"run_id": "e0", "kind": "eval", "cycle": 0, "status": "done", "started": 1},
            {"run_id": "d1", "kind": "day", "cycle": 1, "status": "done", "started": 2},
            {"run_id": "e1", "kind": "eval", "cycle": 1, "status": "done", "started": 3},
            {"run_id": "e1b", "kind": "eval", "cycle": 1, "status": "done", "started": 4}]
    eps = {"e0": [e("a", 1, "pass", run="e0"), e("b", 1, "no_code", "no_code", run="e0")],
           "e1": [e("a", 1, "pass", run="e1"), e("b", 1, "pass", run="e1")],
           "e1b": [e("a", 1, "no_code", "no_code", run="e1b"), e("b", 1, "pass", run="e1b")], "d1": []}
    rows = cycle_table([RunRecord.from_dict(r) for r in runs], lambda r: eps[r])
    assert [r.cycle for r in rows] == [0, 1]
    assert rows[1].pass_rates == [1.0, 0.5] and rows[1].pass_rate_mean == 0.75
    # judged on both runs of cycle 1, as the gate does: a passed in one of two (no majority lost), b in both
    assert rows[1].regressions == [] and rows[1].gains == ["b"]
