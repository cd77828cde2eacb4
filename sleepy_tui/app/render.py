"""Rich renderables for what the agent did: code, diagnostics, diffs, outcomes. Pure functions, no widgets.

The transcript and the failure review draw with the same helpers, so an attempt looks the same in both.
Everything they show came from the model, rustc, a test binary or a koan file: it becomes `Text`, never markup,
and passes `terminal_safe` first (Rich keeps ESC in a Text, and the terminal would act on it).
"""

from __future__ import annotations

import difflib
import re

from rich.console import Group, RenderableType
from rich.rule import Rule
from rich.syntax import Syntax
from rich.text import Text

from ..safe_text import terminal_safe

LEVEL_STYLES = {"error": "bold red", "warning": "bold yellow", "note": "cyan", "help": "green",
                "failure-note": "cyan"}
# rustc names the checked file by its sandbox path (a random temp folder): show just the file name.
_SANDBOX_FILE = re.compile(r"\S*[\\/](main\.rs)")
_HEADER = re.compile(r"^(error|warning|note|help)(\[\w+\])?:")
_POINTERS = re.compile(r"[\^]+|(?<=\s)-{2,}(?=\s|$)")


def clean_paths(text: str) -> str:
    return _SANDBOX_FILE.sub(r"\1", terminal_safe(text))


def code_block(code: str) -> RenderableType:
    """Rust with syntax highlighting (Pygments through Rich; unknown lexers fall back to plain text)."""
    return Syntax(terminal_safe(code).rstrip("\n") or " ", "rust", theme="ansi_dark", line_numbers=True, word_wrap=True,
                  background_color="default")


def diagnostic(d: dict) -> RenderableType:
    """rustc's rendered diagnostic, its headers and line pointers coloured by level.

    Headers (`error[E0382]: ...`, `note: ...`) wrap; the source excerpts under them do not (wrapping would
    break the ^^^ pointers under the code), so their long lines end in an ellipsis."""
    level = d.get("level", "error")
    style = LEVEL_STYLES.get(level.split(":")[0], "bold")
    lines = clean_paths(d.get("rendered") or d.get("message") or "").rstrip().splitlines() or [""]
    parts: list[RenderableType] = []
    excerpt: Text | None = None
    for line in lines:
        head = _HEADER.match(line)
        if head:
            parts.append(Text(line, style=LEVEL_STYLES.get(head.group(1), style)))
            excerpt = None
            continue
        if excerpt is None:
            excerpt = Text(no_wrap=True, overflow="ellipsis")
            parts.append(excerpt)
        else:
            excerpt.append("\n")
        part = Text(line)
        if line.lstrip().startswith(("-->", "= ")):
            part.stylize("dim")
        for m in _POINTERS.finditer(line):
            part.stylize(style, m.start(), m.end())
        excerpt.append_text(part)
    return Group(*parts)


def diagnostics(diags: list[dict] | tuple[dict, ...]) -> RenderableType:
    shown = [diagnostic(d) for d in diags if d.get("level") != "failure-note"]
    return Group(*shown) if shown else Text("")


def diff(old: str, new: str, old_name: str, new_name: str) -> Text:
    """A unified diff, added lines green and removed lines red."""
    old, new, old_name, new_name = map(terminal_safe, (old, new, old_name, new_name))
    lines = list(difflib.unified_diff(old.strip("\n").splitlines(), new.strip("\n").splitlines(), old_name,
                                      new_name, lineterm="", n=1))
    if not lines:
        return Text(f"(no change from {old_name})", style="dim")
    text = Text()
    for i, line in enumerate(lines):
        style = ("bold" if line.startswith(("---", "+++")) else "green" if line.startswith("+")
                 else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else "")
        text.append(("\n" if i else "") + line, style=style)
    return text


def outcome(outcome: str, signature: str | None) -> Text:
    outcome, signature = terminal_safe(outcome), signature and terminal_safe(signature)
    if outcome == "pass":
        return Text("✓ pass: compiles and passes its tests", style="bold green")
    return Text.assemble(("✗ " + outcome.replace("_", " "), "bold red"),
                         (f"  {signature}" if signature else "", "red"))


def banner(koan_id: str, passed: bool, attempts: int, signature: str | None = None) -> Text:
    koan_id, signature = terminal_safe(koan_id), signature and terminal_safe(signature)
    if passed:
        return Text.assemble((" PASS ", "bold black on green"),
                             f" {koan_id} passed on attempt {attempts}")
    return Text.assemble((" FAIL ", "bold white on red"),
                         f" {koan_id} failed after {attempts} attempt{'s' if attempts != 1 else ''}",
                         (f" · {signature}" if signature else "", "red"))


def heading(text: str) -> Rule:
    return Rule(Text(terminal_safe(text), style="bold"), align="left", style="blue")


def failure(item) -> RenderableType:
    """The failure review's page for one failed koan: the buggy program, then every attempt."""
    parts: list[RenderableType] = []
    buggy = item.koan.buggy if item.koan else ""
    if item.koan:
        parts += [heading(f"{item.koan.title} · the broken program"), code_block(buggy)]
    else:
        parts.append(Text(f"{terminal_safe(item.koan_id)} is no longer in the koan corpus: only its attempts are "
                          "shown.", style="yellow"))
    previous, previous_name = buggy, "buggy"
    for ep in item.episodes:
        parts.append(heading(f"attempt {ep['attempt']} · {ep['outcome'].replace('_', ' ')}"
                             + (f" · {ep['signature']}" if ep.get("signature") else "")))
        code = ep.get("code") or ""
        if not code:
            parts.append(Text("The reply held no Rust code.", style="yellow"))
        elif previous:
            parts.append(diff(previous, code, previous_name, f"attempt {ep['attempt']}"))
        else:
            parts.append(code_block(code))
        if ep.get("diagnostics"):
            parts.append(diagnostics(ep["diagnostics"]))
        if code:
            previous, previous_name = code, f"attempt {ep['attempt']}"
    return Group(*parts)
