"""`sleepy koans generate`: new training koans from correct programs, by known bug-introducing mutations.

Each mutation is a small rewrite of a correct program that is known to cause a particular rustc error (drop a
derive, drop `mut`, move instead of borrow, return a reference to a local, drop `?` or `.ok_or(..)`, mismatch a
numeric type). A mutant is kept only when the original passes its tests and the mutant fails to compile with
one of the error codes its mutation is known for, as its first error (what `sleepy koans check` demands).

Sources are training koans' reference solutions. The frozen eval set is never a source: not a koan in the eval
split, and, as a second guard that holds even before `koans/frozen_eval.toml` exists, not the ids reserved for
it (`*_001`..`*_010` of borrow_checker, trait_bounds and result_handling). Generated koans are never sources.
Output: ordinary koan files in koans/generated/ (training split); a mutant already written is never written
again, and a source gets at most one koan per mutation.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import atomic
from .diagnostics import errors
from .koans import Koan, parse_koan
from .sandbox import Sandbox

# ---- reading Rust just enough ------------------------------------------------------------------------------------

_CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]{1,6}\}|.)|[^\\'\n])'")
_RAW_STR = re.compile(r"(?<![\w])b?r(#*)\"")


def mask(code: str) -> str:
    """`code` with the insides of comments, string and char literals blanked (same length, same offsets), so
    the patterns below never match inside them and bracket matching is not confused by them."""
    out = list(code)
    n, i = len(code), 0

    def blank(a: int, b: int) -> None:
        for j in range(a, b):
            if out[j] != "\n":
                out[j] = " "

    while i < n:
        c = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif code.startswith("/*", i):
            j = code.find("*/", i + 2)
            j = n if j < 0 else j + 2
            blank(i, j)
            i = j
        elif (m := _RAW_STR.match(code, i)) is not None:
            end = code.find('"' + m.group(1), m.end())
            end = n if end < 0 else end
            blank(m.end(), end)
            i = end + 1 + len(m.group(1))
        elif c == '"':
            j = i + 1
            while j < n and code[j] != '"':
                j += 2 if code[j] == "\\" else 1
            blank(i + 1, min(j, n))
            i = j + 1
        elif c == "'" and (m := _CHAR.match(code, i)) is not None:
            blank(i + 1, m.end() - 1)
            i = m.end()
        else:
            i += 1
    return "".join(out)


def _close(masked: str, i: int) -> int:
    """Index of the bracket closing the one at `i` (-1 when unbalanced)."""
    depth = 0
    for j in range(i, len(masked)):
        c = masked[j]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _split_top(masked: str, a: int, b: int, *, angles: bool = False) -> list[tuple[int, int]]:
    """Spans of the comma-separated items of masked[a:b] at bracket depth 0 (and `<>` depth 0 with `angles`)."""
    spans, depth, start = [], 0, a
    for j in range(a, b):
        c = masked[j]
        if c in "([{" or (angles and c == "<"):
            depth += 1
        elif c in ")]}" or (angles and c == ">" and masked[j - 1] != "-"):
            depth -= 1
        elif c == "," and depth == 0:
            spans.append((start, j))
            start = j + 1
    if masked[start:b].strip():
        spans.append((start, b))
    return spans


def _edit(code: str, edits: list[tuple[int, int, str]]) -> str:
    for a, b, new in sorted(edits, reverse=True):
        code = code[:a] + new + code[b:]
    return code


def _borrow(expr: str) -> str:
    """`&expr`, parenthesized unless expr is a path, call, method chain or macro call (no operator at top level)."""
    e = expr.strip()
    top, depth = [], 0
    for c in mask(e):
        depth += c in "([{"
        depth -= c in ")]}"
        top.append(c if depth == 0 else " ")
    return f"&({e})" if re.search(r"[-+*/%=|^&]|\bas\b", "".join(top)) else f"&{e}"


# ---- the mutations -----------------------------------------------------------------------------------------------

Apply = Callable[[str], Iterator[str]]


@dataclass(frozen=True)
class Mutation:
    name: str
    family: str                   # the koan family of its mutants
    expected: tuple[str, ...]     # error codes it is known to cause; a mutant must fail with one of them first
    apply: Apply                  # correct program -> candidate mutants
    label: str                    # for the title: "<source title> (<label>)"
    hint: str                     # what went wrong, for the hint


def _each_match(pattern: str, repl: Callable[[re.Match, str], str | None], flags: int = 0) -> Apply:
    """One mutant per match of `pattern` (outside comments and literals); repl(match, code) is the new text."""
    rx = re.compile(pattern, flags)

    def gen(code: str) -> Iterator[str]:
        for m in rx.finditer(mask(code)):
            new = repl(m, code)
            if new is not None:
                yield code[:m.start()] + new + code[m.end():]
    return gen


def _any(*applies: Apply) -> Apply:
    def gen(code: str) -> Iterator[str]:
        for apply in applies:
            yield from apply(code)
    return gen


def _drop_derive(code: str) -> Iterator[str]:
    for m in re.finditer(r"#\[derive\(([^)]*)\)\]", mask(code)):
        traits = [t.strip() for t in m.group(1).split(",") if t.strip()]
        for t in traits:
            rest = [x for x in traits if x != t]
            new = f"#[derive({', '.join(rest)})]" if rest else ""
            yield code[:m.start()] + new + code[m.end():]


def _drop_ok_or(code: str) -> Iterator[str]:
    """Remove a `.ok_or(..)` / `.ok_or_else(..)` call, however deeply its argument nests."""
    masked = mask(code)
    for m in re.finditer(r"\s*\.ok_or(?:_else)?\s*\(", masked):
        end = _close(masked, m.end() - 1)
        if end > 0:
            yield code[:m.start()] + code[end + 1:]


_FN = re.compile(r"\bfn\s+(\w+)\s*(?:<[^{(]*?>)?\s*\(")
_SELF = re.compile(r"\s*(&\s*('\w+\s+)?(mut\s+)?)?(mut\s+)?self\s*")


def _consume_param(code: str) -> Iterator[str]:
    """A function that borrows a parameter (`v: &[T]`, `&Vec<T>`, `&str`, `&String`, `&Map<..>`) takes it by
    value instead, and its callers in the program pass the value itself: a caller that uses it afterwards
    now uses a moved value (E0382)."""
    masked = mask(code)
    for fm in _FN.finditer(masked):
        name, po = fm.group(1), fm.end() - 1
        pc = _close(masked, po)
        if pc < 0:
            continue
        params = _split_top(masked, po + 1, pc, angles=True)
        has_self = bool(params) and _SELF.fullmatch(code[slice(*params[0])]) is not None
        for idx, (ps, pe) in enumerate(params):
            pm = re.fullmatch(r"(\s*\w+\s*:\s*)&\s*(?:'\w+\s+)?(?!mut\b)([^&].*?)\s*", code[ps:pe], re.S)
            if not pm or pm.group(2).startswith(("impl ", "dyn ")):
                continue
            ty = pm.group(2)
            owned = "String" if ty == "str" else f"Vec<{ty[1:-1]}>" if ty.startswith("[") else ty
            edits = [(ps, pe, pm.group(1) + owned)]
            argi = idx - 1 if has_self else idx
            for cm in re.finditer(rf"(?<![\w])(?<!fn ){name}\s*\(", masked):
                if cm.start() == fm.start(1):
                    continue
                co = cm.end() - 1
                cc = _close(masked, co)
                args = _split_top(masked, co + 1, cc) if cc > 0 else []
                if argi < len(args):
                    a, b = args[argi]
                    am = re.match(r"\s*&(?!mut\b)\s*", code[a:b])
                    if am:
                        edits.append((a, a + am.end(), code[a:a + am.end()].split("&")[0]))
            if len(edits) > 1:
                yield _edit(code, edits)


def _ref_to_local(code: str) -> Iterator[str]:
    """A function building an owned String / Vec<T> returns a reference to it instead (`&str` / `&[T]`): with
    no reference parameter to borrow from that is E0106, otherwise E0515."""
    masked = mask(code)
    for m in re.finditer(r"\)\s*->\s*(String|Vec<(.+?)>)\s*(?:where\b[^{]*)?\{", masked):
        ret_a, ret_b = m.span(1)
        ref = "&str" if m.group(1) == "String" else f"&[{code[slice(*m.span(2))]}]"
        bo = m.end() - 1
        bc = _close(masked, bo)
        if bc < 0:
            continue
        edits = [(ret_a, ret_b, ref)]
        depth, last = 0, bo
        for j in range(bo + 1, bc):
            c = masked[j]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
                if depth == 0 and c == "}":
                    last = j
            elif c == ";" and depth == 0:
                last = j
        tail = code[last + 1:bc]
        if tail.strip():
            start, end = last + 1 + len(tail) - len(tail.lstrip()), last + 1 + len(tail.rstrip())
            expr = code[start:end]
            if expr.endswith(".collect()"):  # else `&..collect()` would collect into an unsized [T] / str
                expr = f"{expr[:-2]}::<{m.group(1)}>()"
            edits.append((start, end, _borrow(expr)))
        for rm in re.finditer(r"\breturn\s+([^;]+);", masked[bo:bc]):
            a, b = bo + rm.start(1), bo + rm.end(1)
            edits.append((a, b, _borrow(code[a:b])))
        if len(edits) > 1:
            yield _edit(code, edits)


_NUM = r"u8|u16|u32|u64|u128|usize|i8|i16|i32|i64|i128|isize|f32|f64"
_OTHER_NUM = {"u8": "u32", "u16": "u32", "u32": "u64", "u64": "u32", "u128": "u64", "usize": "u32",
              "i8": "i32", "i16": "i32", "i32": "i64", "i64": "i32", "i128": "i64", "isize": "i32",
              "f32": "f64", "f64": "f32"}


MUTATIONS: tuple[Mutation, ...] = (
    Mutation("drop_derive", "trait_bounds", ("E0277", "E0599", "E0369", "E0382", "E0507"), _drop_derive,
             "missing derive", "A type lost one of its derived traits; find the trait the code relies on."),
    Mutation("drop_mut", "borrow_checker", ("E0596", "E0594", "E0384"),
             _each_match(r"(\blet\s+\(?|[(,|]\s*)mut\s+(?=[a-z_])", lambda m, c: m.group(1)),
             "missing `mut`", "A binding that is changed later was declared without `mut`."),
    Mutation("drop_mut_ref", "borrow_checker", ("E0596", "E0594"),
             _each_match(r"&\s*mut\s+(?=self\b)|(?<=:\s)&\s*mut\s+(?!(?:fmt::)?Formatter\b)", lambda m, c: "&"),
             "`&` where `&mut` is needed", "Something is changed through a shared `&` reference."),
    Mutation("move_not_borrow", "borrow_checker", ("E0382", "E0505", "E0507"),
             _any(_each_match(r"(\bfor\s+[^;{]+?\s+in\s+|\bmatch\s+|\blet\s+[^=;{]+?=\s*)&\s*(?!mut\b)([\w.]++)"
                              r"(?=\s*[{;])", lambda m, c: m.group(1) + m.group(2)),
                  _each_match(r"(?<![\w.])((?:self\.)?\w+)\.iter\(\)", lambda m, c: m.group(1) + ".into_iter()")),
             "moved instead of borrowed", "A value is moved (a loop, `match` or `into_iter` consumes it) where "
             "borrowing it would do, and it is needed afterwards."),
    Mutation("move_into_call", "borrow_checker", ("E0382", "E0505"), _consume_param,
             "call consumes a value", "A function takes by value what it only needs to borrow, and the caller "
             "uses the value after the call."),
    Mutation("drop_clone", "borrow_checker", ("E0382", "E0507", "E0505"),
             _each_match(r"\.clone\(\)", lambda m, c: ""),
             "missing clone", "A value is moved where the code still needs it; a copy or a borrow is missing."),
    Mutation("drop_question_mark", "result_handling", ("E0308", "E0599", "E0277", "E0369", "E0614", "E0608",
                                                       "E0609", "E0610"),
             _each_match(r"(?<=[\w)\]])\?", lambda m, c: ""),
             "missing `?`", "A fallible call's Result (or Option) is used as if it were the value; propagate the "
             "error with `?`."),
    Mutation("drop_ok_or", "result_handling", ("E0277", "E0308"), _drop_ok_or,
             "Option used as a Result", "An Option is used where a Result is needed; convert it with `ok_or`."),
    Mutation("drop_cast", "type_mismatch", ("E0308", "E0277"),
             _each_match(rf"\s+as\s+(?:{_NUM})\b", lambda m, c: ""),
             "missing numeric cast", "Two different numeric types are mixed without a conversion."),
    Mutation("numeric_return", "type_mismatch", ("E0308", "E0277"),
             _each_match(rf"(->\s*(?:(?:Option|Result)\s*<\s*)?)({_NUM})\b",
                         lambda m, c: m.group(1) + _OTHER_NUM[m.group(2)]),
             "wrong numeric return type", "A function's declared numeric return type does not match the type "
             "it computes."),
    Mutation("ref_to_local", "lifetimes", ("E0106", "E0515"), _ref_to_local,
             "returns a reference to a local", "A function returns a reference to a value it created itself; "
             "return the owned value instead."),
)

BY_NAME = {m.name: m for m in MUTATIONS}


def mutants(koan: Koan, mutations: tuple[Mutation, ...] = MUTATIONS) -> Iterator[tuple[Mutation, str]]:
    """Every distinct candidate mutant of the koan's solution (unverified), mutation by mutation; never the
    solution itself nor (whitespace aside) the koan's own buggy program."""
    seen = {koan.solution, koan.buggy}
    for mut in mutations:
        for code in mut.apply(koan.solution):
            if code not in seen and _norm(code) != _norm(koan.buggy):
                seen.add(code)
                yield mut, code


