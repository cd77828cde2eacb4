"""The failure review: step through the failed koans of a run (n / p), see the broken program and every
attempt's diff, diagnostics and signature; re-run the koan, write a correction, or flag the koan as bad."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from .. import render
from .. import keys
from ..messages import FailuresLoaded, KoanFlagged
from ..state import FailureItem
from ...engine import RunRecord
from .correction_screen import CorrectionScreen


class ReviewScreen(Screen[tuple[str, str] | None]):
    BINDINGS = keys.bindings("review")
    PALETTE = keys.palette("review")

    def __init__(self, run_id: str | None) -> None:
        super().__init__(id="review")
        self.run_id = run_id
        self.run: RunRecord | None = None
        self.items: list[FailureItem] = []
        self.index = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading the failures…", id="review-title")
        yield Static("", id="review-signature")
        with VerticalScroll(id="review-scroll"):
            yield Static("", id="review-body")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "failure review"
        self.app.load_failures(self.run_id, self)

    @property
    def item(self) -> FailureItem | None:
        return self.items[self.index] if self.items else None

    @on(FailuresLoaded)
    def _loaded(self, message: FailuresLoaded) -> None:
        self.run, self.items, self.index = message.run, message.items, 0
        if not self.items:
            self.query_one("#review-title", Static).update("No failed koans in this run.")
            self.query_one("#review-body", Static).update(
                Text("Every koan of the run passed (or none has finished yet). Escape goes back.", style="dim"))
            self.notify("No failed koans in this run.")
            return
        self._show()

    def _show(self) -> None:
        item = self.item
        if item is None:
            return
        run = self.run
        where = f"{run.kind} run, cycle {run.cycle}" if run else "? run"
        flag = "  [flagged as bad]" if item.flagged else ""
        self.query_one("#review-title", Static).update(Text.assemble(
            (f"Failure {self.index + 1} of {len(self.items)}", "bold"),
            f" · {item.koan_id} ({item.family}) · {where}",
            (flag, "bold yellow")))
        self.query_one("#review-signature", Static).update(Text.assemble(
            ("signature ", "dim"), (item.outcome.final_signature or "unknown", "bold red"),
            ("  ·  ", "dim"), f"{item.outcome.attempts} attempt{'s' if item.outcome.attempts != 1 else ''}"))
        self.query_one("#review-body", Static).update(render.failure(item))
        self.query_one("#review-scroll", VerticalScroll).scroll_home(animate=False)

    # ---- actions -----------------------------------------------------------------------------------------

    def action_next(self) -> None:
        if self.items and self.index < len(self.items) - 1:
            self.index += 1
            self._show()
        elif self.items:
            self.notify("That was the last failure.")

    def action_previous(self) -> None:
        if self.index > 0:
            self.index -= 1
            self._show()

    def action_rerun(self) -> None:
        if self.item:
            self.dismiss(("rerun", self.item.koan_id))

    def action_correct(self) -> None:
        item = self.item
        if item is None:
            return
        if item.koan is None:
            self.notify(f"{item.koan_id} is not in the corpus: there are no tests to check a fix against.",
                        severity="error")
            return
        self.app.push_screen(CorrectionScreen(item.koan, item.last_code or item.koan.buggy, item.first_prompt))

    def action_flag(self) -> None:
        item = self.item
        if item is None:
            return
        self.app.flag_koan(item.koan_id, f"flagged in the failure review ({item.outcome.final_signature})", self)

    def action_back(self) -> None:
        self.dismiss(None)

    @on(KoanFlagged)
    def _flagged(self, message: KoanFlagged) -> None:
        for item in self.items:
            if item.koan_id == message.koan_id:
                item.flagged = True
        self.notify(f"{message.koan_id} flagged as a bad koan: days skip it; `sleepy koans check` and the report "
                    "list it.")
        self._show()
