"""Write a correction for a failed koan. It is checked with rustc and the koan's tests; only a passing fix is
stored (store.add_correction) and so goes into the next training dataset."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static, TextArea
from textual.widgets.text_area import LanguageDoesNotExist

from ...koans import Koan
from ...safe_text import terminal_safe
from .. import render
from .. import keys
from ..messages import CorrectionChecked, JobEnded


def rust_editor(code: str) -> TextArea:
    """A code editor, highlighted as Rust where tree-sitter has the grammar, plain text otherwise."""
    try:
        editor = TextArea.code_editor(code, language="rust", id="correction-editor")
    except LanguageDoesNotExist:
        editor = TextArea.code_editor(code, id="correction-editor")
    return editor


class CorrectionScreen(ModalScreen[bool]):
    BINDINGS = keys.bindings("fix editor")

    def __init__(self, koan: Koan, code: str, prompt: list[dict]) -> None:
        super().__init__(id="correction")
        self.koan, self.code, self.prompt = koan, code, prompt

    def compose(self) -> ComposeResult:
        with Vertical(id="correction-dialog"):
            yield Static(Text.assemble((f"Fix {terminal_safe(self.koan.id)}", "bold"),
                                       f" · {terminal_safe(self.koan.title)}",
                                       ("  ·  ctrl+s check & save · escape cancel", "dim")), id="correction-title")
            yield rust_editor(self.code)
            with VerticalScroll(id="correction-result-scroll"):
                yield Static(Text("A passing fix (rustc + the koan's tests) goes into the next training dataset.",
                                  style="dim"), id="correction-result")
            with Horizontal(id="correction-buttons"):
                yield Button("Check & save", id="correction-submit", variant="primary", compact=True)
                yield Button("Cancel", id="correction-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def action_submit(self) -> None:
        code = self.query_one(TextArea).text
        if not code.strip():
            self.notify("The fix is empty.", severity="warning")
            return
        self.query_one("#correction-submit", Button).disabled = True
        self.query_one("#correction-result", Static).update(Text("checking with rustc and the koan's tests…"))
        self.app.check_correction(self.koan, code, self.prompt, self)

    def action_cancel(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed, "#correction-submit")
    def _submit_pressed(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#correction-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    @on(CorrectionChecked)
    def _checked(self, message: CorrectionChecked) -> None:
        if message.passed:
            self.notify(f"Correction for {message.koan_id} passes its tests and is saved: it goes into the next "
                        "training dataset.", timeout=8)
            self.dismiss(True)
            return
        self.query_one("#correction-submit", Button).disabled = False
        reason = message.outcome.replace("_", " ") + (f" ({message.signature})" if message.signature else "")
        self.notify(f"Correction refused: {reason}. Fix it and press ctrl+s again.", severity="error", timeout=10)
        parts = [render.outcome(message.outcome, message.signature), render.diagnostics(message.diagnostics)]
        if message.output and message.outcome != "compile_error":
            parts.append(Text(terminal_safe(message.output[-1500:]), style="dim"))   # the test binary's output
        self.query_one("#correction-result", Static).update(Group(*parts))

    @on(JobEnded)
    def _job_ended(self, message: JobEnded) -> None:
        if not message.ok:  # the check itself failed (e.g. no rustc); the app already said why
            self.query_one("#correction-submit", Button).disabled = False
            self.query_one("#correction-result", Static).update(Text(terminal_safe(message.error), style="red"))
