"""Retries that explore: seeds and temperatures per attempt, repeats caught, strategies recorded, koans in
parallel, independent samples. Driven by the scripted fake backend on real rustc."""

import threading

import pytest

from sleepy_tui.agent import Agent
from sleepy_tui.backends.fake import ScriptedBackend
from sleepy_tui.config import ConfigError, Settings
from sleepy_tui.koans import load_corpus
from sleepy_tui.retry import STRATEGIES, candidate_key
from tests.conftest import write_koan


def fence(code: str) -> str:
    return f"```rust\n{code.strip()}\n```\n"


class CountingSandbox:
    """The real sandbox, counting what it compiles."""

    def __init__(self, sandbox):
        self.inner, self.checked, self._lock = sandbox, [], threading.Lock()

    def check(self, code, tests, **kw):
        with self._lock:
            self.checked.append(code)
        return self.inner.check(code, tests, **kw)


WRONG = "pub fn report() -> (i32, usize) {\n    (0, 0)\n}\n"


def test_identical_candidates_are_caught_and_not_compiled_twice(corpus, sandbox, store):
    koan = corpus.koans["bc_901"]
    spaced = WRONG.replace("(0, 0)", "( 0,0 ) // the same program, other spacing")
    replies = [fence(koan.buggy), fence(WRONG), fence(spaced), fence(koan.solution)]
    counting = CountingSandbox(sandbox)
    backend = ScriptedBackend(replies)
    agent = Agent(backend, counting, store, Settings(max_attempts=4))
    result = agent.run([koan], kind="day")
    assert result.passed == 1
    eps = store.episodes(result.run_id)
    assert [e["repeat_of"] for e in eps] == [0, None, 2, None]
    assert [e["outcome"] for e in eps] == ["compile_error", "test_failure", "test_failure", "pass"]
    # compiled: the broken program (for its diagnostics), the new wrong program, the fix; never a repeat
    assert len(counting.checked) == 3
    assert candidate_key(counting.checked[1]) == candidate_key(WRONG)
    # after each repeat the next prompt is the first prompt again (a fresh sample), never the repeated program
    first, second, fourth = (backend.calls[i][-1]["content"] for i in (0, 1, 3))
    assert second == first and fourth == first
    assert "Your previous attempt" in backend.calls[2][-1]["content"]


def test_without_restarts_the_next_prompt_names_the_repeat(corpus, sandbox, store):
    from dataclasses import replace

    import sleepy_tui.retry as retry
    koan = corpus.koans["bc_901"]
    backend = ScriptedBackend([fence(koan.buggy), fence(WRONG), fence(WRONG), fence(koan.solution)])
    agent = Agent(backend, sandbox, store, Settings(max_attempts=4))
    agent.strategy = replace(retry.STRATEGIES["explore"], restart_after_repeat=False)
    agent.run([koan])
    assert "broken program itself, unchanged" in backend.calls[1][-1]["content"]
    assert "exactly your attempt 2 again" in backend.calls[3][-1]["content"]


def test_the_fixed_strategy_compiles_repeats_as_before(corpus, sandbox, store):
    koan = corpus.koans["bc_901"]
    counting = CountingSandbox(sandbox)
    agent = Agent(ScriptedBackend([fence(WRONG)] * 3), counting, store,
                  Settings(max_attempts=3, retry_strategy="fixed"))
    agent.run([koan])
    assert len(counting.checked) == 4  # the broken program + three identical candidates


def test_seeds_and_temperatures_change_per_attempt_and_reproduce(corpus, sandbox, store):
    koan = corpus.koans["bc_901"]

    def options(strategy):
        backend = ScriptedBackend([fence(WRONG.replace("0, 0", f"{i}, 0")) for i in range(5)])
        Agent(backend, sandbox, store, Settings(max_attempts=5, retry_strategy=strategy, seed=7)).run([koan])
        return [(o.seed, o.temperature) for o in backend.options]

    explore = options("explore")
    assert len({s for s, _ in explore}) == 5
    assert [t for _, t in explore] == list(STRATEGIES["explore"].temperatures)
    assert options("explore") == explore  # same settings, same seed: the same sampling
    fixed = options("fixed")
    assert {s for s, _ in fixed} == {7} and {t for _, t in fixed} == {Settings().temperature}


def test_the_strategy_is_recorded_on_the_run(corpus, sandbox, store):
    agent = Agent(ScriptedBackend([fence(corpus.koans["bc_901"].solution)]), sandbox, store, Settings(seed=3))
    result = agent.run([corpus.koans["bc_901"]])
    run = store.run(result.run_id)
    assert run.retry_strategy["name"] == "explore" and run.retry_strategy["catch_repeats"] is True
    assert run.seed == 3 and run.parallel == 1
    ep = store.episodes(result.run_id)[0]
    assert ep["temperature"] == 0.0 and isinstance(ep["seed"], int)


def test_an_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match="retry_strategy"):
        Settings().replace(retry_strategy="yolo")


