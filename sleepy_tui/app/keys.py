"""Every key of the app, described once: the screens' bindings, the command palette, the buttons' tooltips and
the help screen's table are all read from KEYS, so a key's description can't differ between them."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    key: str                   # textual's key name
    action: str                # the screen's action (action_<name>); "" for a key textual handles itself
    where: str                 # main | queue | review | fix editor | koan history | model picker | help | anywhere
    label: str                 # the footer's word
    title: str                 # the command palette's entry ("": not in the palette)
    description: str           # one line: what it does (palette help, tooltips, the help screen)
    show: bool = True          # in the footer
    priority: bool = False

    @property
    def shown_key(self) -> str:
        return {"question_mark": "?", "escape": "escape", "enter": "Enter"}.get(self.key, self.key)


KEYS: tuple[Key, ...] = (
    Key("d", "day_run", "main", "Day run", "Start a day run",
        "The model tries every training koan (the queue's family filter picks them)"),
    Key("e", "eval_run", "main", "Eval", "Evaluate on the frozen set", "The model tries the frozen eval koans"),
    Key("c", "cycle", "main", "Cycle", "Run a full cycle", "day → sleep (train) → eval → gate"),
    Key("s", "stop", "main", "Stop", "Stop", "Stop the run and the trainer (finished koans and a checkpoint are kept)"),
    Key("t", "train", "main", "Train", "Start training",
        "Build a dataset of verified fixes and train a new adapter"),
    Key("u", "resume_training", "main", "Resume", "Resume training",
        "Continue the stopped training from its last checkpoint", show=False),
    Key("r", "review", "main", "Review", "Review failures", "Step through the failed koans of the last run"),
    Key("m", "choose_model", "main", "Model", "Choose model",
        "The table models: which are pulled, which the next run uses"),
    Key("1", "show_tab('run')", "main", "Run tab", "", "The Run tab: queue and transcript", show=False),
    Key("2", "show_tab('train')", "main", "Train tab", "", "The Train tab: settings, progress, loss", show=False),
    Key("3", "show_tab('plots')", "main", "Plots tab", "", "The Plots tab: pass rate, loss, families", show=False),
    Key("enter", "", "queue", "", "", "The selected koan's history"),
    Key("n", "next", "review", "Next", "Next failure", "The next failed koan"),
    Key("p", "previous", "review", "Previous", "Previous failure", "The previous failed koan"),
    Key("r", "rerun", "review", "Re-run now", "Re-run this koan", "Let the model try this koan again now"),
    Key("e", "correct", "review", "Write a fix", "Write a correction",
        "Fix the koan yourself; a fix that passes becomes training data"),
    Key("f", "flag", "review", "Flag bad koan", "Flag this koan as bad",
        "Mark the koan as broken or unfair: days skip it"),
    Key("escape", "back", "review", "Back", "Back", "Close the failure review"),
    Key("ctrl+s", "submit", "fix editor", "Check & save", "",
        "Check the fix with rustc and the koan's tests; save it if it passes", priority=True),
    Key("escape", "cancel", "fix editor", "Cancel", "", "Close the editor without saving"),
    Key("escape", "close", "koan history", "Close", "", "Close the koan's history"),
    Key("escape", "close", "model picker", "Close", "", "Close the model picker"),
    Key("escape", "close", "help", "Close", "", "Close this help"),
    Key("question_mark", "close", "help", "Close", "", "Close this help", show=False),
    Key("ctrl+p", "", "anywhere", "", "", "The command palette: every action by name"),
    Key("question_mark", "help", "anywhere", "Help", "Help", "Keys and how a cycle works"),
    Key("q", "quit", "anywhere", "Quit", "", "Quit (running work is stopped first)"),
)


def _of(where: str) -> list[Key]:
    return [k for k in KEYS if k.where == where and k.action]


def bindings(where: str) -> list[Binding]:
    return [Binding(k.key, k.action, k.label, show=k.show, priority=k.priority, tooltip=k.description)
            for k in _of(where)]


def palette(where: str) -> list[tuple[str, str, str]]:
    """(title, help, action) for the command palette."""
    return [(k.title, f"{k.description} ({k.shown_key})", k.action) for k in _of(where) if k.title]


def tooltip(where: str, action: str) -> str:
    """A button's tooltip: the description of the key that does the same, and the key."""
    k = next(k for k in _of(where) if k.action == action)
    return f"{k.description} ({k.shown_key})"


def help_table() -> str:
    """The help screen's Markdown table of every key."""
    rows = ["| Key | Where | What |", "|---|---|---|"]
    rows += [f"| `{k.shown_key}` | {k.where} | {k.description} |" for k in KEYS]
    return "\n".join(rows)
