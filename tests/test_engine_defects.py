"""Defects of the engine's rules found in review (issue 14), each with the test that failed before its fix."""

from sleepy_tui.cli import main
from sleepy_tui.koans import load_corpus, read_manifest


def test_freeze_keeps_an_edited_frozen_koan_in_the_frozen_set(koan_dir, capsys):
    path = koan_dir / "borrow_checker" / "bc_900.toml"
    path.write_text(path.read_text().replace("Shout every word", "Shout each word"))
    before = load_corpus(koan_dir)
    assert "bc_900" not in before.koans and "bc_900" in before.edited  # refused until re-frozen
    assert main(["koans", "freeze", "--koans", str(koan_dir)]) == 0
    after = load_corpus(koan_dir)
    assert set(read_manifest(koan_dir / "frozen_eval.toml")) == {"bc_900"}
    assert after.koans["bc_900"].split == "eval" and not after.errors
    # naming it works too (it used to fail with "unknown koan id")
    path.write_text(path.read_text().replace("Shout each word", "Shout all words"))
    assert main(["koans", "freeze", "bc_900", "--koans", str(koan_dir)]) == 0
    assert load_corpus(koan_dir).koans["bc_900"].split == "eval"
    capsys.readouterr()


def test_a_cycle_does_not_switch_an_auto_backend_for_good(koan_dir, tmp_path, monkeypatch):
    from sleepy_tui import engine as engine_module
    from sleepy_tui.backends.fake import ScriptedBackend
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine, TrainBase
    from sleepy_tui.training.base import TrainResult

    class Trainer:
        name = "fake"

        def train(self, dataset, config, out_dir, *, on_event, stop=None, resume=True):
            (out_dir / "adapter").mkdir(parents=True, exist_ok=True)
            return TrainResult(out_dir / "adapter", 1, [1.0])

    asked = []
    backend = ScriptedBackend(["no idea"], cycle=True)

    def factory(s, on_notice=None):
        asked.append(s.backend)
        return backend

    settings = Settings(backend="auto", koans_dir=str(koan_dir), state_dir=str(tmp_path / "state"), max_attempts=1,
                        steps=1)
    engine = Engine(settings, backend_factory=factory, trainer_factory=lambda s: Trainer())
    monkeypatch.setattr(engine, "train_base", lambda on_event=None: TrainBase("", "fake", "", ""))
    monkeypatch.setattr(engine_module.adapters, "path_for_backend", lambda meta, name: "adapter.gguf")
    try:
        assert engine.cycle().cycle == 1
        assert asked == ["embedded"] * 3           # baseline, day and eval all served the embedded model
        assert engine.settings.backend == "auto"   # ... and the engine's settings were left as they were
    finally:
        engine.close()


def test_promote_and_rollback_move_the_gates_baseline_with_the_model(tmp_path):
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine
    from sleepy_tui.training import adapters

    engine = Engine(Settings(backend="fake", state_dir=str(tmp_path / "state")))
    store = engine.store
    try:
        store.set_value("current_eval_run", "eval-of-the-base")
        adapters.record(store, {"adapter_id": "a1", "eval_run_id": "eval-of-a1", "promoted": False})
        adapters.record(store, {"adapter_id": "a2", "promoted": False})   # never evaluated
        engine.promote("a1")
        assert store.get_value("current_eval_run") == "eval-of-a1"
        engine.promote("a2")
        assert store.get_value("current_eval_run") is None    # the next cycle evaluates a2 before gating
        assert engine.rollback() == "a1"
        assert store.get_value("current_eval_run") == "eval-of-a1"
        assert adapters.get(store, "a2").promoted is False  # the record rolled back says so
        assert engine.rollback() is None
        assert store.get_value("current_eval_run") is None and adapters.get(store, "a1").promoted is False
    finally:
        engine.close()


