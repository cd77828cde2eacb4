"""`?`: what the app does and every key, for someone who has not read the docs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# sleepy: a small model learns Rust from its own mistakes

**Day**: the model tries each training *koan* (a small broken Rust program). rustc and the koan's tests
check every attempt; the compiler's errors go into the next attempt (up to the attempt limit).
**Sleep**: a LoRA adapter is trained on the verified fixes. **Eval**: the model tries the frozen eval set,
never trained on. **Gate**: the new adapter is promoted only if the eval does not get worse.

| Key | Where | What |
|---|---|---|
| `d` | main | start a day run (the queue's family filter picks the koans) |
| `e` | main | evaluate on the frozen set |
| `c` | main | a full cycle: day → sleep → eval → gate |
| `s` | main | stop the run and the trainer (finished koans are kept) |
| `t` / `u` | main | start training / resume the stopped training |
| `r` | main | review the failed koans of the last run |
| `m` | main | choose the model: the table models, which are pulled, the one in use |
| `1` `2` `3` | main | Run, Train and Plots tabs |
| `Enter` | queue | the selected koan's history |
| `n` / `p` | review | next / previous failure |
| `r` `e` `f` | review | re-run the koan now, write a fix, flag the koan as bad |
| `ctrl+s` | fix editor | check the fix with rustc and save it if it passes |
| `ctrl+p` | anywhere | the command palette: every action by name |
| `q` | anywhere | quit (running work is stopped first) |

The transcript follows the action; scroll up to read and it stops following, scroll to the bottom to follow
again. Press `escape` to close this help.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "close", "Close"), Binding("question_mark", "close", "Close", show=False)]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog"):
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
