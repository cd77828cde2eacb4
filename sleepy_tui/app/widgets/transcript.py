"""The live transcript: the model's reply as it streams, the extracted code, what rustc said, the diff
between attempts, and a PASS/FAIL banner per koan.

It follows the action while the view is at the bottom and stops following when the user scrolls up
(scrolling back to the bottom, or End, follows again). Completed lines go to a RichLog (bounded, so a long
day does not grow without limit); the line being streamed shows right under it until its newline arrives.
What the model streams is shown as text: never parsed as markup, its control characters made visible.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import RichLog, Static

from .. import render
from ... import events as ev
from ...safe_text import terminal_safe

STREAM_REFRESH_S = 0.08   # streamed tokens are drawn at most this often
LIVE_MAX_ROWS = 3         # the live line's max-height in app.tcss


class Transcript(VerticalScroll):
    def __init__(self, *, id: str = "transcript", max_lines: int = 5000) -> None:
        super().__init__(id=id)
        self.max_lines = max_lines
        self.following = True
        self._stream_key: tuple[str, int] | None = None
        self._partial = ""
        self._live_rows = 0     # the live line's height when it was last laid out
        self._pending = ""      # streamed text not drawn yet: drawn in batches, not per token (each draw re-lays out)
        self._last_code: dict[str, tuple[str, str]] = {}   # koan -> (name, code) to diff the next attempt against

    def compose(self) -> ComposeResult:
        yield RichLog(id="transcript-log", wrap=True, min_width=20, max_lines=self.max_lines, auto_scroll=False)
        yield Static("", id="transcript-live")

    def on_mount(self) -> None:
        self.set_interval(STREAM_REFRESH_S, self._drain)

    @property
    def log_widget(self) -> RichLog:
        return self.query_one("#transcript-log", RichLog)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self.following = new >= self.max_scroll_y  # the user scrolled up: stop following until back down

    def write(self, renderable, *, expand: bool = False) -> None:
        self.log_widget.write(renderable, expand=expand, scroll_end=False)
        self._follow()

    def _follow(self) -> None:
        if self.following:
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True)

    def plain_text(self) -> str:
        """Everything shown, as plain text (for tests and copying)."""
        lines = [strip.text for strip in self.log_widget.lines]
        live = self._partial + self._pending
        return "\n".join(lines + ([live] if live else []))

    # ---- what the agent does ------------------------------------------------------------------------------

    def intro(self, text: str) -> None:
        self.write(Text(text, style="dim italic"))

    def run_started(self, title: str) -> None:
        self._flush()
        self._last_code.clear()
        self.write(render.heading(title), expand=True)

    def koan_started(self, koan_id: str, family: str, index: int, total: int, buggy: str = "") -> None:
        self._flush()
        self.write(Text.assemble((f"▶ {terminal_safe(koan_id)}", "bold"),
                                 f"  {terminal_safe(family)} · koan {index} of {total}"))
        if buggy:
            self._last_code[koan_id] = ("buggy", buggy)

    def add_tokens(self, koan_id: str, attempt: int, text: str) -> None:
        if (koan_id, attempt) != self._stream_key:
            self._flush()
            self._stream_key = (koan_id, attempt)
            self.write(Text(f"attempt {attempt} · the model replies:", style="bold cyan"))
        self._pending += terminal_safe(text)

    def _drain(self) -> None:
        """Draw the text streamed since the last frame: complete lines in one write, the rest as the live line."""
        if not self._pending:
            return
        self._partial += self._pending
        self._pending = ""
        *lines, self._partial = self._partial.split("\n")
        if lines:
            self.write(Text("\n".join(lines), style="dim"))
        self._show_live()

    def attempt_checked(self, e: ev.AttemptChecked, max_attempts: int) -> None:
        self._flush()
        self._stream_key = None
        if e.code:
            self.write(Text("extracted code:", style="bold"))
            self.write(render.code_block(e.code))
            previous = self._last_code.get(e.koan_id)
            if previous:
                self.write(Text(f"diff from {previous[0]}:", style="bold"))
                self.write(render.diff(previous[1], e.code, previous[0], f"attempt {e.attempt}"))
            self._last_code[e.koan_id] = (f"attempt {e.attempt}", e.code)
        else:
            self.write(Text("the reply held no Rust code", style="yellow"))
        self.write(render.outcome(e.outcome, e.signature))
        for d in e.diagnostics:
            if d.get("level") != "failure-note":
                self.write(render.diagnostic(d))
        if e.outcome == "pass":
            self.write(render.banner(e.koan_id, True, e.attempt), expand=True)
        elif e.attempt >= max_attempts:
            self.write(render.banner(e.koan_id, False, e.attempt, e.signature), expand=True)

    def run_finished(self, e: ev.RunFinished) -> None:
        self._flush()
        note = " · stopped; finished koans are saved" if e.cancelled else ""
        self.write(render.heading(f"run finished: {e.passed} of {e.total} passed{note}"), expand=True)

    # ---- the line being streamed ----------------------------------------------------------------------------

    def _show_live(self) -> None:
        live = self.query_one("#transcript-live", Static)
        text = Text("▌ " + self._partial, style="dim") if self._partial else Text("")
        width = live.content_region.width
        rows = min(LIVE_MAX_ROWS, len(text.wrap(self.app.console, width))) if text and width > 0 else 0
        # a new layout only when the live line's height changes: a layout arranges the whole screen and leaves
        # its old arrangement to the garbage collector, and tokens arrive a dozen times a second
        live.update(text, layout=rows != self._live_rows or width <= 0)
        self._live_rows = rows
        self._follow()

    def _flush(self) -> None:
        self._drain()
        if self._partial:
            self.write(Text(self._partial, style="dim"))
            self._partial = ""
        self._show_live()
