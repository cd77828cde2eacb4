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


def test_the_gate_judges_repeated_runs_by_the_majority_of_each_koan(setup):
    engine, *_ = setup
    base = {f"k{i}": i < 5 for i in range(10)}
    _eval(engine.store, "old1", base)
    _eval(engine.store, "old2", base)
    _eval(engine.store, "noisy1", {**base, "k0": False, "k9": True})   # k0 fails once in two: noise, not a loss
    _eval(engine.store, "noisy2", {**base, "k9": True})
    _eval(engine.store, "lost1", {**base, "k0": False, "k9": True})    # k0 fails in both: a regression
    _eval(engine.store, "lost2", {**base, "k0": False, "k9": True})
    assert not engine.gate("old1", "noisy1")[0]                         # one run each: k0 regressed
    ok, reason, facts = engine.gate(["old1", "old2"], ["noisy1", "noisy2"])
    assert ok and facts["regressions"] == [] and facts["gains"] == ["k9"] and "over 2 and 2 runs" in reason
    assert (facts["runs_before"], facts["runs_after"]) == (2, 2)
    assert facts["pass_rate_before"] == 0.5 and facts["pass_rate_after"] == 0.55
    assert facts["p_value"] == 1.0 and facts["diff_ci"][0] <= 0.05 <= facts["diff_ci"][1]
    ok, reason, facts = engine.gate(["old1", "old2"], ["lost1", "lost2"])
    assert not ok and "regressed over 2 and 2 runs: k0" in reason and facts["gains"] == ["k9"]


def test_a_cycle_with_eval_repeats_judges_k_runs_a_side_each_with_its_own_seeds(setup):
    engine, corpus, replies, trainer = setup
    engine.settings = engine.settings.replace(eval_repeats=2)
    k = corpus.koans
    replies += ["no idea"]                                               # `sleepy eval --cycle 0`: bc_900 fails
    replies += ["no idea again"]                                         # the cycle adds the second baseline run
    replies += [fence(k["bc_901"].solution), "still no idea"]            # day
    replies += [fence(k["bc_900"].solution)] * 2                          # the candidate, twice
    first = engine.run_agent(corpus.eval_set, kind="eval", cycle=0).run_id
    rec = engine.cycle()
    assert rec.promoted and rec.gains == ["bc_900"] and (rec.runs_before, rec.runs_after) == (2, 2)
    assert rec.baseline_eval_run_ids[0] == first == rec.baseline_eval_run_id and len(rec.eval_run_ids) == 2
    runs = {r.run_id: r for r in engine.runs("eval")}
    assert len(runs) == 4
    for side, cycle in ((rec.baseline_eval_run_ids, 0), (rec.eval_run_ids, 1)):
        assert sorted(runs[i].repeat for i in side) == [0, 1] and {runs[i].cycle for i in side} == {cycle}
    assert {runs[i].adapter_id for i in rec.eval_run_ids} == {rec.adapter_id}
    assert rec.p_value == 1.0                                            # one koan flipped: far from significant
    assert engine.store.adapters()[0].eval.runs_after == 2
    from sleepy_tui.cli import cycle_line
    line = cycle_line(engine.store.cycles()[-1])
    assert line.startswith("cycle 1: PROMOTED") and "gains: bc_900" in line and "McNemar p = 1.00" in line
    assert "(2 and 2 eval runs)" in line and "95% interval of the difference [+100.0%, +100.0%]" in line


def _backend_per_lane(engine, scripts: dict) -> tuple[list, dict]:
    """Install a backend factory that gives one scripted model per (thread name, with adapter), each with its
    replies; returns (every (role, threads) asked for, the models by role)."""
    import threading

    from sleepy_tui.backends.fake import ScriptedBackend
    made, backends = [], {}

    def factory(s, on_notice=None):
        role = (threading.current_thread().name, bool(s.adapter))
        made.append((role, s.threads))
        assert engine.settings.threads == 0     # the lanes' threads go to their backends, not to the settings
        if role not in backends:
            backends[role] = ScriptedBackend(scripts[role], delay_s=0.001)
        return backends[role]
    engine.backend_factory = factory
    return made, backends


