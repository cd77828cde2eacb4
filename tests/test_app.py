"""Pilot tests of the app: a scripted backend, a fake trainer, a tmp koan corpus and a tmp state folder.

They press keys, wait for workers (never sleep) and assert on widgets and on the store.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest


from sleepy_tui import events as ev
from sleepy_tui.backends.fake import ScriptedBackend
from sleepy_tui.config import Settings
from sleepy_tui.app.main import build_app
from sleepy_tui.training.base import TrainConfig, TrainResult

FIX = '''```rust
pub fn total(v: &[i32]) -> i32 {{
    v.iter().sum()
}}

pub fn report() -> (i32, usize) {{
    let readings = vec![1, 2, {n}];
    let t = total(&readings);
    (t, readings.len())
}}
```'''
STILL_BROKEN = '''Here is my fix:
```rust
pub fn total(v: Vec<i32>) -> i32 {{
    v.iter().sum()
}}

pub fn report() -> (i32, usize) {{
    let readings = vec![1, 2, {n}];
    let t = total(readings);
    (t, readings.len())
}}
```'''


def n_of(kid: str) -> int:
    """The number conftest.mini_koan puts into koan `kid`."""
    return 3 + sum(map(ord, kid)) % 997


def fix(kid: str) -> str:
    if kid == "bc_900":   # the fixture's frozen koan is a program of its own (conftest.FROZEN_KOAN)
        import tomllib

        from tests.conftest import frozen_koan
        return "```rust\n" + tomllib.loads(frozen_koan())["solution"].strip() + "\n```"
    return FIX.format(n=n_of(kid))


def broken(kid: str) -> str:
    return STILL_BROKEN.format(n=n_of(kid))


class FakeTrainer:
    """Emits TrainStarted / TrainStep... / TrainDone, honours `stop`, writes an adapter folder.

    With `pause_at`, it stops reporting after that step and waits for `stop` (so a test can stop it mid-run
    without timing); `reached` is set when it gets there.
    """
    name = "fake"

    def __init__(self, pause_at: int | None = None):
        self.pause_at = pause_at
        self.reached = threading.Event()
        self.calls: list[dict] = []

    def train(self, dataset: Path, config: TrainConfig, out_dir: Path, *, on_event, stop=None, resume=True):
        stop = stop or threading.Event()
        ckpt = out_dir / "checkpoint.json"
        start = json.loads(ckpt.read_text())["step"] if resume and ckpt.exists() else 0
        self.calls.append({"resume": resume, "start": start, "steps": config.steps})
        examples = sum(1 for line in open(dataset) if line.strip())
        on_event(ev.TrainStarted(str(out_dir), config.steps, examples, resumed_from=start))
        losses = []
        step = start
        for step in range(start + 1, config.steps + 1):
            loss = round(2.0 / step, 4)
            losses.append(loss)
            on_event(ev.TrainStep(step, config.steps, loss, config.learning_rate, 100.0, float(config.steps - step)))
            if self.pause_at is not None and step == self.pause_at and start < self.pause_at:
                self.reached.set()
                stop.wait(10)
            if stop.is_set():
                break
        stopped = stop.is_set() and step < config.steps
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_text(json.dumps({"step": step}))
        adapter = out_dir / "adapter"
        adapter.mkdir(exist_ok=True)
        (adapter / "adapter_config.json").write_text("{}")
        if stopped:
            on_event(ev.CheckpointSaved(step, str(ckpt)))
        on_event(ev.TrainDone(str(adapter), step, losses[0] if losses else None, losses[-1] if losses else None,
                              stopped=stopped))
        return TrainResult(adapter, step, losses, stopped=stopped)


def make_app(koan_dir: Path, state: Path, replies: list, trainer: FakeTrainer | None = None, **settings):
    backend = ScriptedBackend(replies)
    s = Settings(**{"backend": "fake", "koans_dir": str(koan_dir), "state_dir": str(state), "max_attempts": 2,
                    "steps": 6, **settings})
    app = build_app(s, backend_factory=lambda _s, _notice=None: backend,
                    trainer_factory=lambda _s: trainer or FakeTrainer())
    app.animation_level = "none"  # nothing to wait for between key presses
    return app, backend


def add_correction(app, koan_id: str) -> None:
    """A verified fix in the store, so that a dataset can be built without a day run."""
    solution = app.engine.corpus().koans[koan_id].solution
    app.engine.store.add_correction({"correction_id": f"{koan_id}-fix", "koan_id": koan_id, "code": solution,
                                     "passed": True, "prompt": None, "time": 0})


async def settle(pilot) -> None:
    """Wait until every worker is done and the messages they posted are handled."""
    for _ in range(20):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if all(w.is_finished for w in pilot.app.workers):
            return


def queue_status(app) -> dict[str, tuple[str, int]]:
    from sleepy_tui.app.widgets.koan_queue import KoanQueue
    q = app.main_screen.query_one(KoanQueue)
    return {k: (r.status, r.attempts) for k, r in q.rows.items()}


async def test_day_run_streams_tokens_diagnostics_and_statuses(koan_dir, _isolated_state):
    from sleepy_tui.app.widgets.transcript import Transcript
    # bc_901 passes at once; bc_902 fails twice (max_attempts=2)
    app, backend = make_app(koan_dir, _isolated_state, [fix("bc_901"), broken("bc_902"), broken("bc_902")])
    seen: list[str] = []

    async with app.run_test(size=(100, 32), message_hook=lambda m: seen.append(type(m).__name__)) as pilot:
        await settle(pilot)
        assert set(queue_status(app)) == {"bc_900", "bc_901", "bc_902"}  # the corpus before any run
        await pilot.press("d")
        await settle(pilot)
        text = app.main_screen.query_one(Transcript).plain_text()
        assert "Here is my fix:" in text                       # the streamed reply
        assert "error[E0382]" in text and "main.rs" in text     # diagnostics, sandbox path cleaned
        assert "/tmp/" not in text
        assert "PASS" in text and "FAIL" in text
        assert "diff from attempt 1" in text
        assert queue_status(app) == {"bc_901": ("passed", 1), "bc_902": ("failed", 2)}
        assert seen.count("TokenStreamed") > 3
        for name in ("RunStarted", "KoanStarted", "AttemptChecked", "KoanFinished", "RunFinished"):
            assert name in seen
        assert backend.remaining == 0
    eps = app.engine.store.episodes()
    assert len(eps) == 3


class Recorder:
    """Collects the app's notifications (message, severity) next to showing them."""

    def __init__(self, app):
        self.notes: list[tuple[str, str]] = []
        original = app.notify

        def notify(message, *args, **kwargs):
            self.notes.append((str(message), kwargs.get("severity", "information")))
            return original(message, *args, **kwargs)

        app.notify = notify

    def errors(self) -> list[str]:
        return [m for m, sev in self.notes if sev == "error"]