def _norm(code: str) -> str:
    return "\n".join(line.strip() for line in code.strip().splitlines() if line.strip())


# ---- sources and output ------------------------------------------------------------------------------------------

LINES = (8, 40)  # a koan's buggy program has this many lines of code, like the hand-written ones
FROZEN_FAMILIES = ("borrow_checker", "trait_bounds", "result_handling")
_FROZEN_ID = re.compile(r"_0*(?:[1-9]|10)$")


def _fits(code: str, lines: tuple[int, int]) -> bool:
    return lines[0] <= sum(1 for line in code.splitlines() if line.strip()) <= lines[1]


def is_source(k: Koan) -> bool:
    """May this koan's solution be mutated? Training split only, never an id reserved for the frozen eval set,
    never a generated koan."""
    if k.split != "train" or k.id.startswith("gen_"):
        return False
    return not (k.family in FROZEN_FAMILIES and _FROZEN_ID.search(k.id))


def koan_id(source: Koan, mut: Mutation, code: str) -> str:
    return f"gen_{source.id}_{mut.name}_{hashlib.sha256(code.encode()).hexdigest()[:8]}"


def generated_koan_text(source: Koan, mut: Mutation, code: str, error: str) -> tuple[str, str]:
    """(id, TOML text) of the koan: the mutant is the buggy program, the source's solution and tests are kept."""
    kid = koan_id(source, mut, code)

    def lit(s: str) -> str:
        if "'''" in s:
            raise ValueError("code contains '''")
        return "'''\n" + s.strip("\n") + "\n'''"

    def basic(s: str) -> str:  # a JSON string is a valid TOML basic string
        return json.dumps(s, ensure_ascii=False)

    text = "\n".join([
        f"id = {basic(kid)}", f"family = {basic(mut.family)}", f"title = {basic(f'{source.title} ({mut.label})')}",
        f"expected_error = {basic(error)}", f"hint = {basic(f'{mut.hint} ({mut.name} mutation of {source.id})')}",
        f"buggy = {lit(code)}", f"solution = {lit(source.solution)}", f"tests = {lit(source.tests)}", ""])
    return kid, text