def test_the_gate_says_what_it_did(tmp_path):
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine
    from sleepy_tui.episodes import Episode

    engine = Engine(Settings(backend="fake", state_dir=str(tmp_path / "state")))

    def evaluate(run_id, passed):
        engine.store.add_episodes([Episode(run_id, k, "borrow_checker", "eval", 0, 1, "fake", "m", "", [], "", "",
                                           "pass" if ok else "test_failure", None if ok else "test_failure:assert")
                                   for k, ok in passed.items()])

    base = {f"k{i}": i < 5 for i in range(10)}
    evaluate("old", base)
    evaluate("swap", {**base, "k0": False, "k8": True, "k9": True})
    try:
        ok, reason, facts = engine.gate("old", "swap")
        assert not ok and reason == "1 koan(s) regressed: k0 (allowed: 0)" and facts["regressions_allowed"] == 0
        engine.settings = engine.settings.replace(gate_tolerance=0.1)
        ok, reason, _ = engine.gate("old", "swap")
        assert ok and "1 regression(s) within the tolerance (1 allowed): k0" in reason
        assert "no regressions" not in reason
    finally:
        engine.close()


def test_flagged_koans_are_skipped_by_days_and_listed(koan_dir, tmp_path, capsys):
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine
    from sleepy_tui.report import build_report

    state = tmp_path / "state"
    engine = Engine(Settings(backend="fake", koans_dir=str(koan_dir), state_dir=str(state)))
    try:
        assert [k.id for k in engine.day_koans()] == ["bc_901", "bc_902"]
        engine.flag_koan("bc_901", "the tests pin a detail the title does not say")
        assert [k.id for k in engine.day_koans()] == ["bc_902"]
        report = build_report(engine.store, tmp_path / "report").read_text()
        assert "bc_901" in report and "the tests pin a detail" in report
    finally:
        engine.close()
    assert main(["koans", "check", "--koans", str(koan_dir), "--state", str(state)]) == 0
    assert "flagged in the review (days skip it): bc_901" in capsys.readouterr().out


def test_only_a_verified_correction_is_stored_by_the_engine(koan_dir, tmp_path, sandbox):
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine

    engine = Engine(Settings(backend="fake", koans_dir=str(koan_dir), state_dir=str(tmp_path / "state")))
    try:
        koan = engine.corpus().koans["bc_901"]
        assert not engine.add_correction(koan, koan.buggy, []).passed
        assert engine.store.corrections() == []
        assert engine.add_correction(koan, koan.solution, []).passed
        assert [c["code"] for c in engine.store.corrections()] == [koan.solution]
    finally:
        engine.close()


def test_verify_uses_the_settings_sandbox_limits(koan_dir, tmp_path, capsys, monkeypatch):
    koan = load_corpus(koan_dir).koans["bc_901"]
    fix = tmp_path / "fix.rs"   # the right answer, after 3 s: passes under the default 10 s limit
    fix.write_text(koan.solution.replace("let readings", "std::thread::sleep(std::time::Duration::from_secs(3));\n"
                                         "    let readings"))
    monkeypatch.setenv("SLEEPY_RUN_TIMEOUT_S", "1")
    assert main(["verify", str(fix), "--koan", "bc_901", "--koans", str(koan_dir)]) == 1
    assert "timeout:tests" in capsys.readouterr().out
    monkeypatch.delenv("SLEEPY_RUN_TIMEOUT_S")
    assert main(["verify", str(fix), "--koan", "bc_901", "--koans", str(koan_dir)]) == 0


def test_a_sampled_eval_is_no_baseline(koan_dir, tmp_path):
    from sleepy_tui.backends.fake import ScriptedBackend
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine

    backend = ScriptedBackend(["no idea"], cycle=True)
    engine = Engine(Settings(backend="fake", koans_dir=str(koan_dir), state_dir=str(tmp_path / "state")),
                    backend_factory=lambda s, n=None: backend)
    try:
        sampled = engine.run_agent(engine.corpus().eval_set, kind="eval", sample=0)
        assert engine.baseline_eval() != sampled.run_id   # a full eval was run for the baseline
    finally:
        engine.close()


def test_a_cycles_day_skips_flagged_koans_too(setup):
    engine, corpus, replies, trainer = setup
    engine.flag_koan("bc_902", "unfair")
    replies += ["no idea", "no idea", "no idea"]   # baseline eval, the day (bc_901 only), the eval
    rec = engine.cycle()
    assert engine.store.run(rec.day_run_id).koan_ids == ["bc_901"]