def hook_on(name: str, koan_id: str | None = None):
    """A message hook and an asyncio.Event set when a message of type `name` (for `koan_id`) arrives."""
    seen = asyncio.Event()

    def hook(message):
        if type(message).__name__ == name and (koan_id is None or message.event.koan_id == koan_id):
            seen.set()
    return hook, seen


async def test_stop_run_keeps_finished_koans(koan_dir, _isolated_state):
    app, backend = make_app(koan_dir, _isolated_state, [fix("bc_901"), broken("bc_902"), broken("bc_902")])
    backend.delay_s = 0.05  # slow enough that the stop lands inside the second koan
    hook, first_done = hook_on("KoanFinished", "bc_901")
    async with app.run_test(size=(100, 32), message_hook=hook) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await asyncio.wait_for(first_done.wait(), 10)
        assert app.run_busy
        await pilot.press("s")
        await settle(pilot)
        assert not app.run_busy
        status = queue_status(app)
        assert status["bc_901"] == ("passed", 1)
        assert status["bc_902"][0] in ("stopped", "failed")
        from sleepy_tui.app.widgets.transcript import Transcript
        assert "stopped" in app.main_screen.query_one(Transcript).plain_text()
        assert not app.main_screen.query_one("#day-run").disabled  # controls come back
    runs = app.engine.store.runs()
    assert runs[-1].status == "cancelled"
    assert any(e["koan_id"] == "bc_901" for e in app.engine.store.episodes())


