"""The koans of the current run with their status; filter by family and split, Enter shows a koan's history."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Select

from ..messages import KoanSelected

STATUS_STYLES = {"queued": "dim", "running": "bold yellow", "passed": "bold green", "failed": "bold red",
                 "stopped": "yellow", "not run": "dim"}


@dataclass
class QueueRow:
    koan_id: str
    family: str
    split: str
    status: str = "not run"
    attempts: int = 0


class KoanQueue(Vertical):
    def __init__(self, *, id: str = "queue") -> None:
        super().__init__(id=id)
        self.rows: dict[str, QueueRow] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(id="queue-filters"):
            # the families of the folder in use (a user's own folder has its own): set when the corpus is loaded
            yield Select([], prompt="all families", id="family-filter", compact=True)
            yield Select([("train", "train"), ("validation", "validation"), ("eval", "eval")], prompt="all splits",
                         id="split-filter", compact=True)
        yield DataTable(id="queue-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        # most useful first: a narrow terminal cuts the columns on the right
        table.add_column("Koan", key="koan")
        table.add_column("Status", key="status", width=10)  # fixed: "running ×5" fits, nothing jumps
        table.add_column("Family", key="family")
        table.add_column("Split", key="split")

    @property
    def family(self) -> str | None:
        value = self.query_one("#family-filter", Select).value
        return None if value is Select.NULL else value

    @property
    def split(self) -> str | None:
        value = self.query_one("#split-filter", Select).value
        return None if value is Select.NULL else value

    def set_families(self, families: list[str]) -> None:
        select = self.query_one("#family-filter", Select)
        current = self.family
        select.set_options([(f, f) for f in families])
        if current in families:
            select.value = current

    def show(self, rows: list[QueueRow]) -> None:
        self.rows = {r.koan_id: r for r in rows}
        self._rebuild()

    def set_status(self, koan_id: str, status: str, attempts: int | None = None) -> None:
        row = self.rows.get(koan_id)
        if row is None:
            return
        row.status = status
        if attempts is not None:
            row.attempts = attempts
        table = self.query_one(DataTable)
        if koan_id in table.rows:
            table.update_cell(koan_id, "status", self._status_cell(row))

    def mark_stopped(self) -> None:
        for row in self.rows.values():
            if row.status == "running":
                self.set_status(row.koan_id, "stopped")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows.values():
            out[row.status] = out.get(row.status, 0) + 1
        return out

    @staticmethod
    def _status_cell(row: QueueRow) -> Text:
        """The status with the attempt count: `failed ×5`."""
        count = f" ×{row.attempts}" if row.attempts else ""
        return Text(row.status + count, style=STATUS_STYLES.get(row.status, ""))

    def _rebuild(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        family, split = self.family, self.split
        for row in self.rows.values():
            if (family and row.family != family) or (split and row.split != split):
                continue
            table.add_row(row.koan_id, self._status_cell(row), row.family.split("_")[0], row.split, key=row.koan_id)

    @on(Select.Changed)
    def _filter_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._rebuild()

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value:
            self.post_message(KoanSelected(event.row_key.value))
