"""The app: owns the engine and every worker; each screen owns its widgets.

Slow work (the agent, the trainer, store reads, rustc checks) runs in thread workers that are thin wrappers
over engine calls. Workers never touch widgets: they post messages (messages.py) to the screen that asked,
and `@on` handlers there update the UI. Worker failures are handled in one place, `_worker_state_changed`:
it shows the error with its fix and tells the screen that the job ended. The app keeps running.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Iterable

from textual import events, on, work
from textual.app import App, SystemCommand
from textual.message_pump import MessagePump
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from ..engine import AdapterRecord, Engine, EngineError
from ..koans import Koan
from ..priority import QuietCollector, lower_this_thread
from ..safe_text import terminal_safe
from . import keys
from .errors import explain
from .messages import (AdapterSaved, CorrectionChecked, CycleDone, DatasetReady, FailuresLoaded, HistoryLoaded,
                       JobEnded, KoanFlagged, ModelsLoaded, StateLoaded, bridge)
from .screens.help_screen import HelpScreen
from .screens.main_screen import MainScreen
from .state import koan_history, read_failures, read_state

JOB_TITLES = {"run": "Run failed", "train": "Training failed", "state": "Could not read the state",
              "correction": "Correction check failed", "review": "Could not load the failures",
              "history": "Could not load the history", "flag": "Could not flag the koan",
              "models": "Could not read the models"}


class SleepyApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "sleepy"
    BINDINGS = keys.bindings("anywhere")

    def __init__(self, engine: Engine, *, quit_wait_s: float = 5.0) -> None:
        super().__init__()
        self.engine = engine
        self.quit_wait_s = quit_wait_s
        self.cancel_run = threading.Event()
        self.stop_train = threading.Event()
        self.run_kind: str | None = None            # day | eval | rerun | cycle, while a run job is going
        self._targets: dict[Worker, MessagePump] = {}
        self._backend_label = ""                    # what the last run reported (e.g. "embedded:SmolLM2...")
        self._adapter_label = "none"
        self._cycle = 0
        self.collector = QuietCollector()           # full garbage collections between bursts of typing

    def on_mount(self) -> None:
        self.set_interval(0.5, self.collector.tick)

    def on_unmount(self) -> None:
        self.collector.stop()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self.collector.key_pressed()
        await super().on_event(event)

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = True) -> None:
        # Notifications quote errors, file names and what a model or a server said: always plain text with its
        # control characters shown (a stray `[/]` would otherwise raise, `[link=...]` would be a link).
        super().notify(terminal_safe(message), title=terminal_safe(title), severity=severity, timeout=timeout,
                       markup=False)

    def get_default_screen(self) -> Screen:
        return MainScreen(id="main")

    @property
    def main_screen(self) -> MainScreen:
        return self.screen_stack[0]  # the default screen, whatever is pushed on top

    # ---- header: backend:model, adapter, cycle ------------------------------------------------------------

    def update_status(self, *, adapter: AdapterRecord | None | str = "keep", cycle: int | None = None,
                      backend: str | None = None) -> None:
        if adapter != "keep":
            self._adapter_label = adapter.adapter_id if isinstance(adapter, AdapterRecord) else "none"
        if cycle is not None:
            self._cycle = cycle
        if backend is not None:
            self._backend_label = backend.split("+")[0]
        self.sub_title = f"{self.serving} · adapter {self.adapter_label} · cycle {self._cycle}"

    @property
    def serving(self) -> str:
        """backend:model: what the last run reported, else what the settings name."""
        s = self.engine.settings
        return self._backend_label or f"{s.backend}:{s.model or 'default model'}"

    @property
    def adapter_label(self) -> str:
        """The adapter the next run loads: the settings' path (--adapter) wins over the promoted one."""
        s = self.engine.settings
        return f"{Path(s.adapter).name} (--adapter)" if s.adapter else self._adapter_label

    def apply_settings(self, **changes) -> None:
        """Replace the engine's settings (validated; raises ConfigError listing every problem)."""
        new = self.engine.settings.replace(**changes)
        if (new.backend, new.model) != (self.engine.settings.backend, self.engine.settings.model):
            self._backend_label = ""
        self.engine.settings = new
        self.update_status()

    # ---- jobs the screens start ---------------------------------------------------------------------------

    def _busy(self, group: str) -> bool:
        return any(w.group == group and not w.is_finished for w in self.workers)

    @property
    def run_busy(self) -> bool:
        return self._busy("run")

    @property
    def training_busy(self) -> bool:
        """The trainer of the Train tab is running (a cycle's training is not counted)."""
        return self._busy("train")

    @property
    def train_busy(self) -> bool:
        return self._busy("train") or (self.run_kind == "cycle" and self.run_busy)

    def _track(self, worker: Worker, target: MessagePump) -> Worker:
        self._targets[worker] = target
        return worker

    @staticmethod
    def _sink(target: MessagePump):
        def post(event) -> None:  # called on the engine's threads; post_message is thread-safe
            target.post_message(bridge(event))
        return post

    def refresh_state(self, target: MessagePump) -> None:
        self._track(self._load_state(target), target)

    def start_run(self, koans: list[Koan], kind: str, target: MessagePump) -> bool:
        if self.run_busy:
            self.notify("A run is already going: stop it first (s).", severity="warning")
            return False
        self.cancel_run, self.run_kind = threading.Event(), kind
        self._track(self._run_koans(koans, kind, self.cancel_run, target), target)
        return True

    def start_cycle(self, target: MessagePump) -> bool:
        if self.run_busy or self.train_busy:
            self.notify("A cycle runs the agent and the trainer: wait for the current work or stop it (s).",
                        severity="warning")
            return False
        self.cancel_run, self.run_kind = threading.Event(), "cycle"
        self._track(self._run_cycle(self.cancel_run, target), target)
        return True

    def start_training(self, target: MessagePump, *, resume: bool, device: str = "") -> bool:
        if self.train_busy:
            self.notify("The trainer is already running: stop it first (s).", severity="warning")
            return False
        self.stop_train = threading.Event()
        self._track(self._train(resume, device, self.stop_train, target), target)
        return True

    def stop_run(self) -> bool:
        busy = self.run_busy
        if busy:
            self.cancel_run.set()
        return busy

    def stop_training(self) -> bool:
        busy = self._busy("train")
        if busy:
            self.stop_train.set()
        return busy

    def stop_jobs(self) -> bool:
        """Ask every running job to stop; True if something was running."""
        return any([self.stop_run(), self.stop_training()])

    def load_failures(self, run_id: str | None, target: MessagePump) -> None:
        self._track(self._load_failures(run_id, target), target)

    def load_history(self, koan_id: str, target: MessagePump) -> None:
        self._track(self._load_history(koan_id, target), target)

    def check_correction(self, koan: Koan, code: str, prompt: list[dict], target: MessagePump) -> None:
        self._track(self._check_correction(koan, code, prompt, target), target)

    def flag_koan(self, koan_id: str, reason: str, target: MessagePump) -> None:
        self._track(self._flag_koan(koan_id, reason, target), target)

    def load_models(self, target: MessagePump) -> None:
        self._track(self._load_models(target), target)

    # ---- workers: thin wrappers over engine calls; they post, never touch widgets ------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="state")
    def _load_state(self, target: MessagePump) -> None:
        target.post_message(StateLoaded(read_state(self.engine)))

    @work(thread=True, exclusive=True, exit_on_error=False, group="run")
    def _run_koans(self, koans: list[Koan], kind: str, cancel: threading.Event, target: MessagePump) -> None:
        lower_this_thread()  # the model, rustc and their threads yield the CPU to the UI
        self.engine.run_agent(koans, kind=kind, on_event=self._sink(target), cancel=cancel)

    @work(thread=True, exclusive=True, exit_on_error=False, group="run")
    def _run_cycle(self, cancel: threading.Event, target: MessagePump) -> None:
        lower_this_thread()
        record = self.engine.cycle(on_event=self._sink(target), cancel=cancel)
        target.post_message(CycleDone(record))

    @work(thread=True, exclusive=True, exit_on_error=False, group="train")
    def _train(self, resume: bool, device: str, stop: threading.Event, target: MessagePump) -> None:
        lower_this_thread()
        engine = self.engine
        if resume:
            info = engine.latest_dataset()
            if info is None:
                raise EngineError("Nothing to resume: no dataset has been built yet. Press Start (t) to build one.")
        else:
            info = engine.build_dataset()
        target.post_message(DatasetReady(info, resume))
        overrides = {"device": device} if device else {}
        meta = engine.train(info, cycle=engine.current_cycle() + 1, on_event=self._sink(target), stop=stop,
                            resume=resume, fresh=not resume, **overrides)
        target.post_message(AdapterSaved(meta))

    @work(thread=True, exclusive=True, exit_on_error=False, group="review")
    def _load_failures(self, run_id: str | None, target: MessagePump) -> None:
        run, items = read_failures(self.engine, run_id)
        target.post_message(FailuresLoaded(run, items))

    @work(thread=True, exclusive=True, exit_on_error=False, group="history")
    def _load_history(self, koan_id: str, target: MessagePump) -> None:
        target.post_message(HistoryLoaded(koan_id, koan_history(self.engine.store, koan_id)))

    @work(thread=True, exclusive=True, exit_on_error=False, group="correction")
    def _check_correction(self, koan: Koan, code: str, prompt: list[dict], target: MessagePump) -> None:
        lower_this_thread()
        result = self.engine.add_correction(koan, code, prompt)  # the engine stores only a verified fix
        target.post_message(CorrectionChecked(koan.id, result.passed, result.outcome, result.signature,
                                              [d.to_dict() for d in result.diagnostics], result.output))

    @work(thread=True, exclusive=True, exit_on_error=False, group="flag")
    def _flag_koan(self, koan_id: str, reason: str, target: MessagePump) -> None:
        self.engine.flag_koan(koan_id, reason)
        target.post_message(KoanFlagged(koan_id))

    @work(thread=True, exclusive=True, exit_on_error=False, group="models")
    def _load_models(self, target: MessagePump) -> None:
        lower_this_thread()  # it may hash a 1 GB model file
        target.post_message(ModelsLoaded(self.engine.model_choices()))

    # ---- the one place worker outcomes are handled ------------------------------------------------------------

    @on(Worker.StateChanged)
    def _worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if not worker.is_finished:
            return
        error = ""
        if event.state == WorkerState.ERROR:
            error = explain(worker.error)
            self.notify(error, title=JOB_TITLES.get(worker.group, "Error"), severity="error", timeout=15)
        if worker.group == "run":
            self.run_kind = None
        target = self._targets.pop(worker, None)
        if target is not None:
            target.post_message(JobEnded(worker.group, event.state, error))

    # ---- keys, commands, quitting -------------------------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for title, help_text, action in getattr(screen, "PALETTE", ()):
            yield SystemCommand(title, help_text, getattr(screen, f"action_{action}"))
        for title, help_text, action in keys.palette("anywhere"):
            yield SystemCommand(title, help_text, getattr(self, f"action_{action}"))

    async def action_quit(self) -> None:
        """Stop the agent and the trainer, wait for them briefly, flush the store, exit."""
        if self.stop_jobs():
            self.notify("Stopping the run and the trainer; finished koans are kept…", timeout=self.quit_wait_s)
            await _drain([w for w in self.workers if not w.is_finished], self.quit_wait_s)
        await asyncio.to_thread(self.engine.store.flush)
        self.exit(0)


async def _drain(workers: list[Worker], timeout: float) -> None:
    async def one(worker: Worker) -> None:
        try:
            await worker.wait()
        except Exception:  # its failure was already reported
            pass

    if workers:
        await asyncio.wait([asyncio.create_task(one(w)) for w in workers], timeout=timeout)