async def test_backend_unavailable_is_a_notification_with_the_fix(koan_dir, _isolated_state):
    from sleepy_tui.backends.base import BackendUnavailable
    app, _ = make_app(koan_dir, _isolated_state, [])

    def unavailable(_s, _notice=None):
        raise BackendUnavailable("Ollama is not running: start it with `ollama serve`")
    app.engine.backend_factory = unavailable
    rec = Recorder(app)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        assert any("ollama serve" in m for m in rec.errors())
        assert not app.run_busy and not app.main_screen.query_one("#day-run").disabled
        await pilot.press("2")  # still responsive
        assert app.main_screen.query_one("TabbedContent").active == "train"


async def test_training_start_stop_resume_moves_progress_and_loss_plot(koan_dir, _isolated_state):
    from textual.widgets import ProgressBar

    from sleepy_tui.app.widgets.metric_plot import MetricPlot
    trainer = FakeTrainer(pause_at=3)
    app, _ = make_app(koan_dir, _isolated_state, [], trainer=trainer)
    add_correction(app, "bc_901")
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        screen = app.main_screen
        await pilot.press("t")
        assert await asyncio.to_thread(trainer.reached.wait, 10)
        await pilot.pause()
        await pilot.pause()
        bar = screen.query_one("#train-progress", ProgressBar)
        assert (bar.progress, bar.total) == (3, 6)
        assert screen.query_one("#train-loss", MetricPlot).y == [2.0, 1.0, 0.6667]
        assert screen.query_one("#plot-loss", MetricPlot).x == [1, 2, 3]
        assert "step 3/6" in str(screen.query_one("#train-stats").render())
        assert screen.query_one("#train-start").disabled and not screen.query_one("#train-stop").disabled
        await pilot.click("#train-stop")  # the mouse works too
        await settle(pilot)
        assert "stopped at step 3" in str(screen.query_one("#train-stats").render())
        assert not screen.query_one("#train-start").disabled
        stopped = app.engine.store.adapters()[-1]
        assert stopped.stopped is True
        await pilot.press("u")
        await settle(pilot)
        assert trainer.calls[-1] == {"resume": True, "start": 3, "steps": 6}
        assert bar.progress == 6
        assert screen.query_one("#train-loss", MetricPlot).x == [1, 2, 3, 4, 5, 6]
        done = app.engine.store.adapters()[-1]
        assert done.adapter_id == stopped.adapter_id and done.stopped is False


async def test_the_app_leaves_its_start_up_heap_out_of_garbage_collections(koan_dir, _isolated_state):
    """After the first state is shown, what start-up built is frozen (gc.freeze) and Python's own full
    collections are off; the app runs them between key presses (QuietCollector) and gives them back on exit."""
    import gc

    from sleepy_tui.priority import QuietCollector
    before = gc.get_threshold()
    app, _ = make_app(koan_dir, _isolated_state, [])
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.pause()
        assert gc.get_freeze_count() > 10_000            # modules, the corpus and the widgets at least
        assert gc.get_threshold()[2] == QuietCollector.NEVER
        pressed = app.collector.last_key
        await pilot.press("2")
        assert app.collector.last_key > pressed          # a key press puts the next full collection off
    assert gc.get_threshold() == before