def test_repeats_of_the_frozen_eval_run_two_at_a_time_side_by_side(setup, monkeypatch):
    """On a model served in process, the eval repeats still missing run in pairs, each on its own instance and
    half of the spare CPUs: the base model's two, then the candidate's two."""

    from sleepy_tui import engine as engine_module
    engine, corpus, _, trainer = setup
    engine.settings = engine.settings.replace(eval_repeats=2)
    k = corpus.koans
    monkeypatch.setattr(engine_module, "SIDE_BY_SIDE", ("fake",))
    monkeypatch.setattr(engine_module, "usable_cpus", lambda: 5)
    scripts = {("MainThread", False): ["no idea", fence(k["bc_901"].solution), "still no idea"],   # eval, day
               ("cycle-validation", False): ["no idea either"],
               ("MainThread", True): [fence(k["bc_900"].solution)],
               ("cycle-validation", True): [fence(k["bc_900"].solution)]}
    made, backends = _backend_per_lane(engine, scripts)
    seen = []
    rec = engine.cycle(on_event=seen.append)
    assert rec.promoted and rec.gains == ["bc_900"] and (rec.runs_before, rec.runs_after) == (2, 2)
    assert all(b.remaining == 0 for b in backends.values()) and len(backends) == 4
    runs = {r.run_id: r for r in engine.runs("eval")}
    assert len(runs) == 4 and rec.baseline_eval_run_id == rec.baseline_eval_run_ids[0]
    for side, cycle in ((rec.baseline_eval_run_ids, 0), (rec.eval_run_ids, 1)):
        assert sorted(runs[i].repeat for i in side) == [0, 1] and {runs[i].cycle for i in side} == {cycle}
    assert [t for role, t in made if role[0] == "cycle-validation"] == [2, 2]
    assert sum("run side by side" in getattr(e, "message", "") for e in seen) == 2
    assert engine.store.cycles()[0].eval_run_id == rec.baseline_eval_run_id     # recorded as cycle 0


def test_expert_iteration_samples_the_koans_the_day_missed_at_attempt_1_and_trains_on_their_fixes(setup):
    engine, corpus, replies, trainer = setup
    engine.settings = engine.settings.replace(day_samples=2)
    k = corpus.koans
    replies += ["no idea"]                                               # baseline eval
    replies += [fence(k["bc_901"].solution), "still no idea"]            # day: 901 at attempt 1, 902 missed
    own = "// a fix of its own\n" + k["bc_902"].solution               # (the reference itself would be a duplicate)
    replies += ["nope", fence(own)]                                      # two samples of 902: the second fixes it
    replies += [fence(k["bc_900"].solution)]                             # eval
    rec = engine.cycle()
    runs = {r.run_id: r for r in engine.runs("day")}
    assert len(rec.day_sample_run_ids) == 2 and rec.day_run_ids == [rec.day_run_id]
    assert [runs[i].sample for i in rec.day_sample_run_ids] == [0, 1]
    assert all(runs[i].koan_ids == ["bc_902"] and runs[i].max_attempts == 1 for i in rec.day_sample_run_ids)
    data = {(d["koan_id"], d["provenance"]) for d in trainer.datasets[0]}
    assert data == {("bc_901", "own_pass"), ("bc_902", "own_sample"), ("bc_902", "reference")}
    assert rec.dataset.by_provenance["own_sample"] == 1 and rec.dataset.dropped_duplicates == 0
    # run again for the same day, the samples are reused, not sampled again (the script has no reply left)
    assert engine._day_samples(1, rec.day_run_ids, engine.corpus(), lambda e: None, None, "fake") == \
        rec.day_sample_run_ids


