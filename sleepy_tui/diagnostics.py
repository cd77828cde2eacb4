"""rustc's JSON diagnostics as records, and the normalized error signature.

A signature names a kind of mistake independent of the koan it happened in:
`E0382:borrow_of_moved_value` is the same signature whichever variable was moved.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Diagnostic:
    level: str            # "error", "warning", "note", ...
    code: str | None      # "E0382" or None
    message: str
    line: int | None      # primary span, 1-based
    column: int | None
    rendered: str

    def to_dict(self) -> dict:
        return asdict(self)


def parse_rustc_json(stderr: str) -> list[Diagnostic]:
    """Parse `--error-format=json` output; lines that are not JSON diagnostics are ignored."""
    out: list[Diagnostic] = []
    for line in stderr.splitlines():
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(d, dict) or "level" not in d or d.get("$message_type", "diagnostic") != "diagnostic":
            continue
        message = d.get("message") or ""
        if d["level"] == "error" and message.startswith("aborting due to"):
            continue
        spans = d.get("spans") or []
        primary = next((s for s in spans if s.get("is_primary")), spans[0] if spans else None)
        out.append(Diagnostic(
            level=d["level"],
            code=(d.get("code") or {}).get("code"),
            message=message,
            line=primary.get("line_start") if primary else None,
            column=primary.get("column_start") if primary else None,
            rendered=(d.get("rendered") or message).rstrip(),
        ))
    return out


def errors(diags: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diags if d.level.startswith("error")]


_BACKTICKED = re.compile(r"`[^`]*`")
_QUOTED = re.compile(r"'[^'\s]{2,}'|\"[^\"]*\"")
_NUMBERS = re.compile(r"\d+")
_NON_WORD = re.compile(r"[^a-z]+")


def normalize_message(message: str) -> str:
    """Lower-case words of a message with identifiers, types, paths and numbers removed."""
    first = message.splitlines()[0] if message else ""
    text = _BACKTICKED.sub(" ", first)
    text = _QUOTED.sub(" ", text)
    text = _NUMBERS.sub(" ", text.lower())
    words = [w for w in _NON_WORD.split(text) if w]
    return "_".join(words[:12]) or "unknown"


def signature(diag: Diagnostic) -> str:
    return f"{diag.code or 'error'}:{normalize_message(diag.message)}"


def compile_signature(diags: list[Diagnostic]) -> str:
    errs = errors(diags)
    return signature(errs[0]) if errs else "compile_error:unknown"


# Test failures: the panic's kind, not its values or the test's name.
_PANIC_KINDS = (
    (re.compile(r"assertion `left (==|!=) right` failed|assertion failed: `\(left (==|!=) right\)`"), "assert_eq"),
    (re.compile(r"assertion failed"), "assert"),
    (re.compile(r"called `Option::unwrap\(\)` on a `None` value"), "unwrap_none"),
    (re.compile(r"called `Result::unwrap\(\)` on an `Err` value"), "unwrap_err"),
    (re.compile(r"index out of bounds"), "index_out_of_bounds"),
    (re.compile(r"attempt to (add|subtract|multiply|negate|divide|shift).*overflow"), "arithmetic_overflow"),
    (re.compile(r"attempt to divide by zero|attempt to calculate the remainder with a divisor of zero"), "divide_by_zero"),
    (re.compile(r"not yet implemented|not implemented"), "todo"),
    (re.compile(r"has overflowed its stack"), "stack_overflow"),
)


def panic_signature(output: str) -> str:
    for pattern, kind in _PANIC_KINDS:
        if pattern.search(output):
            return f"test_failure:{kind}"
    return "test_failure:panic" if "panicked at" in output else "test_failure:unknown"
