"""What the agent says to the model, and how it reads the answer."""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from importlib import resources

from .diagnostics import Diagnostic, errors
from .koans import Koan

SYSTEM = (
    "You are an expert Rust programmer. You fix small Rust programs so that they compile and pass their tests. "
    "Change as little as possible and keep every public function signature the tests use. "
    "Reply with the complete fixed program in one ```rust code block, without the tests and without explanation."
)
MAX_DIAGNOSTIC_CHARS = 1500


@dataclass(frozen=True)
class Hint:
    code: str
    text: str
    contains: str = ""


@functools.cache
def hints() -> tuple[Hint, ...]:
    data = tomllib.loads(resources.files("sleepy_tui").joinpath("hints.toml").read_text())
    return tuple(Hint(code=h["code"], text=h["text"], contains=h.get("contains", "")) for h in data["hint"])


def hints_for(diags: list[Diagnostic], signature: str | None = None) -> list[str]:
    """The first matching hint per distinct error (most specific row first, as ordered in the table)."""
    out: list[str] = []
    keys = [(d.code or "", d.message) for d in errors(diags)]
    if signature == "no_code":
        keys.append(("no_code", ""))
    for code, message in keys:
        for h in hints():
            if h.code == code and (not h.contains or h.contains in message):
                if h.text not in out:
                    out.append(h.text)
                break
    return out[:3]


def render_diagnostics(diags: list[Diagnostic], limit: int = MAX_DIAGNOSTIC_CHARS) -> str:
    text = "\n\n".join(d.rendered for d in errors(diags))
    if len(text) > limit:
        text = text[:limit].rstrip() + "\n... (more errors trimmed)"
    return text


def build_messages(koan: Koan, *, buggy_diagnostics: list[Diagnostic] | None = None,
                   previous: str | None = None, previous_diagnostics: list[Diagnostic] | None = None,
                   previous_failure: str = "", previous_signature: str | None = None,
                   repeat_of: int | None = None) -> list[dict]:
    """The chat for one attempt: the task and the broken program with its errors; on a retry, the previous
    attempt and what the compiler or the tests said about it, plus hints for those errors. `repeat_of` says
    that the previous reply was an exact repeat (0: of the broken program, n: of attempt n)."""
    parts = [f"Task: {koan.title}", "", "This Rust program does not compile or fails its tests:",
             "```rust", koan.buggy.strip(), "```"]
    latest = previous_diagnostics if previous is not None or previous_signature else buggy_diagnostics
    if previous is None and previous_signature != "no_code":
        errs = render_diagnostics(buggy_diagnostics or [])
        if errs:
            parts += ["", "The compiler says:", "```", errs, "```"]
    elif repeat_of == 0:
        parts += ["", "Your previous reply was this broken program itself, unchanged. Change the code."]
        errs = render_diagnostics(previous_diagnostics or [])
        if errs:
            parts += ["", "It still fails to compile:", "```", errs, "```"]
        elif previous_failure:
            parts += ["", "It still fails its tests:", "```", previous_failure.strip()[-MAX_DIAGNOSTIC_CHARS:], "```"]
    else:
        if previous:
            parts += ["", "Your previous attempt:", "```rust", previous.strip(), "```"]
        if repeat_of:
            parts += ["", f"It is exactly your attempt {repeat_of} again, which already failed like this. "
                          "Write a different fix."]
        errs = render_diagnostics(previous_diagnostics or [])
        if errs:
            parts += ["", "It failed to compile:", "```", errs, "```"]
        elif previous_failure:
            parts += ["", "It failed its tests:", "```", previous_failure.strip()[-MAX_DIAGNOSTIC_CHARS:], "```"]
        elif previous_signature == "no_code":
            parts += ["", "Your previous reply contained no Rust code."]
    tips = hints_for(latest or [], previous_signature)
    if tips:
        parts += ["", "Hints:"] + [f"- {t}" for t in tips]
    parts += ["", "Reply with the complete fixed program in one ```rust code block."]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_RUSTISH = re.compile(r"\b(fn|struct|enum|impl|use|let|pub|trait|mod)\b")
_TEST_MODULE = re.compile(r"\n?\s*#\[cfg\(test\)\]\s*mod\s+tests\b.*", re.S)


def extract_code(reply: str) -> str:
    """The candidate program in a reply: the best fenced block, else the whole reply if it looks like Rust.

    Returns "" when there is no code. A test module the model echoed back is cut off (the checker adds the
    koan's own tests).
    """
    if not isinstance(reply, str):
        return ""
    reply = reply.replace("\r\n", "\n").replace("\x00", "")
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(reply)]
    rust = [b for lang, b in blocks if lang in ("rust", "rs")]
    others = [b for lang, b in blocks if lang not in ("rust", "rs") and _RUSTISH.search(b)]
    candidates = rust or others
    if candidates:
        code = max(candidates, key=len)
    elif "```" not in reply and _RUSTISH.search(reply) and ("{" in reply):
        code = reply
    else:
        return ""
    code = _TEST_MODULE.sub("\n", code).strip()
    return code + "\n" if _RUSTISH.search(code) else ""
