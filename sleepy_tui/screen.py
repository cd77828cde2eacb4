"""Refuse, before compiling, candidate programs that use what no koan needs and a forged pass would.

A koan is fixed with plain safe Rust. What the screen refuses is what an adversarial candidate would reach
for to fake a verdict or read the host: `unsafe` and `extern` (foreign calls, `atexit`, static
constructors), inline assembly, link/section/export attributes, `#[path]` modules, the host-reading macros
(`include!`, `include_str!`, `env!`, ...) however they are named or imported, the process, environment,
filesystem, network and OS modules of std, `macro_rules!` (it can splice any of these together or shadow
`assert_eq!`), a renaming `use` that shadows the test macros, and hand-written comparison impls (`impl
PartialEq`, which could make every `assert_eq!` succeed). It decides on tokens (rust_lexer.py), so words in
comments and strings never count. The sandbox adds `-F unsafe_code` and its jail behind this.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rust_lexer import Token, tokenize


@dataclass(frozen=True)
class Refusal:
    signature: str   # "forbidden:<what>"
    message: str     # one line, for the model and the user
    line: int


# identifier -> what it is, refused wherever it appears as code
_WORDS = {
    "unsafe": "unsafe", "extern": "extern",
    "asm": "asm", "global_asm": "asm", "naked_asm": "asm", "llvm_asm": "asm",
    "include": "include", "include_str": "include_str", "include_bytes": "include_bytes",
    "option_env": "env", "macro_rules": "macro_rules", "concat_idents": "macro_rules",
    "trace_macros": "macro_rules", "log_syntax": "macro_rules",
}
# modules of std no koan needs: refused as a path segment (next to `::`) or anywhere in a `use`
_MODULES = {"process": "process", "env": "env", "fs": "fs", "net": "net", "os": "os", "arch": "asm",
            "intrinsics": "intrinsics"}
# attributes a koan fix may carry; any other is refused (e.g. path, link_section, no_mangle, export_name, used)
_ATTRS = {"allow", "warn", "deny", "forbid", "expect", "derive", "inline", "cold", "must_use", "doc", "cfg",
          "cfg_attr", "test", "ignore", "should_panic", "non_exhaustive", "repr", "track_caller", "deprecated",
          "default", "rustfmt", "clippy", "diagnostic", "automatically_derived"}
_INNER_ATTRS = {"allow", "warn", "deny", "forbid", "expect", "doc"}
# words that are refused anywhere inside an attribute (so `cfg_attr(all(), path = "...")` is caught too)
_ATTR_WORDS = {"path", "link", "link_section", "link_name", "export_name", "no_mangle", "used", "naked",
               "no_main", "no_std", "no_core", "start", "global_allocator", "panic_handler", "macro_use",
               "macro_export", "proc_macro", "feature", "crate_type", "crate_name", "test_runner",
               "no_builtins", "no_implicit_prelude", "windows_subsystem", "unsafe"}
# the macros the koans' tests judge with: a `use ... as NAME` must not take their names
_TEST_MACROS = {"assert", "assert_eq", "assert_ne", "debug_assert", "debug_assert_eq", "debug_assert_ne",
                "panic", "matches", "unreachable", "todo", "unimplemented", "vec", "format"}
_COMPARISON_TRAITS = {"PartialEq", "Eq", "PartialOrd", "Ord"}


def screen(code: str) -> Refusal | None:
    """The first reason to refuse `code`, or None when it may be compiled."""
    tokens = tokenize(code)
    for check in (_words, _attributes, _modules, _renames, _comparison_impls):
        refusal = check(tokens)
        if refusal:
            return refusal
    return None


def _refuse(what: str, why: str, tok: Token) -> Refusal:
    return Refusal(f"forbidden:{what}", f"`{tok.text}` is not allowed here: {why}", tok.line)


def _words(tokens: list[Token]) -> Refusal | None:
    for i, t in enumerate(tokens):
        if t.kind != "ident":
            continue
        if t.text in _WORDS:
            return _refuse(_WORDS[t.text], "a koan is fixed with plain safe Rust", t)
        if t.text == "env" and i + 1 < len(tokens) and tokens[i + 1].text == "!":
            return _refuse("env", "it reads the host's environment at compile time", t)
    return None


def _modules(tokens: list[Token]) -> Refusal | None:
    in_use = False
    for i, t in enumerate(tokens):
        if t.kind == "ident" and t.text == "use":
            in_use = True
        elif t.text == ";":
            in_use = False
        if t.kind != "ident" or t.text not in _MODULES:
            continue
        prev = tokens[i - 1].text if i else ""
        nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if in_use or prev == "::" or nxt == "::":
            return _refuse(_MODULES[t.text], f"std::{t.text} reaches outside the program", t)
    return None


def _attributes(tokens: list[Token]) -> Refusal | None:
    i = 0
    while i < len(tokens):
        if tokens[i].text != "#":
            i += 1
            continue
        inner = i + 1 < len(tokens) and tokens[i + 1].text == "!"
        j = i + (2 if inner else 1)
        if j >= len(tokens) or tokens[j].text != "[":
            i += 1
            continue
        end = _matching(tokens, j)
        body = tokens[j + 1:end]
        head = body[0] if body else tokens[i]
        allowed = _INNER_ATTRS if inner else _ATTRS
        if head.kind != "ident" or head.text not in allowed:
            return _refuse("attribute", "no koan needs this attribute", head)
        for t in body:
            if t.kind == "ident" and t.text in _ATTR_WORDS:
                return _refuse("attribute", "no koan needs this attribute", t)
        i = end + 1
    return None


def _renames(tokens: list[Token]) -> Refusal | None:
    for i, t in enumerate(tokens[:-1]):
        if t.kind == "ident" and t.text == "as" and tokens[i + 1].text in _TEST_MACROS:
            return _refuse("shadow", "that name belongs to the macros the tests use", tokens[i + 1])
    return None


def _comparison_impls(tokens: list[Token]) -> Refusal | None:
    for i, t in enumerate(tokens):
        if t.kind != "ident" or t.text != "impl":
            continue
        j = i + 1
        if j < len(tokens) and tokens[j].text == "<":
            j = _matching(tokens, j) + 1
        trait: Token | None = None
        depth = 0
        while j < len(tokens) and tokens[j].text not in ("{", ";", "where"):
            tok = tokens[j]
            if tok.text == "<":
                depth += 1
            elif tok.text == ">":
                depth -= 1
            elif tok.kind == "ident" and tok.text == "for" and depth == 0:
                if trait is not None and trait.text in _COMPARISON_TRAITS:
                    return _refuse("impl_comparison", "derive it instead: a hand-written comparison can make "
                                   "any assertion pass", trait)
                break
            elif tok.kind == "ident" and depth == 0:
                trait = tok
            j += 1
    return None


_PAIRS = {"[": "]", "(": ")", "{": "}", "<": ">"}


def _matching(tokens: list[Token], j: int) -> int:
    """Index of the token closing the bracket at j (the last token if it is never closed)."""
    open_, close = tokens[j].text, _PAIRS[tokens[j].text]
    depth = 0
    for k in range(j, len(tokens)):
        if tokens[k].text == open_:
            depth += 1
        elif tokens[k].text == close:
            depth -= 1
            if depth == 0:
                return k
    return len(tokens) - 1


def test_names(tests: str) -> list[str]:
    """The names of the `#[test]` functions in a koan's tests (trusted text), in order."""
    tokens = tokenize(tests)
    names: list[str] = []
    pending = False
    for i, t in enumerate(tokens):
        if (t.text == "test" and t.kind == "ident" and i >= 2 and tokens[i - 1].text == "["
                and tokens[i - 2].text == "#" and i + 1 < len(tokens) and tokens[i + 1].text == "]"):
            pending = True
        elif pending and t.kind == "ident" and t.text == "fn" and i + 1 < len(tokens):
            names.append(tokens[i + 1].text)
            pending = False
    return names
