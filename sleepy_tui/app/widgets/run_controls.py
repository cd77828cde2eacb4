"""Start a day run, an eval or a full cycle; stop; choose the serving backend and model."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, Select

from ...config import BACKEND_KINDS, Settings
from .. import keys


class RunControls(Horizontal):
    def __init__(self, settings: Settings, *, id: str = "run-controls") -> None:
        super().__init__(id=id)
        self.settings = settings

    def compose(self) -> ComposeResult:
        s = self.settings
        yield Button("Day run", id="day-run", variant="primary", compact=True,
                     tooltip=keys.tooltip("main", "day_run"))
        yield Button("Eval", id="eval-run", compact=True, tooltip=keys.tooltip("main", "eval_run"))
        yield Button("Cycle", id="cycle-run", compact=True, tooltip=keys.tooltip("main", "cycle"))
        yield Button("Stop", id="stop-run", variant="error", compact=True, disabled=True,
                     tooltip=keys.tooltip("main", "stop"))
        yield Button("Review", id="review", compact=True, tooltip=keys.tooltip("main", "review"))
        backends = [b.name for b in BACKEND_KINDS if b.listed or s.backend == b.name]
        yield Label("backend", classes="control-label")
        yield Select([(b, b) for b in backends], value=s.backend, allow_blank=False, id="backend", compact=True)
        yield Label("model", classes="control-label")
        yield Input(s.model, placeholder="backend default", id="model", compact=True)

    def show_settings(self, s: Settings) -> None:
        """The backend and model the settings now name (after the model picker); unchanged fields stay as typed."""
        self.settings = s
        select, model = self.query_one("#backend", Select), self.query_one("#model", Input)
        if select.value != s.backend:
            select.value = s.backend
        if model.value.strip() != s.model:
            model.value = s.model

    def set_busy(self, run_busy: bool, cycle_blocked: bool) -> None:
        for bid in ("#day-run", "#eval-run"):
            self.query_one(bid, Button).disabled = run_busy
        self.query_one("#cycle-run", Button).disabled = run_busy or cycle_blocked
        self.query_one("#stop-run", Button).disabled = not run_busy
        self.query_one("#backend", Select).disabled = run_busy
        self.query_one("#model", Input).disabled = run_busy
