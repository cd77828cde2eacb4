"""State under concurrent writers and readers.

One process (the app's arrangement): the agent (day and eval runs with the scripted backend) and a trainer
(build dataset, train with checkpoints, record and promote the adapter, all through the engine) write the state
at the same time, while readers read it the way the UI does (the app's read_state, Store reads,
metrics.store_cycle_table) and the way another process does (a fresh Store on the same folder). Nothing may be
torn, lost or need recovery; a run a reader sees as done has all its episodes on disk.

Two processes: each `sleepy` process has its own Store, which caches sleepy.json and writes its whole copy back
on every flush. The last test shows what that does to a second process's records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sleepy_tui import events as ev
from sleepy_tui.app.state import read_state
from sleepy_tui.backends.fake import ScriptedBackend
from sleepy_tui.config import Settings
from sleepy_tui.engine import Engine
from sleepy_tui.koans import load_corpus, write_manifest
from sleepy_tui.metrics import store_cycle_table
from sleepy_tui.sandbox import CheckResult
from sleepy_tui.atomic import write_text as atomic_write_text
from sleepy_tui.store import Store
from sleepy_tui.training import adapters
from sleepy_tui.training.base import TrainResult
from tests.conftest import write_koan

TRAIN_KOANS, EVAL_KOANS = 16, 4
RUNS = 8                     # agent runs: day, eval, day, eval, ...
ADAPTERS = 4                 # trainings, at least: the trainer goes on while the agent runs
TRAIN_STEPS, CHECKPOINT_EVERY = 12, 3
BROKEN, FIXED = "```rust\npub fn broken() {}\n```", "```rust\npub fn fixed() {}\n```"


class QuickSandbox:
    """Stands in for rustc: the checks take a millisecond, so the test is about the state, not the compiler."""

    def check(self, code: str, tests: str) -> CheckResult:
        time.sleep(0.001)
        return CheckResult("pass", None) if "fixed" in code else CheckResult("compile_error", "E0425:unresolved")

    def close(self) -> None:
        pass


class FakeTrainer:
    """Writes what a trainer writes (checkpoints every few steps, rotated; the final adapter) with the store's
    atomic writes, reports through events, and takes a few milliseconds a step."""

    name = "fake"

    def train(self, dataset, config, out_dir, *, on_event, stop=None, resume=True) -> TrainResult:
        out_dir = Path(out_dir)
        rows = [json.loads(line) for line in Path(dataset).read_text().splitlines()]
        on_event(ev.TrainStarted(run_dir=str(out_dir), total_steps=config.steps, examples=len(rows)))
        losses = []
        for step in range(1, config.steps + 1):
            time.sleep(0.01)
            losses.append(2.0 / step)
            on_event(ev.TrainStep(step, config.steps, losses[-1], config.learning_rate, 100.0, 0.0))
            if step % CHECKPOINT_EVERY == 0:
                ckpt = out_dir / "checkpoints" / f"step-{step:06d}"
                atomic_write_text(ckpt / "weights.json", json.dumps({"step": step, "examples": len(rows)}))
                for old in sorted((out_dir / "checkpoints").glob("step-*"))[:-2]:
                    for f in old.iterdir():
                        f.unlink()
                    old.rmdir()
                on_event(ev.CheckpointSaved(step, str(ckpt)))
        atomic_write_text(out_dir / "adapter" / "weights.json", json.dumps({"step": config.steps}))
        on_event(ev.TrainDone(str(out_dir / "adapter"), config.steps, losses[0], losses[-1]))
        return TrainResult(adapter_dir=out_dir / "adapter", steps=config.steps, losses=losses)


@pytest.fixture
def engine(tmp_path):
    root = tmp_path / "koans"
    for i in range(TRAIN_KOANS + EVAL_KOANS):
        write_koan(root, f"bc_{960 + i}")
    corpus = load_corpus(root)
    write_manifest(root / "frozen_eval.toml", [corpus.koans[f"bc_{960 + i}"] for i in range(EVAL_KOANS)])
    settings = Settings(backend="fake", max_attempts=3, steps=TRAIN_STEPS, koans_dir=str(root),
                        state_dir=str(tmp_path / "state"), replay_share=0.3)
    warnings: list[str] = []
    eng = Engine(settings, trainer_factory=lambda s: FakeTrainer(), on_warning=warnings.append)
    eng._sandbox = QuickSandbox()
    eng.test_warnings = warnings
    yield eng
    eng.close()


def test_agent_trainer_and_readers_at_once_corrupt_nothing(engine):
    corpus = engine.corpus()
    assert len(corpus.train_set) == TRAIN_KOANS and len(corpus.eval_set) == EVAL_KOANS
    state = engine.store.dir
    done = threading.Event()
    errors: list[str] = []
    results = []
    trained: list[dict] = []
    reads = {"shared": 0, "fresh": 0}

    def guard(name, fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                import traceback
                errors.append(f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        return run

    def agent():
        for i in range(RUNS):
            kind = "eval" if i % 2 else "day"
            koans = corpus.eval_set if kind == "eval" else corpus.train_set
            # each koan: a broken attempt, then the fix (2 episodes); chunk_size 3 makes many stream events
            backend = ScriptedBackend([BROKEN, FIXED], chunk_size=3, delay_s=0.001, cycle=True)
            res = engine.run_agent(koans, kind=kind, cycle=i // 2, backend=backend, adapter_id="")
            assert not res.error and not res.cancelled
            results.append(res)

    def trainer():
        while not engine.store.episodes() and not errors:      # the first day's first koan
            time.sleep(0.01)
        i = 0
        while i < ADAPTERS or (len(results) < RUNS and not errors):
            dataset = engine.build_dataset()
            meta = engine.train(dataset, cycle=i + 1, fresh=True, adapter_id=f"c{i + 1:03d}-concurrent",
                                on_event=lambda e: None)
            if i % 2 == 0:
                adapters.promote(engine.store, meta.adapter_id, reason="test")
            engine.store.save_cycle({"cycle": i + 1, "adapter_id": meta.adapter_id, "time": time.time()})
            trained.append(meta)
            i += 1

    def shared_reader():              # the UI: the engine's own store, from another thread
        while not done.is_set():
            snap = read_state(engine)
            assert not snap.warnings, snap.warnings
            store_cycle_table(engine.store)
            for r in engine.store.runs():
                eps = engine.store.episodes(r.run_id)
                if r.status == "done":
                    assert len(eps) == 2 * len(r.koan_ids), r.run_id
            engine.store.adapters()
            reads["shared"] += 1

    def fresh_reader():               # another process: a new Store on the same folder, reading what is on disk
        while not done.is_set():
            warnings: list[str] = []
            s = Store(state, on_warning=warnings.append)
            runs = s.runs()
            for r in runs:                                  # sleepy.json is read before the episode files
                eps = s.episodes(r.run_id)
                assert all({"run_id", "koan_id", "attempt", "outcome"} <= set(e) for e in eps)
                if r.status == "done":
                    assert len(eps) == 2 * len(r.koan_ids), r.run_id
            for a in s.adapters():
                assert a.steps == TRAIN_STEPS and not a.stopped
            store_cycle_table(s)
            s.close()
            assert warnings == [], warnings
            reads["fresh"] += 1

    writers = [threading.Thread(target=guard("agent", agent)), threading.Thread(target=guard("trainer", trainer))]
    readers = [threading.Thread(target=guard("ui reader", shared_reader)),
               threading.Thread(target=guard("process reader", fresh_reader))]
    t0 = time.monotonic()
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    done.set()
    for t in readers:
        t.join(timeout=60)
    took = time.monotonic() - t0
    assert not errors, "\n".join(errors)
    assert len(results) == RUNS and len(trained) >= ADAPTERS
    assert reads["shared"] > 3 and reads["fresh"] > 3, reads
    print(f"\n{RUNS} runs and {len(trained)} trainings in {took:.1f}s with {reads} reads")
    engine.close()

    # a fresh Store loads everything, without recovery, and the counts match
    warnings: list[str] = []
    store = Store(state, on_warning=warnings.append)
    assert warnings == [] and engine.test_warnings == []
    eps = store.episodes()
    attempts = sum(r.attempts for res in results for r in res.results)
    assert len(eps) == attempts == 2 * RUNS // 2 * (TRAIN_KOANS + EVAL_KOANS)
    runs = {r.run_id: r for r in store.runs()}
    assert set(runs) == {res.run_id for res in results} == set(store.run_ids_on_disk())
    for res in results:
        r = runs[res.run_id]
        assert r.status == "done" and r.passed == len(r.koan_ids) == len(res.results)
        assert len(store.episodes(res.run_id)) == 2 * len(r.koan_ids)
    recorded = {a.adapter_id: a for a in store.adapters()}
    assert set(recorded) == {m.adapter_id for m in trained}
    for aid, a in recorded.items():
        assert json.loads((state / "adapters" / aid / "meta.json").read_text())["steps"] == a.steps == TRAIN_STEPS
        assert json.loads((Path(a.peft_dir) / "weights.json").read_text()) == {"step": TRAIN_STEPS}
        assert [p.name for p in sorted((state / "adapters" / aid / "checkpoints").iterdir())] == \
            ["step-000009", "step-000012"]
    assert store.get_value("training_adapter_id") is None
    assert store.get_value("current_adapter") == trained[(len(trained) - 1) // 2 * 2].adapter_id
    assert [c.cycle for c in store.cycles()] == list(range(1, len(trained) + 1))
    assert len(store_cycle_table(store)) == RUNS // 2          # one eval per cycle 0..2
    assert not [p for p in state.rglob("*.tmp")]                # no temp file left behind
    for f in [state / "sleepy.json", *state.glob("episodes/*.json")]:
        json.loads(f.read_text())


# ---- two processes ---------------------------------------------------------------------------------------------------

WRITER = textwrap.dedent('''
    import sys, time
    from sleepy_tui.store import Store
    store = Store(sys.argv[1])
    for line in sys.stdin:                       # one command a line: what `sleepy run` / `sleepy train` write
        kind, key = line.split()
        try:
            if kind == "run":
                store.save_run({"run_id": key, "kind": "day", "status": "running", "started": time.time()})
            elif kind == "done":
                store.save_run({"run_id": key, "kind": "day", "status": "done", "started": 0})
            elif kind == "adapter":
                store.save_adapter({"adapter_id": key, "created": time.time()})
            print("ok", flush=True)
        except Exception as e:
            print(f"refused {type(e).__name__}: {e}", flush=True)
''')


def test_two_processes_writing_one_state_lose_nothing_or_refuse_clearly(tmp_path):
    """`sleepy run` (A) and `sleepy train` (B), or the app and a CLI command, on the same state folder."""
    state = tmp_path / "state"
    Store(state).close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = {name: subprocess.Popen([sys.executable, "-c", WRITER, str(state)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, env=env) for name in "AB"}

    def say(name: str, line: str) -> str:
        p = procs[name]
        p.stdin.write(line + "\n")
        p.stdin.flush()
        return p.stdout.readline().strip()

    try:
        replies = [say("A", "run day-a"),           # A: a day run starts
                   say("B", "adapter c001-b"),       # B: a training records its adapter
                   say("A", "done day-a")]           # A: the day run ends
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait(timeout=30)
    refused = [r for r in replies if r.startswith("refused")]
    if refused:                                      # a lock: the second writer is refused, saying who holds it
        assert len(refused) == 1 and "in use" in refused[0] and str(procs["A"].pid) in refused[0], replies
        return
    store = Store(state)
    assert [r.status for r in store.runs()] == ["done"]
    assert [a.adapter_id for a in store.adapters()] == ["c001-b"], "B's adapter record was lost"