def test_reference_fixes_all_adds_those_of_the_training_koans_the_day_did_not_take(setup):
    engine, corpus, replies, trainer = setup
    engine.settings = engine.settings.replace(reference_fixes="all")
    k = corpus.koans
    replies += ["no idea", fence(k["bc_901"].solution), fence(k["bc_900"].solution)]   # baseline, day of 1, eval
    rec = engine.cycle(day_count=1)
    assert engine.store.run(rec.day_run_id).koan_ids == ["bc_901"]
    data = {(d["koan_id"], d["provenance"]) for d in trainer.datasets[0]}
    assert data == {("bc_901", "own_pass"), ("bc_902", "reference_corpus")}       # never the frozen bc_900
    assert rec.dataset.by_provenance["reference_corpus"] == 1 and rec.dataset.dropped_duplicates == 0
    engine.settings = engine.settings.replace(reference_fixes="failed")
    assert engine.build_dataset(run_ids=[rec.day_run_id]).by_provenance["reference_corpus"] == 0


def test_cycle_refuses_backends_that_cannot_load_adapters(setup):
    engine, *_ = setup
    engine.settings = engine.settings.replace(backend="ollama")
    with pytest.raises(EngineError, match="can't load a fresh adapter"):
        engine.cycle()


HELD_OUT_KOAN = '''\
id = "bc_901"
family = "borrow_checker"
title = "Join the names, then say how many there were"
expected_error = "E0382"
buggy = \'\'\'
pub fn joined(names: Vec<String>) -> (String, usize) {
    let all = names.into_iter().collect::<Vec<_>>().join("+");
    (all, names.len())
}
\'\'\'
solution = \'\'\'
pub fn joined(names: Vec<String>) -> (String, usize) {
    let how_many = names.len();
    let all = names.into_iter().collect::<Vec<_>>().join("+");
    (all, how_many)
}
\'\'\'
tests = \'\'\'
    #[test]
    fn joins_and_counts() {
        assert_eq!(joined(vec!["a".to_string(), "b".to_string()]), ("a+b".to_string(), 2));
    }
\'\'\'
'''


@pytest.fixture
def with_validation(setup, monkeypatch):
    """The tiny corpus with a validation slice: bc_901 (its id hashes into the slice) is held out, bc_902 and
    bc_903 are trained on."""
    from sleepy_tui import koans as koans_module
    from tests.conftest import write_koan
    engine, corpus, replies, trainer = setup
    monkeypatch.setattr(koans_module, "VALIDATION_MIN", 1)
    write_koan(engine.settings.koans_path, "bc_903")
    # a program of its own: the mini koans differ only by a number, and the leak guard rightly calls a near-copy
    # of a held-out koan a leak
    write_koan(engine.settings.koans_path, "bc_901", text=HELD_OUT_KOAN)
    corpus = engine.corpus()
    assert [k.id for k in corpus.validation_set] == ["bc_901"]
    assert [k.id for k in corpus.train_set] == ["bc_902", "bc_903"]
    return engine, corpus, replies, trainer


def test_the_gate_refuses_an_adapter_that_loses_on_the_validation_slice(with_validation):
    engine, corpus, replies, trainer = with_validation
    k = corpus.koans
    replies += ["no idea"]                                               # baseline eval: bc_900 fails
    replies += [fence(k["bc_902"].solution), fence(k["bc_903"].solution)]  # day: both pass
    replies += [fence(k["bc_901"].solution), "forgot it"]                # validation: base passes, candidate not
    replies += [fence(k["bc_900"].solution)]                             # frozen eval: a gain
    rec = engine.cycle()
    assert rec.gains == ["bc_900"] and not rec.promoted and "validation pass rate dropped" in rec.reason
    assert (rec.validation_before, rec.validation_after, rec.validation_regressions) == (1.0, 0.0, ["bc_901"])
    assert engine.current_adapter() is None
    runs = {r.run_id: r for r in engine.runs("validation")}
    assert set(runs) == {rec.validation_before_run_id, rec.validation_run_id}
    assert all(r.split == "validation" and r.max_attempts == 1 for r in runs.values())
    assert runs[rec.validation_run_id].adapter_id == rec.adapter_id and not runs[rec.validation_before_run_id].adapter_id
    assert {d["koan_id"] for d in trainer.datasets[0]} == {"bc_902", "bc_903"}   # the held-out koan: never
    assert engine.store.adapters()[0].eval.validation_after == 0.0


