"""The agent loop, driven by the scripted fake backend on real rustc."""

import threading


from sleepy_tui import events as ev
from sleepy_tui.agent import Agent
from sleepy_tui.backends.base import BackendUnavailable
from sleepy_tui.backends.fake import ScriptedBackend
from sleepy_tui.config import Settings
from sleepy_tui.metrics import run_metrics
from sleepy_tui.store import Store


def fence(code: str) -> str:
    return f"Sure, here is the fix:\n```rust\n{code.strip()}\n```\n"


def make_agent(replies, sandbox, store, events, **settings):
    backend = ScriptedBackend(replies)
    agent = Agent(backend, sandbox, store, Settings(**settings), on_event=events.append)
    return agent, backend


def test_pass_on_second_attempt(corpus, sandbox, store):
    koan = corpus.koans["bc_901"]
    events = []
    agent, backend = make_agent([fence(koan.buggy), fence(koan.solution)], sandbox, store, events)
    result = agent.run([koan], kind="day")
    assert result.passed == 1 and result.results[0].attempts == 2
    eps = store.episodes(result.run_id)
    assert [e["outcome"] for e in eps] == ["compile_error", "pass"]
    assert eps[0]["signature"] == "E0382:borrow_of_moved_value" and eps[1]["signature"] is None
    assert eps[1]["tokens_out"] > 0 and eps[1]["generation_ms"] >= 0 and eps[1]["check_ms"] > 0
    # the first reply was the broken program again: not compiled twice; the second attempt asks afresh
    assert eps[0]["repeat_of"] == 0 and eps[0]["check_ms"] == 0
    assert backend.calls[1] == backend.calls[0] and "E0382" in backend.calls[1][-1]["content"]
    kinds = [e.kind for e in events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished" and "TokenStreamed" in kinds
    assert kinds.index("KoanFinished") > max(i for i, k in enumerate(kinds) if k == "AttemptChecked")
    streamed = "".join(e.text for e in events if isinstance(e, ev.TokenStreamed) and e.attempt == 2)
    assert streamed == fence(koan.solution)
    assert store.run(result.run_id).status == "done"


def test_reply_without_code_is_a_failed_attempt(corpus, sandbox, store):
    agent, _ = make_agent(["I cannot help with that."] * 2, sandbox, store, [], max_attempts=2)
    result = agent.run([corpus.koans["bc_901"]])
    eps = store.episodes(result.run_id)
    assert [(e["outcome"], e["signature"]) for e in eps] == [("no_code", "no_code")] * 2
    assert result.results[0].final_signature == "no_code" and result.passed == 0


def test_repeated_mistake_counts_as_repeat(corpus, sandbox, store):
    koan = corpus.koans["bc_901"]
    agent, _ = make_agent([fence(koan.buggy)] * 3, sandbox, store, [], max_attempts=3)
    result = agent.run([koan])
    m = run_metrics(store.episodes(result.run_id))
    assert m.repeat_error_rate == 1.0 and m.signature_counts == {"E0382:borrow_of_moved_value": 3}


def test_code_that_hangs_times_out(corpus, sandbox, store):
    koan = corpus.koans["bc_901"]
    hang = koan.solution.replace("v.iter().sum()", "loop {}")
    agent, _ = make_agent([fence(hang)], sandbox, store, [], max_attempts=1)
    result = agent.run([koan])
    assert store.episodes(result.run_id)[0]["outcome"] == "timeout"


def test_koan_reported_finished_only_once_durable(corpus, sandbox, store, tmp_path):
    seen = []

    def on_event(e):
        if isinstance(e, ev.KoanFinished):
            fresh = Store(tmp_path / "state")  # what a new process would read
            seen.append(len(fresh.episodes(e.run_id)))
    koans = [corpus.koans["bc_901"], corpus.koans["bc_902"]]
    agent = Agent(ScriptedBackend([fence(k.solution) for k in koans]), sandbox, store, Settings(), on_event=on_event)
    agent.run(koans)
    assert seen == [1, 2]


def test_cancel_keeps_finished_koans(corpus, sandbox, store):
    cancel = threading.Event()
    koans = [corpus.koans["bc_901"], corpus.koans["bc_902"]]

    def on_event(e):
        if isinstance(e, ev.AttemptChecked):
            cancel.set()
    agent = Agent(ScriptedBackend([fence(k.solution) for k in koans]), sandbox, store, Settings(),
                  on_event=on_event, cancel=cancel)
    result = agent.run(koans)
    assert result.cancelled and [r.koan_id for r in result.results] == ["bc_901"]
    assert store.run(result.run_id).status == "cancelled"
    assert len(store.episodes(result.run_id)) == 1


def test_backend_going_away_fails_the_run_cleanly(corpus, sandbox, store):
    k1, k2 = corpus.koans["bc_901"], corpus.koans["bc_902"]
    events = []
    agent, _ = make_agent([fence(k1.solution), BackendUnavailable("Ollama is not running: start it with `ollama serve`")],
                          sandbox, store, events)
    result = agent.run([k1, k2])
    assert "ollama serve" in result.error and result.passed == 1
    assert store.run(result.run_id).status == "failed"
    assert any(isinstance(e, ev.Notice) and e.level == "error" for e in events)