@pytest.fixture
def many_koans(tmp_path):
    root = tmp_path / "many"
    for i in range(8):
        write_koan(root, f"bc_9{i:02d}")
    return load_corpus(root).train_set


def test_parallel_keeps_episodes_and_the_store_consistent(many_koans, sandbox, store):
    backend = ScriptedBackend([fence(WRONG.replace("0, 0", f"{i}, 0")) for i in range(3)], cycle=True,
                              delay_s=0.001)
    agent = Agent(backend, sandbox, store, Settings(max_attempts=2, parallel=4, retry_strategy="fixed"))
    result = agent.run(many_koans)
    assert len(result.results) == 8 and [r.koan_id for r in result.results] == [k.id for k in many_koans]
    eps = store.episodes(result.run_id)
    assert len(eps) == 16 and len({e["id"] for e in eps}) == 16
    by_koan = {}
    for e in eps:
        by_koan.setdefault(e["koan_id"], []).append(e["attempt"])
    assert all(sorted(a) == [1, 2] for a in by_koan.values()) and len(by_koan) == 8
    run = store.run(result.run_id)
    assert run.status == "done" and run.total == 8 and run.parallel == 4


def test_a_cancelled_parallel_run_keeps_every_finished_koan(many_koans, sandbox, store):
    cancel = threading.Event()
    finished = []

    def on_event(e):
        if e.kind == "KoanFinished":
            finished.append(e.koan_id)
            if len(finished) == 3:
                cancel.set()

    backend = ScriptedBackend([fence(WRONG)], cycle=True, delay_s=0.002)
    agent = Agent(backend, sandbox, store, Settings(max_attempts=1, parallel=3), on_event=on_event, cancel=cancel)
    result = agent.run(many_koans)
    assert result.cancelled and 3 <= len(result.results) < 8
    stored = {e["koan_id"] for e in store.episodes(result.run_id)}
    assert set(finished) <= stored and stored == {r.koan_id for r in result.results}
    assert store.run(result.run_id).status == "cancelled"


def test_an_in_process_model_runs_one_koan_at_a_time(many_koans, sandbox, store):
    class OneAtATime(ScriptedBackend):
        max_parallel = 1

    notices = []
    agent = Agent(OneAtATime([fence(WRONG)], cycle=True), sandbox, store, Settings(max_attempts=1, parallel=4),
                  on_event=lambda e: notices.append(e) if e.kind == "Notice" else None)
    result = agent.run(many_koans[:2])
    assert store.run(result.run_id).parallel == 1
    assert any("one request at a time" in n.message for n in notices)


def test_independent_samples_are_single_attempts_with_their_own_seeds(corpus, sandbox, store):
    koan = corpus.koans["bc_901"]
    backend = ScriptedBackend([fence(WRONG)], cycle=True)
    agent = Agent(backend, sandbox, store, Settings(max_attempts=5))
    for sample in range(3):
        agent.run([koan], kind="eval", sample=sample)
    assert len(backend.options) == 3  # one attempt per sample, whatever max_attempts says
    assert len({o.seed for o in backend.options}) == 3
    assert {o.temperature for o in backend.options} == {STRATEGIES["explore"].sample_temperature}


def test_pass_at_k_over_samples(corpus, sandbox, store):
    from sleepy_tui.metrics import pass_at_k, store_cycle_table
    good, bad = corpus.koans["bc_901"], corpus.koans["bc_902"]
    # sample 0: bc_901 fixed, bc_902 not; sample 1: neither; sample 2: both
    replies = [fence(good.solution), fence(WRONG), fence(WRONG), fence(WRONG), fence(good.solution),
               fence(bad.solution)]
    agent = Agent(ScriptedBackend(replies), sandbox, store, Settings())
    runs = [agent.run([good, bad], kind="eval", sample=k).run_id for k in range(3)]
    p = pass_at_k([store.episodes(r) for r in runs])
    assert p.k == 3 and p.per_koan == {"bc_901": 2 / 3, "bc_902": 1 / 3}
    assert p.pass_at_1 == pytest.approx(0.5) and p.pass_at_k == 1.0
    assert p.spread == pytest.approx(0.4082, abs=1e-3)  # per-sample rates 1/2, 0, 1
    assert store_cycle_table(store) == []  # samples are not full evals: the cycle table leaves them out


def test_a_behaviour_bugs_first_prompt_shows_only_its_failing_tests(sandbox, store):
    corpus = load_corpus()
    koan = corpus.koans["tf_bc_bank_transfer"]        # its buggy program fails one of its two tests
    buggy = sandbox.check(koan.buggy, koan.tests)
    failing = [n for n in ("moves_money", "refuses_bad_transfers") if f"thread 'tests::{n}'" in buggy.output]
    passing = [n for n in ("moves_money", "refuses_bad_transfers") if n not in failing]
    assert len(failing) == 1 and len(passing) == 1
    backend = ScriptedBackend([fence(koan.solution)])
    Agent(backend, sandbox, store, Settings(max_attempts=1)).run([koan])
    first = backend.calls[0][-1]["content"]
    assert f"fn {failing[0]}" in first and f"fn {passing[0]}" not in first
