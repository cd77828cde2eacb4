"""A koan's history: every episode of it in the store, across runs; pick one to see its code and diagnostics."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from .. import render
from .. import keys
from ...safe_text import terminal_safe
from ..messages import HistoryLoaded


class KoanHistoryScreen(ModalScreen[None]):
    BINDINGS = keys.bindings("koan history")

    def __init__(self, koan_id: str) -> None:
        super().__init__(id="history")
        self.koan_id = koan_id
        self.episodes: list[dict] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="history-dialog"):
            yield Static(Text.assemble((f"History of {self.koan_id}", "bold"), ("  ·  escape closes", "dim")),
                         id="history-title")
            yield DataTable(id="history-table", cursor_type="row")
            with VerticalScroll(id="history-detail-scroll"):
                yield Static("loading…", id="history-detail")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label in ("Run", "Cycle", "Try", "Outcome", "Signature"):
            table.add_column(label, key=label.lower())
        self.app.load_history(self.koan_id, self)

    @on(HistoryLoaded)
    def _loaded(self, message: HistoryLoaded) -> None:
        self.episodes = message.episodes
        table = self.query_one(DataTable)
        for i, e in enumerate(self.episodes):
            style = "green" if e["outcome"] == "pass" else "red"
            # Text, not str: DataTable parses a str cell as markup, and these come from the state files.
            table.add_row(Text(terminal_safe(e["run_id"])), str(e.get("cycle", "")), str(e["attempt"]),
                          Text(terminal_safe(e["outcome"].replace("_", " ")), style=style),
                          Text(terminal_safe(e.get("signature") or "")), key=str(i))
        if not self.episodes:
            self.query_one("#history-detail", Static).update(
                Text(f"{self.koan_id} has not been tried yet.", style="dim"))
        else:
            table.focus()
            self._show(0)

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key.value is not None:
            self._show(int(event.row_key.value))

    def _show(self, i: int) -> None:
        e = self.episodes[i]
        parts = [render.heading(f"{e['run_id']} · attempt {e['attempt']}")]
        parts.append(render.code_block(e["code"]) if e.get("code") else Text("The reply held no Rust code.",
                                                                             style="yellow"))
        parts.append(render.outcome(e["outcome"], e.get("signature")))
        parts.append(render.diagnostics(e.get("diagnostics", [])))
        self.query_one("#history-detail", Static).update(Group(*parts))

    def action_close(self) -> None:
        self.dismiss(None)