async def test_the_apps_trainer_is_a_niced_process_that_stop_ends_keeping_its_checkpoint(
        koan_dir, _isolated_state, tmp_path, pytestconfig, monkeypatch):
    """The app's default trainer (app_trainer_factory) trains in a child process started from the niced worker;
    Stop (s) ends that process and keeps the checkpoint it wrote on the way out."""
    import os

    from fixtures_training import build_tiny_llama, cached_tokenizer

    from sleepy_tui.app.main import app_trainer_factory
    from sleepy_tui.engine import ProcessTrainer, TrainBase
    model = build_tiny_llama(tmp_path / "model", cached_tokenizer(pytestconfig, tmp_path / "tokenizer"))
    trainer = app_trainer_factory(Settings(train_backend="torch"))
    assert isinstance(trainer, ProcessTrainer)
    app, _ = make_app(koan_dir, _isolated_state, [], trainer=trainer, steps=500, batch_size=1, max_seq_len=256,
                      checkpoint_every=0)
    monkeypatch.setattr(app.engine, "train_base", lambda on_event=None: TrainBase(str(model), "tiny", "", ""))
    add_correction(app, "bc_901")
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        screen = app.main_screen
        await pilot.press("t")
        bar = screen.query_one("#train-progress")
        for _ in range(1200):                       # the child loads torch and the model, then steps
            await pilot.pause(0.1)
            if (bar.progress or 0) >= 2:
                break
        assert (bar.progress or 0) >= 2, str(screen.query_one("#train-stats").render())
        assert trainer.child_nice is not None and trainer.child_nice > os.getpriority(os.PRIO_PROCESS, 0)
        await pilot.press("s")
        for _ in range(600):
            await pilot.pause(0.1)
            if not app.train_busy:
                break
        assert not app.train_busy
    with pytest.raises(ProcessLookupError):
        os.kill(trainer.pid, 0)                     # the child has ended (and was reaped)
    stopped = app.engine.store.adapters()[-1]
    assert stopped.stopped and 2 <= stopped.steps < 500
    folder = _isolated_state / "adapters" / stopped.adapter_id / "checkpoints"
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == [f"step-{stopped.steps:06d}"]


async def test_training_settings_are_validated(koan_dir, _isolated_state):
    from textual.widgets import Input
    trainer = FakeTrainer()
    app, _ = make_app(koan_dir, _isolated_state, [], trainer=trainer)
    rec = Recorder(app)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        screen = app.main_screen
        screen.query_one("#train-steps", Input).value = "0"
        screen.query_one("#train-replay_share", Input).value = "1.5"
        await pilot.pause()
        problems = str(screen.query_one("#train-problems").render())
        assert "steps: must be > 0" in problems and "replay_share" in problems  # shown while typing
        await pilot.click("#train-start")
        await settle(pilot)
        assert any("steps: must be > 0" in m for m in rec.errors())
        assert trainer.calls == []
        assert app.engine.settings.steps == 6  # unchanged
        screen.query_one("#train-steps", Input).value = "4"
        screen.query_one("#train-replay_share", Input).value = "0.2"
        await pilot.pause()
        assert str(screen.query_one("#train-problems").render()).strip() == ""


async def test_failure_review_steps_corrects_flags_and_reruns(koan_dir, _isolated_state):
    from textual.widgets import TextArea

    from sleepy_tui.app.screens.correction_screen import CorrectionScreen
    from sleepy_tui.app.screens.review_screen import ReviewScreen
    replies = [broken("bc_901"), broken("bc_901"), broken("bc_902"), broken("bc_902")]
    app, backend = make_app(koan_dir, _isolated_state, replies)
    rec = Recorder(app)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        assert app.collector.freezes >= 1     # the run's start froze what its model load left (issue 18)
        await pilot.press("r")
        await settle(pilot)
        review = app.screen
        assert isinstance(review, ReviewScreen)
        assert "Failure 1 of 2" in str(review.query_one("#review-title").render())
        assert "bc_901" in str(review.query_one("#review-title").render())
        assert "E0382:borrow_of_moved_value" in str(review.query_one("#review-signature").render())
        await pilot.press("n")
        assert "Failure 2 of 2" in str(review.query_one("#review-title").render())
        await pilot.press("p")
        assert review.item.koan_id == "bc_901"

        # a failing correction is refused, and nothing is stored
        await pilot.press("e")
        assert isinstance(app.screen, CorrectionScreen)
        editor = app.screen.query_one(TextArea)
        editor.text = app.engine.corpus().koans["bc_901"].buggy
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, CorrectionScreen)
        assert any("refused" in m for m in rec.errors())
        assert app.engine.store.corrections() == []
        # a passing one is stored with the prompt the model saw first
        editor.text = app.engine.corpus().koans["bc_901"].solution
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert app.screen is review
        (c,) = app.engine.store.corrections()
        first = next(e for e in app.engine.store.episodes() if e["koan_id"] == "bc_901" and e["attempt"] == 1)
        assert c["koan_id"] == "bc_901" and c["passed"] is True and c["prompt"] == first["prompt"]

        await pilot.press("f")
        await settle(pilot)
        assert [f["koan_id"] for f in app.engine.store.flags()] == ["bc_901"]
        assert "flagged" in str(review.query_one("#review-title").render())

        # re-run this koan now: back on the main screen, watching it
        backend.replies.append(fix("bc_901"))
        await pilot.press("r")
        await settle(pilot)
        assert app.screen is app.main_screen
        assert queue_status(app) == {"bc_901": ("passed", 1)}
        assert app.engine.store.runs()[-1].kind == "rerun"


