"""Near-copies of the frozen eval koans: programs that are the same but for names, spacing or a small edit.

A training koan or a training example that is a near-copy of a frozen koan would leak it into training as
surely as an exact copy. Two measures over tokens (rust_lexer.py: comments and spacing never count): the
share of identical tokens in order (an edited copy), and the same share once every identifier and literal
is a placeholder (a renamed copy). On this corpus the closest distinct koans score 0.66 and 0.78; a copy
with every name changed scores 1.0 on the second.
"""

from __future__ import annotations

from difflib import SequenceMatcher

from .rust_lexer import tokenize

EXACT_THRESHOLD = 0.8   # share of identical tokens in order
SHAPE_THRESHOLD = 0.9   # the same with names and literals as placeholders

_KEYWORDS = frozenset(
    "as async await break const continue crate dyn else enum extern false fn for if impl in let loop match mod move "
    "mut pub ref return self Self static struct super trait true type unsafe use where while".split())


def _exact(code: str) -> list[str]:
    return [t.text for t in tokenize(code)]


def _shape(code: str) -> list[str]:
    out = []
    for t in tokenize(code):
        if t.kind == "ident" and t.text not in _KEYWORDS:
            out.append("I")
        elif t.kind == "literal":
            out.append("L")
        else:
            out.append(t.text)
    return out


class NearCopies:
    """The programs of some koans (the frozen set), asked whether another program is a near-copy of one."""

    def __init__(self, named_codes: list[tuple[str, str]]):
        self._refs = [(name, _exact(code), _shape(code)) for name, code in named_codes if code.strip()]

    def of(self, code: str) -> str | None:
        """The name of the program `code` nearly copies, or None."""
        exact, shape = _exact(code), _shape(code)
        if len(exact) < 20:   # a line or two of code is not a koan
            return None
        for seq, threshold, index in ((exact, EXACT_THRESHOLD, 1), (shape, SHAPE_THRESHOLD, 2)):
            sm = SequenceMatcher(None, autojunk=False)
            sm.set_seq2(seq)
            for ref in self._refs:
                sm.set_seq1(ref[index])
                if sm.real_quick_ratio() >= threshold and sm.quick_ratio() >= threshold and sm.ratio() >= threshold:
                    return ref[0]
        return None


def frozen_programs(eval_koans) -> NearCopies:
    return NearCopies([(f"{k.id} ({part})", getattr(k, part)) for k in eval_koans for part in ("buggy", "solution")])
