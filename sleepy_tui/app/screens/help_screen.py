"""`?`: what the app does and every key, for someone who has not read the docs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Markdown

from .. import keys

HELP = """\
# sleepy: a small model learns Rust from its own mistakes

**Day**: the model tries each training *koan* (a small broken Rust program). rustc and the koan's tests
check every attempt; the compiler's errors go into the next attempt (up to the attempt limit).
**Sleep**: a LoRA adapter is trained on the verified fixes. **Eval**: the model tries the frozen eval set,
never trained on. **Gate**: the new adapter is promoted only if the eval does not get worse.

{keys}

The transcript follows the action; scroll up to read and it stops following, scroll to the bottom to follow
again.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = keys.bindings("help")

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog"):
            yield Markdown(HELP.format(keys=keys.help_table()))

    def action_close(self) -> None:
        self.dismiss(None)