async def test_queue_filters_and_koan_history(koan_dir, _isolated_state):
    from textual.widgets import DataTable, Select

    from sleepy_tui.app.screens.koan_history_screen import KoanHistoryScreen
    app, _ = make_app(koan_dir, _isolated_state, [fix("bc_901"), fix("bc_902")])
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        screen = app.main_screen
        table = screen.query_one("#queue-table", DataTable)
        assert table.row_count == 3
        screen.query_one("#split-filter", Select).value = "eval"
        await pilot.pause()
        assert [r.value for r in table.rows] == ["bc_900"]
        screen.query_one("#split-filter", Select).value = Select.NULL
        await pilot.pause()
        await pilot.press("d")
        await settle(pilot)
        table.focus()
        table.move_cursor(row=1)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, KoanHistoryScreen) and app.screen.koan_id == "bc_902"
        assert app.screen.query_one("#history-table", DataTable).row_count == 1
        await pilot.press("escape")
        assert app.screen is screen


async def test_help_palette_and_small_terminal(koan_dir, _isolated_state):
    from sleepy_tui.app.screens.help_screen import HelpScreen
    app, _ = make_app(koan_dir, _isolated_state, [fix("bc_901"), fix("bc_902")])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Start a day run", "Start training", "Review failures", "Help"} <= set(titles)
        await pilot.press("d")
        await settle(pilot)
        await pilot.resize_terminal(60, 18)
        for tab in "231":
            await pilot.press(tab)
        await pilot.resize_terminal(120, 40)
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert queue_status(app) == {"bc_901": ("passed", 1), "bc_902": ("passed", 1)}


async def test_quit_while_running_stops_and_keeps_finished_episodes(koan_dir, _isolated_state):
    from sleepy_tui.store import Store
    app, backend = make_app(koan_dir, _isolated_state, [fix("bc_901"), broken("bc_902"), broken("bc_902")])
    backend.delay_s = 0.05
    hook, first_done = hook_on("KoanFinished", "bc_901")
    async with app.run_test(size=(100, 32), message_hook=hook) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await asyncio.wait_for(first_done.wait(), 10)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0
    assert app.cancel_run.is_set()
    fresh = Store(_isolated_state)
    assert [e["koan_id"] for e in fresh.episodes()][:1] == ["bc_901"]
    assert fresh.runs()[-1].status == "cancelled"


async def test_transcript_follows_until_the_user_scrolls_up(koan_dir, _isolated_state):
    from rich.text import Text

    from sleepy_tui.app.widgets.transcript import Transcript
    app, _ = make_app(koan_dir, _isolated_state, [fix("bc_901"), broken("bc_902"), broken("bc_902")])
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        transcript = app.main_screen.query_one(Transcript)
        assert transcript.max_scroll_y > 0 and transcript.scroll_y == transcript.max_scroll_y  # followed
        transcript.focus()
        await pilot.press("pageup")
        await pilot.pause()
        held = transcript.scroll_y
        assert not transcript.following and held < transcript.max_scroll_y
        for i in range(20):
            transcript.write(Text(f"more {i}"))
        await pilot.pause()
        assert transcript.scroll_y == held  # reading stays put while the run goes on
        await pilot.press("end")
        await pilot.pause()
        assert transcript.following
        transcript.write(Text("latest"))
        await pilot.pause()
        assert transcript.scroll_y == transcript.max_scroll_y


