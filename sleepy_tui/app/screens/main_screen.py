"""The main screen: Run (queue + live transcript), Train (control panel) and Plots tabs.

It owns its widgets: engine events and worker results arrive here as messages and `@on` handlers update
the UI. Jobs are started and stopped through the app, which owns the workers.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Select, Static, TabbedContent, TabPane

from ...config import ConfigError
from .. import messages as msg
from .. import keys
from ..state import StateSnapshot
from ..widgets.koan_queue import KoanQueue, QueueRow
from ..widgets.plots_panel import PlotsPanel
from ..widgets.run_controls import RunControls
from ..widgets.train_panel import TrainPanel
from ..widgets.transcript import Transcript
from .koan_history_screen import KoanHistoryScreen
from .model_screen import ModelScreen
from .review_screen import ReviewScreen

INTRO = ("Welcome. Press d to start a day run: the model tries each training koan (a small broken Rust "
         "program), rustc and the koan's tests check every attempt, and the errors go into the next try. "
         "e evaluates on the frozen set, c runs a full cycle (day → sleep → eval → gate), t trains, "
         "r reviews failures, ? shows every key.")
BUTTONS = {"day-run": "day_run", "eval-run": "eval_run", "cycle-run": "cycle", "stop-run": "stop_run",
           "review": "review", "train-start": "train", "train-stop": "stop_training",
           "train-resume": "resume_training"}
SEVERITY = {"info": "information", "warning": "warning", "error": "error"}


class MainScreen(Screen):
    BINDINGS = keys.bindings("main")
    PALETTE = keys.palette("main")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.snapshot: StateSnapshot | None = None
        self.last_run_id: str | None = None
        self.max_attempts = 5
        self._restored = False
        self._run_label = ""
        self._loaded = True               # False from a run's start to its first token (its model loads then)

    @property
    def engine(self):
        return self.app.engine

    def compose(self) -> ComposeResult:
        s = self.engine.settings
        yield Header()
        with TabbedContent(id="tabs", initial="run"):
            with TabPane("Run", id="run"):
                yield RunControls(s)
                yield Static("", id="run-status")
                with Horizontal(id="run-body"):
                    yield KoanQueue()
                    yield Transcript()
            with TabPane("Train", id="train"):
                yield TrainPanel(s)
            with TabPane("Plots", id="plots"):
                yield PlotsPanel()
        yield Footer()

    def on_mount(self) -> None:
        self.app.update_status()
        self._status("loading koans and history…")
        self.query_one(Transcript).intro(INTRO)
        self.app.refresh_state(self)
        self._sync_controls()

    # ---- small helpers ---------------------------------------------------------------------------------------

    def _status(self, text: str) -> None:
        self.query_one("#run-status", Static).update(text)

    def _idle_status(self) -> None:
        corpus = self.snapshot.corpus if self.snapshot else None
        if corpus is None:
            self._status("no koans loaded")
            return
        held = f" · {len(corpus.validation_set)} validation" if corpus.validation_set else ""
        counts = f"{len(corpus.train_set)} train{held} · {len(corpus.eval_set)} eval koans"
        last = self.snapshot.last_run
        if last and last.total:
            counts += f" · last {last.kind} run {last.passed or 0}/{last.total} passed"
        self._status(f"idle · {counts} · d day run · e eval · c cycle")

    def _sync_controls(self) -> None:
        app = self.app
        cycle = app.run_kind == "cycle" and app.run_busy
        self.query_one(RunControls).set_busy(app.run_busy, cycle_blocked=app.train_busy)
        self.query_one(TrainPanel).set_running(app.training_busy or cycle, blocked=cycle)

    def _corpus(self):
        if self.snapshot is None:
            self.notify("Still loading the koans; try again in a moment.", severity="warning")
            return None
        if self.snapshot.corpus is None:
            self.notify(self.snapshot.corpus_error or "No koans loaded.", severity="error")
            return None
        return self.snapshot.corpus

    # ---- actions -----------------------------------------------------------------------------------------

    def action_day_run(self) -> None:
        corpus = self._corpus()
        if corpus is None:
            return
        family = self.query_one(KoanQueue).family
        koans = self.engine.day_koans(family=family, corpus=corpus)
        if not koans:
            where = f" of family {family}" if family else ""
            self.notify(f"No training koans{where} in {self.engine.settings.koans_path}: add koan files "
                        "(or `sleepy koans generate`), or clear the family filter.", severity="warning")
            return
        self._start_run(koans, "day")

    def action_eval_run(self) -> None:
        corpus = self._corpus()
        if corpus is None:
            return
        if not corpus.eval_set:
            self.notify("The frozen eval set is empty: is koans/frozen_eval.toml present? "
                        "(`sleepy koans freeze` writes it)", severity="warning")
            return
        self._start_run(corpus.eval_set, "eval")

    def _start_run(self, koans, kind: str) -> None:
        self.max_attempts = self.engine.settings.max_attempts
        if self.app.start_run(koans, kind, self):
            self._status(f"{kind} run · starting the model…")
            self.query_one(TabbedContent).active = "run"
        self._sync_controls()

    def action_cycle(self) -> None:
        if self._corpus() is None:
            return
        self.max_attempts = self.engine.settings.max_attempts
        if self.app.start_cycle(self):
            self._status("cycle · baseline eval, then day → sleep → eval → gate")
            self.query_one(TabbedContent).active = "run"
        self._sync_controls()

    def action_stop(self) -> None:
        if self.app.stop_jobs():
            self._status("stopping… (the current attempt or training step finishes first)")
        else:
            self.notify("Nothing is running.")

    def action_stop_run(self) -> None:
        if self.app.stop_run():
            self._status("stopping… (the current attempt finishes first)")

    def action_stop_training(self) -> None:
        cycle = self.app.run_kind == "cycle"  # a cycle's training stops with the cycle
        if self.app.stop_training() or (cycle and self.app.stop_run()):
            self.query_one(TrainPanel).log("stopping at the next step…")

    def action_train(self) -> None:
        self._start_training(resume=False)

    def action_resume_training(self) -> None:
        self._start_training(resume=True)

    def _start_training(self, *, resume: bool) -> None:
        panel = self.query_one(TrainPanel)
        try:
            self.app.apply_settings(**panel.read_form())
        except ValueError as e:  # ConfigError is a ValueError too
            panel.show_problems(str(e))
            self.notify("Training settings: " + "; ".join(str(e).splitlines()), severity="error")
            self.query_one(TabbedContent).active = "train"
            return
        panel.show_problems("")
        if self.app.start_training(self, resume=resume, device=panel.device):
            panel.log("resuming: loading the latest dataset…" if resume else "building the dataset…")
            self.query_one(TabbedContent).active = "train"
        self._sync_controls()

    def action_review(self) -> None:
        if self.last_run_id is None:
            self.notify("No run yet: start a day run (d); its failed koans are reviewed here.")
            return
        self.app.push_screen(ReviewScreen(self.last_run_id), self._review_closed)

    def _review_closed(self, result: tuple[str, str] | None) -> None:
        if not result or result[0] != "rerun":
            return
        corpus = self._corpus()
        koan = corpus.koans.get(result[1]) if corpus else None
        if koan is None:
            self.notify(f"{result[1]} is not in the koan corpus any more.", severity="error")
            return
        self._start_run([koan], "rerun")

    def action_choose_model(self) -> None:
        if self.app.run_busy:
            self.notify("A run is going: stop it first (s), then choose the model.", severity="warning")
            return
        self.app.push_screen(ModelScreen(), self._model_chosen)

    def _model_chosen(self, choice) -> None:
        if choice is None:
            return
        if self._apply(backend=choice.backend, model=choice.model):
            self.notify(f"Model {self.app.serving}: the next day run, eval and training use it.")

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    # ---- controls -----------------------------------------------------------------------------------------

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        action = BUTTONS.get(event.button.id or "")
        if action:
            getattr(self, f"action_{action}")()

    @on(Select.Changed, "#backend")
    def _backend_changed(self, event: Select.Changed) -> None:
        if event.value != self.engine.settings.backend:
            self._apply(backend=event.value)

    @on(Input.Changed, "#model")
    def _model_changed(self, event: Input.Changed) -> None:
        if event.value.strip() != self.engine.settings.model:
            self._apply(model=event.value.strip())

    def _apply(self, **changes) -> bool:
        try:
            self.app.apply_settings(**changes)
        except ConfigError as e:
            self.notify(str(e), severity="error")
            return False
        self.query_one(RunControls).show_settings(self.engine.settings)
        self.query_one(TrainPanel).show_settings(self.engine.settings)
        return True

    @on(Input.Changed, ".train-field")
    @on(Select.Changed, ".train-field")
    def _train_form_changed(self) -> None:
        panel = self.query_one(TrainPanel)
        try:
            self.engine.settings.replace(**panel.read_form())
        except ValueError as e:
            panel.show_problems(str(e))
        else:
            panel.show_problems("")

    @on(msg.KoanSelected)
    def _koan_selected(self, message: msg.KoanSelected) -> None:
        self.app.push_screen(KoanHistoryScreen(message.koan_id))

    # ---- state restored from the store ---------------------------------------------------------------------

    @on(msg.StateLoaded)
    def _state_loaded(self, message: msg.StateLoaded) -> None:
        snap = self.snapshot = message.snapshot
        self.app.update_status(adapter=snap.current_adapter, cycle=snap.cycle)
        queue = self.query_one(KoanQueue)
        if snap.corpus:
            queue.set_families(sorted({k.family for k in snap.corpus.koans.values()}))
        train = self.query_one(TrainPanel)
        train.show_adapter(snap.current_adapter)
        training = self.app.train_busy
        self.query_one(PlotsPanel).show_history(snap, keep_loss=training)
        if not self._restored:
            self._restored = True
            self._restore(snap)
            if not training:
                train.show_curve(snap.loss_curve)
            self.call_after_refresh(self.app.collector.start)   # after the first full frame (priority.py)
        if not self.app.run_busy:
            self._idle_status()

    def _restore(self, snap: StateSnapshot) -> None:
        for warning in snap.warnings:
            self.notify(warning, severity="warning", timeout=10)
        if snap.corpus_error:
            self.notify(snap.corpus_error, title="Koans", severity="error", timeout=15)
        if self.app.run_busy:
            return
        koans = snap.corpus.koans if snap.corpus else {}
        if snap.last_run:
            self.last_run_id = snap.last_run.run_id
            rows = []
            for kid in snap.last_run.koan_ids:
                k, o = koans.get(kid), snap.last_outcomes.get(kid)
                status = ("passed" if o.passed else "failed") if o else "not run"
                rows.append(QueueRow(kid, k.family if k else (o.family if o else "?"),
                                     k.split if k else snap.last_run.split, status,
                                     o.attempts if o else 0))
        else:
            ordered = sorted(koans.values(), key=lambda k: (k.split != "train", k.id))  # training koans first
            rows = [QueueRow(k.id, k.family, k.split) for k in ordered]
        self.query_one(KoanQueue).show(rows)

    # ---- the agent, live ------------------------------------------------------------------------------------

    @on(msg.RunStarted)
    def _run_started(self, message: msg.RunStarted) -> None:
        e = message.event
        self._loaded = False              # its model loads with its first reply (see _token)
        koans = self.snapshot.corpus.koans if self.snapshot and self.snapshot.corpus else {}
        self.query_one(KoanQueue).show([
            QueueRow(kid, koans[kid].family if kid in koans else "?", koans[kid].split if kid in koans else e.split,
                     "queued") for kid in e.koan_ids])
        kind = "re-run" if self.app.run_kind == "rerun" else e.run_kind
        self._run_label = f"{kind} run"
        backend = e.backend.split("+")[0]
        self.app.update_status(backend=e.backend)
        n = len(e.koan_ids)
        self.query_one(Transcript).run_started(f"{kind} run · {n} koan{'s' if n != 1 else ''} · {backend}")
        self._status(f"{self._run_label} · {n} koans · starting")

    @on(msg.KoanStarted)
    def _koan_started(self, message: msg.KoanStarted) -> None:
        e = message.event
        koan = self.snapshot.corpus.koans.get(e.koan_id) if self.snapshot and self.snapshot.corpus else None
        self.query_one(KoanQueue).set_status(e.koan_id, "running", 0)
        self.query_one(Transcript).koan_started(e.koan_id, koan.family if koan else "", e.index, e.total,
                                                koan.buggy if koan else "")
        self._status(f"{self._run_label} · koan {e.index}/{e.total} {e.koan_id} · the model is writing")

    @on(msg.TokenStreamed)
    def _token(self, message: msg.TokenStreamed) -> None:
        e = message.event
        if not self._loaded:
            self._loaded = True
            collector = getattr(self.app, "collector", None)
            if collector is not None:
                collector.loaded()        # the run's model has just loaded: out of every later collection's way
        self.query_one(Transcript).add_tokens(e.koan_id, e.attempt, e.text)

    @on(msg.AttemptChecked)
    def _attempt_checked(self, message: msg.AttemptChecked) -> None:
        e = message.event
        self.query_one(Transcript).attempt_checked(e, self.max_attempts)
        self.query_one(KoanQueue).set_status(e.koan_id, "running", e.attempt)

    @on(msg.KoanFinished)
    def _koan_finished(self, message: msg.KoanFinished) -> None:
        e = message.event
        self.query_one(KoanQueue).set_status(e.koan_id, "passed" if e.passed else "failed", e.attempts)
        counts = self.query_one(KoanQueue).counts()
        self._status(f"{self._run_label} · {e.index}/{e.total} done · {counts.get('passed', 0)} passed · "
                     f"{counts.get('failed', 0)} failed")

    @on(msg.RunFinished)
    def _run_finished(self, message: msg.RunFinished) -> None:
        e = message.event
        self.last_run_id = e.run_id
        self.query_one(Transcript).run_finished(e)
        if e.cancelled:
            self.query_one(KoanQueue).mark_stopped()
        failed = e.total - e.passed
        tail = f" Press r to review the {failed} failure{'s' if failed != 1 else ''}." if failed else ""
        self.notify(f"{self._run_label.capitalize()} finished: {e.passed} of {e.total} passed"
                    f"{' (stopped)' if e.cancelled else ''}.{tail}", timeout=8)
        self.app.refresh_state(self)

    @on(msg.Notice)
    def _notice(self, message: msg.Notice) -> None:
        e = message.event
        self.notify(e.message, severity=SEVERITY.get(e.level, "information"),
                    timeout=15 if e.level == "error" else 6)
        if e.level != "info" or self.app.train_busy:
            self.query_one(TrainPanel).log(Text(f"{e.level}: {e.message}", style="yellow"))

    # ---- the trainer, live -------------------------------------------------------------------------------------

    @on(msg.DatasetReady)
    def _dataset_ready(self, message: msg.DatasetReady) -> None:
        info = message.info
        parts = ", ".join(f"{k} {v}" for k, v in info.by_provenance.items() if v)
        self.query_one(TrainPanel).log(f"dataset {info.hash}: {info.examples} examples ({parts})")

    @on(msg.TrainStarted)
    def _train_started(self, message: msg.TrainStarted) -> None:
        self.query_one(TrainPanel).train_started(message.event)
        self.query_one(PlotsPanel).train_started(message.event)

    @on(msg.TrainStep)
    def _train_step(self, message: msg.TrainStep) -> None:
        self.query_one(TrainPanel).train_step(message.event)
        self.query_one(PlotsPanel).train_step(message.event)

    @on(msg.CheckpointSaved)
    def _checkpoint(self, message: msg.CheckpointSaved) -> None:
        self.query_one(TrainPanel).log(f"checkpoint at step {message.event.step}")

    @on(msg.TrainDone)
    def _train_done(self, message: msg.TrainDone) -> None:
        self.query_one(TrainPanel).train_done(message.event)

    @on(msg.TrainError)
    def _train_error(self, message: msg.TrainError) -> None:
        self.query_one(TrainPanel).log(Text(f"error: {message.event.message}", style="bold red"))

    @on(msg.AdapterSaved)
    def _adapter_saved(self, message: msg.AdapterSaved) -> None:
        meta = message.meta
        if meta.stopped:
            return
        self.query_one(TrainPanel).log(Text(f"adapter {meta.adapter_id} saved; not promoted yet: a cycle's "
                                            "gate (c) promotes it if the frozen eval does not get worse",
                                            style="green"))
        self.notify(f"Adapter {meta.adapter_id} trained ({meta.steps} steps).")
        self.app.refresh_state(self)

    @on(msg.CycleDone)
    def _cycle_done(self, message: msg.CycleDone) -> None:
        r = message.record
        verdict = "promoted" if r.promoted else "kept out"
        self.notify(f"Cycle {r.cycle}: adapter {verdict} ({r.reason}).",
                    severity="information" if r.promoted else "warning", timeout=12)
        self.app.refresh_state(self)

    @on(msg.JobEnded)
    def _job_ended(self, message: msg.JobEnded) -> None:
        self._sync_controls()
        if message.group == "run" and not self.app.run_busy:
            if self.snapshot:
                self._idle_status()
            if not message.ok:
                self.query_one(KoanQueue).mark_stopped()