def _spread(key: str) -> str:
    """A stable pseudo-random order, so that the first candidates mix families and sources."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Generated:
    path: Path
    source: str      # the source koan's id
    mutation: str    # the mutation's name
    error: str       # the error code the buggy program fails with first


def generate(sources: list[Koan], sandbox: Sandbox, out_dir: Path, *, limit: int = 40, per_source: int = 2,
             mutations: tuple[Mutation, ...] = MUTATIONS, lines: tuple[int, int] = LINES,
             on_line: Callable[[str], None] = lambda s: None) -> list[Generated]:
    """Write up to `limit` new verified mutants into `out_dir`; returns what was written.

    The mutation with the fewest koans so far gets the next candidate (spread over the sources), so the output
    is varied even where some mutations rarely apply; a source yields at most `per_source` koans and one per
    mutation, counting the koans already in `out_dir`, which are never written twice. A mutant must have
    `lines` (min, max) lines of code.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = {p.stem for p in out_dir.glob("gen_*.toml")}
    usable = [k for k in sources if is_source(k)]
    for k in sources:
        if not is_source(k):
            on_line(f"skip {k.id}: not a training source")
    results = sandbox.check_many([(k.solution, k.tests) for k in usable])
    passing = []
    for k, r in zip(usable, results):
        if r.passed:
            passing.append(k)
        else:
            on_line(f"skip {k.id}: its solution does not pass ({r.signature or r.outcome})")

    done: set[tuple[str, str]] = set()   # (source id, mutation) pairs that have a koan
    per_src: Counter[str] = Counter()
    for k in passing:
        for mut in mutations:
            if any(re.fullmatch(rf"gen_{re.escape(k.id)}_{mut.name}_[0-9a-f]{{8}}", s) for s in existing):
                done.add((k.id, mut.name))
                per_src[k.id] += 1

    # one queue per mutation: the first mutant of every source, then the second ones, ...; the sources in an
    # order of their own per mutation, so that the mutations do not all start on the same sources
    cands = {k.id: list(mutants(k, mutations)) for k in passing}
    queues: dict[str, list[tuple[Koan, str]]] = {}
    for mut in mutations:
        srcs = sorted(passing, key=lambda k: _spread(f"{mut.name}/{k.id}"))
        per = [[code for m, code in cands[k.id] if m is mut and _fits(code, lines)] for k in srcs]
        q = []
        for rank in range(max((len(p) for p in per), default=0)):
            q += [(src, p[rank]) for src, p in zip(srcs, per) if rank < len(p)]
        queues[mut.name] = q[::-1]  # popped from the end

    def wanted(src: Koan, mut: Mutation, code: str) -> bool:
        return ((src.id, mut.name) not in done and per_src[src.id] < per_source
                and koan_id(src, mut, code) not in existing)

    written: list[Generated] = []
    count: Counter[str] = Counter()
    while len(written) < limit:
        # the mutations with the fewest koans so far get the next candidates: a rare mutation is tried until it
        # catches up (or runs out of candidates) rather than being crowded out by the prolific ones
        batch: list[tuple[Koan, Mutation, str]] = []
        for mut in sorted(mutations, key=lambda m: count[m.name]):
            if batch and count[mut.name] > count[batch[0][1].name]:
                break
            q = queues[mut.name]
            while q:
                src, code = q.pop()
                if wanted(src, mut, code):
                    batch.append((src, mut, code))
                    break
        if not batch:
            break  # every queue is used up
        for (src, mut, code), r in zip(batch, sandbox.check_many([(c, s.tests) for s, _, c in batch])):
            if len(written) >= limit or not wanted(src, mut, code):
                continue
            codes = [d.code for d in errors(r.diagnostics)]
            if r.outcome != "compile_error" or not codes or codes[0] not in mut.expected:
                continue
            try:
                kid, text = generated_koan_text(src, mut, code, codes[0])
                path = out_dir / f"{kid}.toml"
                parse_koan(text, path)   # what is written must load as an ordinary koan
            except ValueError as e:
                on_line(f"skip a {mut.name} mutant of {src.id}: {e}")
                continue
            atomic.write_text(path, text)
            existing.add(kid)
            done.add((src.id, mut.name))
            per_src[src.id] += 1
            written.append(Generated(path, src.id, mut.name, codes[0]))
            count[mut.name] += 1
            on_line(f"{path.name}: {mut.name} -> {codes[0]}")
    return written
