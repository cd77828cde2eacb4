"""`sleepy eval --koan ID`: one frozen koan through the engine (the cheap check the real-model tests use); a
training koan is refused, and a run of part of the frozen set never becomes the gate's baseline."""

from __future__ import annotations

import pytest

from sleepy_tui.backends.fake import ScriptedBackend
from sleepy_tui.cli import main
from sleepy_tui.config import Settings
from sleepy_tui.engine import Engine
from sleepy_tui.koans import KoanError, load_corpus, write_manifest
from sleepy_tui.store import Store

from tests.conftest import write_koan


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A project root whose koans/ holds two frozen koans (bc_800, bc_900) and one training koan (bc_901)."""
    root = tmp_path / "koans"
    for kid in ("bc_800", "bc_900", "bc_901"):
        write_koan(root, kid)
    corpus = load_corpus(root)
    write_manifest(root / "frozen_eval.toml", [corpus.koans["bc_800"], corpus.koans["bc_900"]])
    monkeypatch.setenv("SLEEPY_HOME", str(tmp_path))
    return tmp_path


def _eval(state, *extra) -> int:
    return main(["eval", "--cycle", "0", "--backend", "fake", "--max-attempts", "1", "--state", str(state), *extra])


def test_eval_runs_only_the_named_frozen_koan(home, tmp_path, capsys):
    state = tmp_path / "state"
    assert _eval(state, "--koan", "bc_900") == 0
    out = capsys.readouterr().out
    assert "[1/1] bc_900" in out and "bc_800" not in out
    store = Store(state)
    (r,) = store.runs()
    assert r.kind == "eval" and r.status == "done" and r.koan_ids == ["bc_900"]
    assert [e["koan_id"] for e in store.episodes(r.run_id)] == ["bc_900"]


def test_eval_without_koan_runs_the_whole_frozen_set(home, tmp_path, capsys):
    state = tmp_path / "state"
    assert _eval(state) == 0
    (r,) = Store(state).runs()
    assert r.koan_ids == ["bc_800", "bc_900"]


@pytest.mark.parametrize("koan, message", [
    ("bc_901", "bc_901: not in the frozen eval set"),
    ("zz_999", "unknown koan id(s): zz_999"),
])
def test_eval_refuses_a_koan_outside_the_frozen_set(home, tmp_path, capsys, koan, message):
    state = tmp_path / "state"
    assert _eval(state, "--koan", "bc_900", "--koan", koan) == 2
    err = capsys.readouterr().err
    assert f"sleepy: error: {message}" in err and "Traceback" not in err
    assert not (state.exists() and Store(state).runs())          # nothing ran


def test_koan_and_family_together_must_match(home, tmp_path, capsys):
    assert _eval(tmp_path / "state", "--koan", "bc_900", "--family", "lifetimes") == 2
    assert "no frozen koans match" in capsys.readouterr().err


def test_a_partial_eval_is_not_the_gates_baseline(home, tmp_path):
    settings = Settings(backend="fake", state_dir=str(tmp_path / "state"), max_attempts=1)
    backend = ScriptedBackend(["no idea"], cycle=True)
    engine = Engine(settings, backend_factory=lambda s, on_notice=None: backend)
    try:
        one = engine.run_agent(engine.eval_koans(["bc_900"]), kind="eval", cycle=0).run_id
        assert engine.store.run(one).status == "done"
        baseline = engine.baseline_eval()
        assert baseline != one
        assert engine.store.run(baseline).koan_ids == ["bc_800", "bc_900"]
        assert engine.baseline_eval() == baseline                # and it is reused, not run again
    finally:
        engine.close()


def test_eval_koans_refuses_training_koans_in_the_engine(home, tmp_path):
    engine = Engine(Settings(backend="fake", state_dir=str(tmp_path / "state")))
    try:
        with pytest.raises(KoanError, match="not in the frozen eval set"):
            engine.eval_koans(["bc_901"])
        assert [k.id for k in engine.eval_koans()] == ["bc_800", "bc_900"]
        assert [k.id for k in engine.eval_koans(family="borrow_checker")] == ["bc_800", "bc_900"]
    finally:
        engine.close()


def test_an_eval_measured_otherwise_is_not_the_gates_baseline(home, tmp_path):
    """A baseline of 2 attempts, another reply length or another model is no baseline for a cycle that
    evaluates its candidate with 1 attempt and these settings: the cycle runs its own."""
    settings = Settings(backend="fake", state_dir=str(tmp_path / "state"), max_attempts=2)
    backend = ScriptedBackend(["no idea"], cycle=True)
    engine = Engine(settings, backend_factory=lambda s, on_notice=None: backend)
    try:
        two = engine.run_agent(engine.eval_koans(), kind="eval", cycle=0).run_id
        assert engine.baseline_eval() == two                     # measured as these settings would: taken
        engine.settings = settings.replace(max_attempts=1)
        one = engine.baseline_eval()
        assert one != two and engine.store.run(one).max_attempts == 1
        engine.settings = settings.replace(max_attempts=1, max_tokens=100)
        assert engine.baseline_eval() not in (one, two)
        engine.settings = settings.replace(max_attempts=1)
        assert engine.baseline_eval() == one                     # the first one of 1 attempt is found again
        engine.settings = settings.replace(max_attempts=1, model="another-model")
        assert engine.baseline_eval() != one                     # its runs recorded the scripted model
    finally:
        engine.close()