async def test_full_cycle_updates_header_plots_and_trainer(koan_dir, _isolated_state, monkeypatch):
    from sleepy_tui.app.widgets.metric_plot import MetricPlot
    # the fake backend has no adapter format of its own: let it "load" the fake trainer's folder
    replies = [fix("bc_900"), fix("bc_901"), fix("bc_902"), fix("bc_900")]  # baseline eval, day, eval
    app, backend = make_app(koan_dir, _isolated_state, replies)
    rec = Recorder(app)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        assert backend.remaining == 0
        (c0, c1) = app.engine.store.cycles()
        assert c1.cycle == 1 and c1.promoted is True
        screen = app.main_screen
        assert screen.query_one("#plot-pass-rate", MetricPlot).x == [0, 1]
        assert screen.query_one("#plot-pass-rate", MetricPlot).y == [100.0, 100.0]
        assert screen.query_one("#plot-loss", MetricPlot).x == list(range(1, 7))
        assert f"adapter {c1.adapter_id}" in app.sub_title and "cycle 1" in app.sub_title
        assert any("Cycle 1: adapter promoted" in m for m, _ in rec.notes)
        assert not app.run_busy and not screen.query_one("#train-start").disabled


async def test_bad_koan_file_is_reported_and_the_rest_load(koan_dir, _isolated_state):
    (koan_dir / "borrow_checker" / "bc_bad.toml").write_text('id = "bc_bad"\nfamily = ')
    app, _ = make_app(koan_dir, _isolated_state, [])
    rec = Recorder(app)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        assert any("bc_bad.toml" in m and "invalid TOML" in m for m, _ in rec.notes)
        assert set(queue_status(app)) == {"bc_900", "bc_901", "bc_902"}


class NiceRecordingBackend(ScriptedBackend):
    """Remembers the nice value of the thread that generates (and of the threads that thread starts)."""

    def __init__(self, replies):
        super().__init__(replies)
        self.nice: list[int | None] = []
        self.child_nice: list[int | None] = []

    def stream(self, messages, options):
        from sleepy_tui.priority import this_thread_nice
        self.nice.append(this_thread_nice())
        t = threading.Thread(target=lambda: self.child_nice.append(this_thread_nice()))
        t.start()
        t.join()
        yield from super().stream(messages, options)


async def test_the_model_runs_at_a_lower_priority_than_the_ui(koan_dir, _isolated_state):
    import sys

    from sleepy_tui.priority import BACKGROUND_NICE, this_thread_nice
    backend = NiceRecordingBackend([fix("bc_901"), fix("bc_902")])
    s = Settings(backend="fake", koans_dir=str(koan_dir), state_dir=str(_isolated_state), max_attempts=1)
    app = build_app(s, backend_factory=lambda _s, _notice=None: backend, trainer_factory=lambda _s: FakeTrainer())
    app.animation_level = "none"
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        ui = this_thread_nice()
        await pilot.press("d")
        await settle(pilot)
        assert this_thread_nice() == ui                       # the UI thread keeps its priority
    if sys.platform.startswith("linux"):
        assert backend.nice and all(n == min(19, (ui or 0) + BACKGROUND_NICE) for n in backend.nice)
        assert backend.child_nice == backend.nice             # threads it starts (llama.cpp's, torch's) inherit it


