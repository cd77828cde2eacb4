"""`m`: choose the model the next day run, eval and training use, from the model table (models.toml).

Each table model is listed as the embedded backend runs it, with `sleepy models list`'s status (read in the
app's worker: a changed file is hashed, which takes seconds), then each one the settings' Ollama serves. A model
that is not on this machine is not chosen: the screen says the one command that pulls it. The screen dismisses
with the chosen engine.ModelChoice; the main screen applies it to the settings.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from ...engine import ModelChoice
from ...safe_text import terminal_safe
from .. import keys
from ..messages import JobEnded, ModelsLoaded

HINT = "▶ in use · * default · Enter: use it for the next runs, eval and training · escape closes"


def _size(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n else "-"


class ModelScreen(ModalScreen[ModelChoice | None]):
    BINDINGS = keys.bindings("model picker")

    def __init__(self) -> None:
        super().__init__(id="models")
        self.choices: list[ModelChoice] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="model-dialog"):
            yield Static(Text.assemble(("Choose the model", "bold"),
                                       (f"  ·  now {self.app.serving} · adapter {self.app.adapter_label}", "dim")),
                         id="model-title")
            yield DataTable(id="model-table", cursor_type="row")
            yield Static("checking the models… (a file that changed is hashed first)", id="model-detail")
            yield Static(Text(HINT, style="dim"), id="model-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label in ("", "Model", "Backend", "Size", "Status"):
            table.add_column(label, key=label.lower() or "mark")
        table.focus()
        self.app.load_models(self)

    @on(ModelsLoaded)
    def _loaded(self, message: ModelsLoaded) -> None:
        self.choices = message.choices
        table = self.query_one(DataTable)
        for i, c in enumerate(self.choices):
            mark = "▶" if c.in_use else ("*" if c.default else "")
            # Text, not str: DataTable parses a str cell as markup, and a status may quote a path
            table.add_row(mark, Text(c.model), c.backend, _size(c.size),
                          Text(terminal_safe(c.state), style="green" if c.ready else "yellow"), key=str(i))
        current = next((i for i, c in enumerate(self.choices) if c.in_use), 0)
        if self.choices:
            table.move_cursor(row=current)
            self._show(current)
        else:
            self._detail(Text("The model table is empty.", style="yellow"))

    @on(JobEnded)
    def _job_ended(self, message: JobEnded) -> None:
        if not message.ok:
            self._detail(Text(f"Could not read the models: {message.error}", style="bold red"))

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key.value is not None:
            self._show(int(event.row_key.value))

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is None:
            return
        choice = self.choices[int(event.row_key.value)]
        if choice.ready:
            self.dismiss(choice)
            return
        self._show(int(event.row_key.value), refused=True)
        self.notify(f"{choice.name} is {choice.state}: run `{choice.fix}`, then choose it again.",
                    title="Model not on this machine", severity="warning", timeout=10)

    def _show(self, i: int, refused: bool = False) -> None:
        c = self.choices[i]
        line = Text(f"{c.title} · {c.backend} · {terminal_safe(c.state)}")
        if c.default:
            line.append(" · the default embedded model", style="dim")
        if not c.ready:
            line.append(f"\nrun `{c.fix}` first", style="bold red" if refused else "yellow")
        self._detail(line)

    def _detail(self, text: Text) -> None:
        self.query_one("#model-detail", Static).update(text)

    def action_close(self) -> None:
        self.dismiss(None)
