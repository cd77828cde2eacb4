"""What the agent says to the model, and how it reads the answer."""

from __future__ import annotations

import functools
import re
import textwrap
import tomllib
from dataclasses import dataclass
from importlib import resources

from .diagnostics import Diagnostic, errors
from .koans import TEST_FAILURE, Koan, combine
from .rust_lexer import tokenize

SYSTEM = (
    "You are an expert Rust programmer. You fix small Rust programs so that they compile and pass their tests. "
    "Change as little as possible and keep every public function signature the tests use. "
    "Reply with the complete fixed program in one ```rust code block, without the tests and without explanation."
)
MAX_DIAGNOSTIC_CHARS = 1500
MAX_TEST_CONTEXT_CHARS = 1200


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
    elif signature and signature.split(":")[0] == TEST_FAILURE:   # keyed by the signature, else the general row
        keys.append((signature if any(h.code == signature for h in hints()) else TEST_FAILURE, ""))
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


# ---- the test lines an error points into (the model is shown the program, not the tests) ---------------------

_FAILED_THREAD = re.compile(r"thread 'tests::(\w+)'")


def test_functions(tests: str) -> dict[str, tuple[int, int]]:
    """name -> (first, last) line, 1-based within `tests`, of each #[test] function with its attributes."""
    tokens = tokenize(tests)
    out: dict[str, tuple[int, int]] = {}
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.text == "#" and [x.text for x in tokens[i + 1:i + 4]] == ["[", "test", "]"]:
            j = i + 4
            while j < len(tokens) and tokens[j].text != "fn":
                j += 1
            k = j
            while k < len(tokens) and tokens[k].text != "{":
                k += 1
            depth, m = 0, k
            for m in range(k, len(tokens)):
                depth += {"{": 1, "}": -1}.get(tokens[m].text, 0)
                if depth == 0:
                    break
            if j + 1 < len(tokens) and k < len(tokens):
                out.setdefault(tokens[j + 1].text, (t.line, tokens[m].line))
            i = m
        i += 1
    return out


def relevant_tests(koan: Koan, *, code: str | None = None, diagnostics: list[Diagnostic] | None = None,
                   failure: str = "") -> list[str]:
    """The source of the koan's test functions that an error points into: those a failure's output names as
    failed, or those holding a compile error's line (in `code` combined with the tests); for a behaviour-bug
    koan with nothing to go on, its tests in order. Capped at MAX_TEST_CONTEXT_CHARS, whole functions only."""
    tests = koan.tests.strip("\n")          # as combine() places it, below the program
    spans = test_functions(tests)
    lines = tests.splitlines()
    offset = len(combine(code if code is not None else koan.buggy, "#[test]").splitlines()) - 2   # lines above
    wanted: list[str] = []
    if failure:
        wanted = [n for n in dict.fromkeys(_FAILED_THREAD.findall(failure)) if n in spans]
    for d in errors(diagnostics or []):
        if d.line and d.line > offset:
            wanted += [n for n, (a, b) in spans.items() if a <= d.line - offset <= b and n not in wanted]
    if not wanted and not failure and koan.kind == TEST_FAILURE and not errors(diagnostics or []):
        wanted = list(spans)
    out, used = [], 0
    for name in wanted:
        a, b = spans[name]
        text = textwrap.dedent("\n".join(lines[a - 1:b])).strip("\n")
        if out and used + len(text) > MAX_TEST_CONTEXT_CHARS:
            break
        out.append(text if len(text) <= MAX_TEST_CONTEXT_CHARS else text[:MAX_TEST_CONTEXT_CHARS] + "\n    ...")
        used += len(text)
    return out


def _test_context(koan: Koan, *, code: str | None, diagnostics: list[Diagnostic] | None, failure: str) -> list[str]:
    tests = relevant_tests(koan, code=code, diagnostics=diagnostics, failure=failure)
    if not tests:
        return []
    if errors(diagnostics or []):
        head = "The error is in code these tests run:"
    elif failure:
        head = "The failing test:" if len(tests) == 1 else "The failing tests:"
    else:
        head = "It compiles, but fails a test. The tests:"
    return ["", head, "```rust", *tests, "```"]


def build_messages(koan: Koan, *, buggy_diagnostics: list[Diagnostic] | None = None,
                   previous: str | None = None, previous_diagnostics: list[Diagnostic] | None = None,
                   previous_failure: str = "", previous_signature: str | None = None,
                   repeat_of: int | None = None, buggy_failure: str = "") -> list[dict]:
    """The chat for one attempt: the task and the broken program with its errors; on a retry, the previous
    attempt and what the compiler or the tests said about it, plus hints for those errors. `repeat_of` says
    that the previous reply was an exact repeat (0: of the broken program, n: of attempt n). Where the error
    points into the tests, their lines are shown (`buggy_failure`: the broken program's test output, which
    names the failing tests)."""
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
    retry = previous is not None or bool(previous_signature)
    parts += _test_context(koan, code=previous if retry else koan.buggy, diagnostics=latest,
                           failure=previous_failure if retry else buggy_failure)
    first_kind = TEST_FAILURE if not retry and koan.kind == TEST_FAILURE else None
    tips = hints_for(latest or [], previous_signature or first_kind)
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
