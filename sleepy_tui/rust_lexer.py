"""Rust source as tokens, with comments and literals handled the way rustc's lexer handles them.

The screen (screen.py) decides on these tokens, so what it sees must be what rustc sees: a word inside a
comment or a string is not an identifier, and nothing rustc reads as code may hide inside what this lexer
thinks is a comment or a string. Where the two could disagree (an unterminated literal, a stray character),
the rest is kept as code, so that any doubt ends in a refusal, never in a pass.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Token:
    kind: str   # "ident", "lifetime", "literal", "punct"
    text: str   # the source text; an identifier without its r# prefix; "::", "->" and "=>" are one token each
    line: int   # 1-based


def _ident_start(ch: str) -> bool:
    return ch == "_" or ch.isidentifier()


def _ident_continue(ch: str) -> bool:
    return ("a" + ch).isidentifier()


def tokenize(src: str) -> list[Token]:
    out: list[Token] = []
    i, n, line = 0, len(src), 1

    def emit(kind: str, text: str, start_line: int) -> None:
        out.append(Token(kind, text, start_line))

    while i < n:
        ch = src[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:  # unterminated: rustc refuses the file; keep the text as code (see the module doc)
                i += 2
                continue
            line += src.count("\n", i, j)
            i = j
            continue
        start_line = line
        raw = _raw_string_end(src, i)
        if raw is not None:
            line += src.count("\n", i, raw)
            emit("literal", src[i:raw], start_line)
            i = raw
            continue
        if ch == '"' or (ch in "bc" and src.startswith('"', i + 1)):
            j = _quoted_end(src, i + (1 if ch == '"' else 2), '"')
            if j is None:
                i += 1 if ch == '"' else 2
                continue
            line += src.count("\n", i, j)
            emit("literal", src[i:j], start_line)
            i = j
            continue
        if ch == "b" and src.startswith("'", i + 1):
            j = _quoted_end(src, i + 2, "'")
            if j is not None:
                emit("literal", src[i:j], start_line)
                i = j
                continue
        if ch == "r" and src.startswith("r#", i) and i + 2 < n and _ident_start(src[i + 2]):
            j = i + 2
            while j < n and _ident_continue(src[j]):
                j += 1
            emit("ident", src[i + 2:j], start_line)
            i = j
            continue
        if _ident_start(ch):
            j = i + 1
            while j < n and _ident_continue(src[j]):
                j += 1
            emit("ident", src[i:j], start_line)
            i = j
            continue
        if ch == "'":
            # rustc: a backslash, or any character followed by a closing quote, is a char literal; else a lifetime.
            if i + 1 < n and src[i + 1] == "\\":
                j = _quoted_end(src, i + 1, "'")
                if j is not None:
                    emit("literal", src[i:j], start_line)
                    i = j
                    continue
            elif i + 2 < n and src[i + 2] == "'" and src[i + 1] != "\n":
                emit("literal", src[i:i + 3], start_line)
                i += 3
                continue
            j = i + 1
            while j < n and _ident_continue(src[j]):
                j += 1
            emit("lifetime", src[i:j], start_line)
            i = max(j, i + 1)
            continue
        if ch.isdigit():
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] == "_"
                             or (src[j] == "." and j + 1 < n and src[j + 1].isdigit() and src[j - 1] != ".")):
                j += 1
            emit("literal", src[i:j], start_line)
            i = j
            continue
        if src.startswith(("::", "->", "=>"), i):
            emit("punct", src[i:i + 2], start_line)
            i += 2
            continue
        emit("punct", ch, start_line)
        i += 1
    return out


def _raw_string_end(src: str, i: int) -> int | None:
    """End index of a raw string (r"..", r#".."#, br, cr) starting at i, or None if none starts there."""
    j = i
    if src.startswith(("br", "cr"), j):
        j += 2
    elif src.startswith("r", j):
        j += 1
    else:
        return None
    hashes = 0
    while j < len(src) and src[j] == "#":
        hashes, j = hashes + 1, j + 1
    if j >= len(src) or src[j] != '"':
        return None
    close = '"' + "#" * hashes
    k = src.find(close, j + 1)
    return None if k < 0 else k + len(close)


def _quoted_end(src: str, j: int, quote: str) -> int | None:
    """Index after the closing quote of a literal whose body starts at j (escapes honoured), or None."""
    n = len(src)
    while j < n:
        c = src[j]
        if c == "\\":
            j += 2
            continue
        if c == quote:
            return j + 1
        j += 1
    return None