def test_a_cycle_started_again_continues_where_it_stopped(with_validation):
    """A day cut off by a failure keeps its finished koans; the next start runs only the rest, trains once,
    and a failed eval is the only stage run again after that."""
    from sleepy_tui.backends.base import BackendUnavailable
    engine, corpus, replies, trainer = with_validation
    k = corpus.koans
    replies += ["no idea"]                                                # baseline eval
    replies += [fence(k["bc_902"].solution), BackendUnavailable("the server went away")]   # day: cut at bc_903
    replies += [fence(k["bc_903"].solution)]                              # 2nd start: the rest of the day
    replies += [fence(k["bc_901"].solution), fence(k["bc_901"].solution)]  # validation: base, candidate
    replies += [BackendUnavailable("gone again")]                         # the frozen eval fails
    replies += [fence(k["bc_900"].solution)]                              # 3rd start: only the eval again
    with pytest.raises(EngineError, match="went away"):
        engine.cycle()
    with pytest.raises(EngineError, match="gone again"):
        engine.cycle()
    notices = []
    rec = engine.cycle(on_event=lambda e: notices.append(getattr(e, "message", "")))
    assert rec.cycle == 1 and rec.promoted and rec.gains == ["bc_900"]
    assert len(trainer.datasets) == 1 and {d["koan_id"] for d in trainer.datasets[0]} == {"bc_902", "bc_903"}
    assert len(engine.runs("day")) == 2 and rec.day_run_ids == [r.run_id for r in engine.runs("day")]
    assert len(engine.runs("validation")) == 2
    said = " ".join(notices)
    assert "finished 2 of 2 koans" in said and "reusing it" in said and "validation" in said


def test_the_validation_slice_runs_beside_the_frozen_eval_on_half_the_cpus(with_validation, monkeypatch):
    """On a model served in process, a second instance runs the validation slice while the first runs the
    frozen eval, each on half of the spare CPUs; only the eval's koans reach the driver."""

    from sleepy_tui import engine as engine_module
    from sleepy_tui import events as ev
    engine, corpus, _, trainer = with_validation
    k = corpus.koans
    monkeypatch.setattr(engine_module, "SIDE_BY_SIDE", ("fake",))
    monkeypatch.setattr(engine_module, "usable_cpus", lambda: 5)
    scripts = {("MainThread", False): ["no idea", fence(k["bc_902"].solution), fence(k["bc_903"].solution)],
               ("cycle-validation", False): [fence(k["bc_901"].solution)],
               ("cycle-validation", True): [fence(k["bc_901"].solution)],
               ("MainThread", True): [fence(k["bc_900"].solution)]}
    made, backends = _backend_per_lane(engine, scripts)
    seen = []
    rec = engine.cycle(on_event=seen.append)
    assert rec.promoted and rec.gains == ["bc_900"] and (rec.validation_before, rec.validation_after) == (1.0, 1.0)
    assert all(b.remaining == 0 for b in backends.values()) and len(backends) == 4
    assert [t for role, t in made if role[0] == "cycle-validation" or role[1]] == [2, 2, 2]
    assert engine.settings.threads == 0
    started = [e.run_id for e in seen if isinstance(e, ev.RunStarted)]
    assert not set(started) & {rec.validation_before_run_id, rec.validation_run_id}
    assert any("runs beside the frozen eval" in getattr(e, "message", "") for e in seen)


class CheckpointingTrainer:
    """Like RecordingTrainer, and leaves the adapter of a checkpoint every `every` steps, as the real ones do."""
    name = "fake"

    def __init__(self, every):
        self.every, self.datasets = every, []

    def train(self, dataset, config, out_dir, *, on_event, stop=None, resume=True):
        import json

        from sleepy_tui.training import checkpoint
        from sleepy_tui.training.base import TrainResult
        self.datasets.append([json.loads(line) for line in open(dataset)])
        for step in range(self.every, config.steps + 1, self.every):
            def fill(tmp, step=step):
                for name in ("adapter_config.json", "adapter_model.safetensors", "state"):
                    (tmp / name).write_text(str(step))
            checkpoint.save(out_dir, step, fill, ("state",))
        (out_dir / "adapter").mkdir(parents=True, exist_ok=True)
        return TrainResult(out_dir / "adapter", config.steps, [1.0 / (i + 1) for i in range(config.steps)])


