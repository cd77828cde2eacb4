"""The cycle and its gate, with the scripted backend and a trainer double (real rustc, real store)."""


import pytest

from sleepy_tui.engine import EngineError


def fence(code):
    return f"```rust\n{code}\n```"


def test_cycle_promotes_an_adapter_that_gains_without_regressions(setup):
    engine, corpus, replies, trainer = setup
    k = corpus.koans
    replies += ["no idea"]                                               # baseline eval: bc_900 fails
    replies += [fence(k["bc_901"].solution), "still no idea"]            # day: 901 passes, 902 fails
    replies += [fence(k["bc_900"].solution)]                             # eval with the adapter: 900 passes
    rec = engine.cycle()
    assert rec.cycle == 1 and rec.promoted and rec.gains == ["bc_900"] and rec.regressions == []
    assert rec.pass_rate_before == 0.0 and rec.pass_rate_after == 1.0
    data = trainer.datasets[0]
    assert {(d["koan_id"], d["provenance"]) for d in data} == {("bc_901", "own_pass"), ("bc_902", "reference")}
    assert all(d["koan_id"] != "bc_900" for d in data)  # the frozen koan never reaches training
    assert engine.current_adapter().adapter_id == rec.adapter_id
    assert [c.cycle for c in engine.store.cycles()] == [0, 1]


def test_gate_keeps_the_old_model_when_a_koan_regresses(setup):
    engine, corpus, replies, trainer = setup
    k = corpus.koans
    replies += [fence(k["bc_900"].solution)]                            # baseline: passes
    replies += [fence(k["bc_901"].solution), fence(k["bc_902"].solution)]
    replies += ["forgot everything"]                                    # candidate: fails
    rec = engine.cycle()
    assert not rec.promoted and rec.regressions == ["bc_900"] and "dropped" in rec.reason
    assert engine.current_adapter() is None                             # still the base model
    assert engine.store.adapters()[0].eval.regressions == ["bc_900"]


def _eval(store, run, passed: dict):
    store.add_episodes([{"run_id": run, "koan_id": kid, "family": "borrow_checker", "attempt": 1,
                         "outcome": "pass" if ok else "compile_error", "signature": None if ok else "E0382:x"}
                        for kid, ok in passed.items()])
    store.flush()


def test_gate_rules(setup):
    engine, *_ = setup
    base = {f"k{i}": i < 5 for i in range(10)}
    _eval(engine.store, "old", base)
    _eval(engine.store, "same", base)
    _eval(engine.store, "swap", {**base, "k0": False, "k9": True})      # same rate, one regression
    _eval(engine.store, "better", {**base, "k9": True})
    assert engine.gate("old", "same")[0] and "no change" in engine.gate("old", "same")[1]
    ok, reason, facts = engine.gate("old", "swap")
    assert not ok and "regressed: k0" in reason and facts["gains"] == ["k9"]
    assert engine.gate("old", "better")[0]
    engine.settings = engine.settings.replace(gate_tolerance=0.1)          # tolerance: 1 of 10 may regress
    assert engine.gate("old", "swap")[0]


def test_cycle_refuses_backends_that_cannot_load_adapters(setup):
    engine, *_ = setup
    engine.settings = engine.settings.replace(backend="ollama")
    with pytest.raises(EngineError, match="can't load a fresh adapter"):
        engine.cycle()