def _no_local_models(monkeypatch, tmp_path) -> None:
    """Neither the models folder nor Ollama's blob store holds a table model (SmolLM2 ships in its package)."""
    monkeypatch.setenv("SLEEPY_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    monkeypatch.delenv("OLLAMA_HOST", raising=False)


async def _pick(pilot, model: str, backend: str = "embedded") -> None:
    """On the model picker: move the cursor to the row of `model` run by `backend`, press Enter."""
    from textual.widgets import DataTable
    screen = pilot.app.screen
    row = next(i for i, c in enumerate(screen.choices) if (c.model, c.backend) == (model, backend))
    table = screen.query_one(DataTable)
    while table.cursor_row != row:
        await pilot.press("down" if table.cursor_row < row else "up")
    await pilot.press("enter")
    await pilot.pause()


async def test_model_picker_switches_the_settings_and_the_header(koan_dir, _isolated_state, monkeypatch, tmp_path):
    from textual.widgets import Input, Select, Static

    from sleepy_tui.app.screens.model_screen import ModelScreen
    from test_bad_input import closed_port_url
    _no_local_models(monkeypatch, tmp_path)
    app, backend = make_app(koan_dir, _isolated_state, [fix("bc_901"), fix("bc_902")], ollama_host=closed_port_url())
    before = app.engine.settings
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        assert app.sub_title.startswith("fake:default model · adapter none")
        assert "Choose model" in [c.title for c in app.get_system_commands(app.screen)]
        await pilot.press("m")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ModelScreen)
        # every table model, as the embedded backend runs it; no Ollama answers, so no Ollama row
        assert [(c.model, c.backend) for c in screen.choices] == [
            ("qwen2.5-coder-1.5b", "embedded"), ("qwen2.5-coder-0.5b", "embedded"), ("smollm2-135m", "embedded")]
        smol = screen.choices[2]
        assert smol.ready and smol.default and smol.state == "ready (installed package)"
        await _pick(pilot, "smollm2-135m")
        assert app.screen is app.main_screen
        s = app.engine.settings
        assert (s.backend, s.model) == ("embedded", "smollm2-135m") and s is not before
        assert before.model == "" and before.backend == "fake"      # the old object is frozen, replaced whole
        assert app.sub_title.startswith("embedded:smollm2-135m · adapter none")
        main = app.main_screen
        assert main.query_one("#backend", Select).value == "embedded"
        assert main.query_one("#model", Input).value == "smollm2-135m"
        assert "SmolLM2-135M-Instruct" in str(main.query_one("#train-base-model", Static).render())
        assert app.engine.train_base().name == "smollm2-135m"       # the trainer adapts the chosen model
        # the picker now marks the model in use; escape leaves the settings as they are
        await pilot.press("m")
        await settle(pilot)
        assert [c.model for c in app.screen.choices if c.in_use] == ["smollm2-135m"]
        await pilot.press("escape")
        assert app.engine.settings is s
        # the next day run goes through the new settings (the scripted backend stands in for the model)
        await pilot.press("d")
        await settle(pilot)
        assert backend.remaining == 0


async def test_model_picker_says_how_to_pull_an_absent_model(koan_dir, _isolated_state, monkeypatch, tmp_path):
    from textual.widgets import Static

    from ollama_server import OllamaStub
    from sleepy_tui.app.screens.model_screen import ModelScreen
    _no_local_models(monkeypatch, tmp_path)
    served = "qwen2.5-coder:0.5b-instruct-q4_K_M"
    with OllamaStub(models=[served]) as ollama:
        app, _ = make_app(koan_dir, _isolated_state, [], ollama_host=ollama.url)
        rec = Recorder(app)
        async with app.run_test(size=(100, 32)) as pilot:
            await settle(pilot)
            await pilot.press("m")
            await settle(pilot)
            screen = app.screen
            absent = next(c for c in screen.choices if c.model == "qwen2.5-coder-0.5b")
            assert not absent.ready and absent.state == "not pulled"
            assert absent.fix == "sleepy models pull qwen2.5-coder-0.5b"
            await _pick(pilot, "qwen2.5-coder-0.5b")
            # refused, saying the one command: the settings stay, the picker stays open
            assert app.screen is screen and app.engine.settings.backend == "fake"
            detail = str(screen.query_one("#model-detail", Static).render())
            assert "run `sleepy models pull qwen2.5-coder-0.5b`" in detail
            assert any("run `sleepy models pull qwen2.5-coder-0.5b`" in m for m, sev in rec.notes if sev == "warning")
            # the Ollama that serves the same model is a choice of its own
            twin = next(c for c in screen.choices if c.backend == "ollama")
            assert (twin.model, twin.name, twin.ready) == (served, "qwen2.5-coder-0.5b", True)
            await _pick(pilot, served, backend="ollama")
            assert not isinstance(app.screen, ModelScreen)
            assert (app.engine.settings.backend, app.engine.settings.model) == ("ollama", served)
            assert app.sub_title.startswith(f"ollama:{served} · adapter none")