def test_the_validation_slice_picks_the_checkpoint_and_the_frozen_set_only_judges_it(with_validation):
    """Three candidates (steps 2, 4 and the trained 6): the one the validation slice scores best is the one the
    frozen set evaluates, recorded as an adapter of its own; the frozen set never chooses."""
    engine, corpus, replies, _ = with_validation
    k = corpus.koans
    trainer = CheckpointingTrainer(every=2)
    engine.trainer_factory = lambda s: trainer
    engine.settings = engine.settings.replace(steps=6, validation_picks=3)
    from sleepy_tui.backends.fake import ScriptedBackend
    paths = []
    solved, failed = fence(k["bc_901"].solution), "no idea"
    scripts = [["no idea"],                                                     # baseline eval: bc_900 fails
               [fence(k["bc_902"].solution), fence(k["bc_903"].solution)],      # day
               [solved], [failed], [solved], [failed],                          # validation: base, @2, @4, @6
               [fence(k["bc_900"].solution)]]                                   # frozen eval of the chosen

    def factory(s, on_notice=None):          # one backend per run, in the order the cycle makes them
        paths.append(s.adapter)
        return ScriptedBackend(scripts[len(paths) - 1])
    engine.backend_factory = factory
    rec = engine.cycle()
    assert rec.validation_by_step == {"2": 0.0, "4": 1.0, "6": 0.0}
    chosen = engine.store.adapters()
    assert rec.adapter_id.endswith("@4") and rec.train["steps"] == 4 and rec.promoted
    assert {a.adapter_id for a in chosen} >= {rec.adapter_id, rec.adapter_id.split("@")[0]}
    assert engine.current_adapter().peft_dir.endswith("step-000004")
    assert paths[-1].endswith("step-000004")                   # the frozen eval ran the chosen one
    assert paths[2] == "" and paths[3].endswith("step-000002") and paths[4].endswith("step-000004")
    assert paths[5].endswith("/adapter") and (rec.validation_before, rec.validation_after) == (1.0, 1.0)


def test_several_candidates_are_validated_in_two_lanes_before_the_frozen_eval(with_validation, monkeypatch):
    import threading

    from sleepy_tui import engine as engine_module
    from sleepy_tui.backends.fake import ScriptedBackend
    engine, corpus, _, _ = with_validation
    k = corpus.koans
    monkeypatch.setattr(engine_module, "SIDE_BY_SIDE", ("fake",))
    monkeypatch.setattr(engine_module, "usable_cpus", lambda: 3)
    trainer = CheckpointingTrainer(every=2)
    engine.trainer_factory = lambda s: trainer
    engine.settings = engine.settings.replace(steps=6, validation_picks=3)
    solved, failed = fence(k["bc_901"].solution), "no idea"
    scripts = {"": ["no idea", fence(k["bc_902"].solution), fence(k["bc_903"].solution), solved],
               "step-000002": [failed], "step-000004": [solved, fence(k["bc_900"].solution)], "adapter": [failed]}
    backends, threads = {}, {}

    def factory(s, on_notice=None):          # one scripted model per adapter, as llama.cpp loads one per file
        key = s.adapter.rsplit("/", 1)[-1]
        threads.setdefault(key, set()).add((threading.current_thread().name, s.threads))
        if key not in backends:
            backends[key] = ScriptedBackend(scripts[key])
        return backends[key]
    engine.backend_factory = factory
    rec = engine.cycle()
    assert rec.validation_by_step == {"2": 0.0, "4": 1.0, "6": 0.0} and rec.adapter_id.endswith("@4") and rec.promoted
    assert all(b.remaining == 0 for b in backends.values())
    # base and @4 in this thread, @2 and the trained one beside it, each on 1 of the 2 spare CPUs; then the
    # frozen eval of @4 alone, on the default threads
    assert threads["step-000002"] == threads["adapter"] == {("cycle-validation", 1)}
    assert threads["step-000004"] == {("MainThread", 1), ("MainThread", 0)}
    assert engine.settings.threads == 0
