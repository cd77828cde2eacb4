"""`sleepy koans import rustlings PATH`: a local checkout of the rustlings exercises as a koan folder.

An exercise becomes a koan when it has a `#[cfg(test)] mod tests` and a reference solution whose code differs
from the exercise outside the tests (where the fix is in the tests, the model, which sees only the program,
could not make it). The koan's `buggy` is the exercise without its tests module, `solution` the solution
without its own, `tests` the exercise's test functions (combine() wraps them in `mod tests { use super::*; }`
again), `family` the topic (`03_if` -> `if`), `hint` the one in info.toml. The sandbox decides
`expected_error`: the rustc code the exercise fails with first, or `test_failure` when it compiles and fails a
test; an exercise that passes as it is, or whose solution does not pass, is skipped with the reason.

rustlings is MIT-licensed (https://github.com/rust-lang/rustlings); the folder says so in its README.md and
keeps the checkout's LICENSE next to it.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import atomic
from .diagnostics import errors
from .koans import TEST_FAILURE, KoanError, parse_koan
from .rust_lexer import tokenize
from .safe_text import KOAN_MAX_BYTES, read_regular_file
from .sandbox import Sandbox

SOURCE_URL = "https://github.com/rust-lang/rustlings"
_TOPIC_NUMBER = re.compile(r"^\d+_")
_NAME = re.compile(r"[A-Za-z0-9_]{1,40}")


@dataclass(frozen=True)
class Exercise:
    name: str       # "if1"
    topic: str      # "03_if", its folder under exercises/ and solutions/
    hint: str = ""


@dataclass
class ImportReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)      # (exercise, why)
    kinds: dict[str, int] = field(default_factory=dict)               # expected_error -> koans


def split_tests(source: str) -> tuple[str, str] | None:
    """(the program without its `#[cfg(test)] mod tests { ... }`, the module's body without `use super::*;`),
    or None when there is no such module. Decided on tokens, so braces in strings and comments don't count."""
    toks = tokenize(source)
    texts = [t.text for t in toks]
    pattern = ["#", "[", "cfg", "(", "test", ")", "]", "mod", "tests", "{"]
    for i in range(len(toks) - len(pattern) + 1):
        if texts[i:i + len(pattern)] != pattern:
            continue
        depth, j = 0, i + len(pattern) - 1
        for j in range(i + len(pattern) - 1, len(toks)):
            depth += {"{": 1, "}": -1}.get(texts[j], 0)
            if depth == 0:
                break
        if depth != 0:
            return None
        lines = source.splitlines()
        first, open_line, close = toks[i].line, toks[i + len(pattern) - 1].line, toks[j].line
        if open_line == close:         # `mod tests { }` on one line: nothing to keep
            return None
        body = [ln for ln in lines[open_line:close - 1] if ln.strip() not in ("use super::*;",)]
        program = "\n".join(lines[:first - 1] + lines[close:]).strip("\n") + "\n"
        return program, "\n".join(body).strip("\n") + "\n"
    return None


def same_code(a: str, b: str) -> bool:
    """The same program, comments and layout aside."""
    return [(t.kind, t.text) for t in tokenize(a)] == [(t.kind, t.text) for t in tokenize(b)]


def info_path(root: Path) -> Path | None:
    for p in (root / "info.toml", root / "rustlings-macros" / "info.toml"):   # a user's checkout, the repository
        if p.is_file():
            return p
    return None


def exercises(root: Path) -> list[Exercise]:
    """The exercises info.toml lists, in its order (without info.toml: every exercises/<topic>/*.rs, no hints)."""
    info = info_path(root)
    if info is None:
        return [Exercise(p.stem, p.parent.name) for p in sorted((root / "exercises").glob("*/*.rs"))]
    try:
        data = tomllib.loads(read_regular_file(info, KOAN_MAX_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise KoanError(f"{info}: cannot read: {e}") from None
    out = []
    for e in data.get("exercises") or []:
        if isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("dir", ""), str):
            out.append(Exercise(e["name"], e.get("dir", ""), str(e.get("hint") or "").strip()))
    return out


def _read(path: Path) -> str:
    return read_regular_file(path, KOAN_MAX_BYTES).decode("utf-8")


def _lit(s: str) -> str:
    s = s.strip("\n")
    if "'''" in s or s.endswith("'"):
        return json.dumps(s + "\n", ensure_ascii=False)        # a JSON string is a valid TOML basic string
    return "'''\n" + s + "\n'''"


def koan_text(kid: str, family: str, title: str, expected_error: str, buggy: str, solution: str, tests: str,
              hint: str) -> str:
    b = lambda s: json.dumps(s, ensure_ascii=False)    # noqa: E731
    lines = [f"id = {b(kid)}", f"family = {b(family)}", f"title = {b(title)}", f"expected_error = {b(expected_error)}"]
    if hint:
        lines.append(f"hint = {b(hint)}")
    lines += [f"buggy = {_lit(buggy)}", f"solution = {_lit(solution)}", f"tests = {_lit(tests)}", ""]
    return "\n".join(lines)


def _candidate(root: Path, ex: Exercise) -> tuple[str, str, str] | str:
    """(buggy, solution, tests) of an exercise, or why it is not a koan."""
    if not (_NAME.fullmatch(ex.name) and _NAME.fullmatch(ex.topic or "x")):
        return "not a plain exercise name"
    src, sol = root / "exercises" / ex.topic / f"{ex.name}.rs", root / "solutions" / ex.topic / f"{ex.name}.rs"
    try:
        exercise = _read(src)
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read {src.relative_to(root)}: {getattr(e, 'strerror', None) or e}"
    try:
        solution = _read(sol)
    except FileNotFoundError:
        return "no reference solution"
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read {sol.relative_to(root)}: {getattr(e, 'strerror', None) or e}"
    parts = split_tests(exercise)
    if parts is None:
        return "no #[cfg(test)] mod tests"
    buggy, tests = parts
    if "#[test]" not in tests:
        return "its tests module has no #[test] function"
    fixed = split_tests(solution)
    fixed_code = fixed[0] if fixed else solution
    if same_code(buggy, fixed_code):
        return "the solution differs only in the tests (the model sees the program alone)"
    return buggy, fixed_code, tests


def import_rustlings(root: Path, out: Path, sandbox: Sandbox, *,
                     on_line: Callable[[str], None] = print) -> ImportReport:
    """Convert the checkout at `root` into koans under `out/<family>/rl_<name>.toml`; one line per skipped
    exercise goes to `on_line`."""
    root, out = Path(root), Path(out)
    if not (root / "exercises").is_dir():
        raise KoanError(f"{root}: not a rustlings checkout (no exercises/ folder)")
    report = ImportReport()
    found: list[tuple[Exercise, tuple[str, str, str]]] = []
    for ex in exercises(root):
        c = _candidate(root, ex)
        if isinstance(c, str):
            report.skipped.append((ex.name, c))
        else:
            found.append((ex, c))
    checks = sandbox.check_many([(code, tests) for _, (buggy, sol, tests) in found for code in (buggy, sol)])
    for n, (ex, (buggy, solution, tests)) in enumerate(found):
        broken, fixed = checks[2 * n], checks[2 * n + 1]
        why, expected = "", ""
        if broken.outcome == "compile_error":
            codes = [d.code for d in errors(broken.diagnostics)]
            if not codes or not codes[0] or not re.fullmatch(r"E\d{4}", codes[0]):
                why = f"fails to compile without a rustc error code ({broken.signature})"
            expected = codes[0] if codes else ""
        elif broken.outcome == "test_failure" and broken.tests_failed:
            expected = TEST_FAILURE
        elif broken.passed:
            why = "the exercise already passes its tests"
        else:
            why = f"the exercise ends in {broken.outcome} ({broken.signature}), not a failed test"
        if not why and not fixed.passed:
            why = f"the reference solution does not pass the exercise's tests ({fixed.signature or fixed.outcome})"
        if why:
            report.skipped.append((ex.name, why))
            continue
        family = _TOPIC_NUMBER.sub("", ex.topic) or ex.topic or "rustlings"
        kid = f"rl_{ex.name}"
        path = out / family / f"{kid}.toml"
        text = koan_text(kid, family, f"rustlings {ex.name} ({family.replace('_', ' ')})", expected, buggy,
                         solution, tests, ex.hint)
        parse_koan(text, path, None)        # what is written loads back
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, text)
        report.written.append(path)
        report.kinds[expected] = report.kinds.get(expected, 0) + 1
    for name, why in report.skipped:
        on_line(f"skipped {name}: {why}")
    if report.written:
        _write_notice(root, out, report)
    return report


def _write_notice(root: Path, out: Path, report: ImportReport) -> None:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.kinds.items()))
    atomic.write_text(out / "README.md",
        "# Koans converted from rustlings\n\n"
        f"Source: rustlings ({SOURCE_URL}): the exercises, solutions and hints\n"
        "of a local checkout, converted by `sleepy koans import rustlings`.\n\n"
        "Licence: MIT, copyright the rustlings authors. The checkout's LICENSE is kept\n"
        "next to this file; it applies to the exercise code in these koans.\n\n"
        f"{len(report.written)} koans ({kinds}); {len(report.skipped)} exercises skipped.\n")
    license_text = ""
    for name in ("LICENSE", "LICENSE.md", "LICENSE-MIT"):
        if (root / name).is_file():
            license_text = _read(root / name)
            break
    atomic.write_text(out / "LICENSE", license_text or "MIT License: rustlings (https://github.com/rust-lang/rustlings); "
                                                 "the checkout had no LICENSE file to copy.\n")
