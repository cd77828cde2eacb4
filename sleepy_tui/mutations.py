"""`sleepy koans generate`: new training koans from correct programs, by known bug-introducing mutations.

A mutant is kept only when the original passes its tests and the mutant fails to compile with the error
code the mutation is known for. Sources are training koans' reference solutions: nothing here can touch
the frozen eval set. Output: ordinary koan files in koans/generated/ (training split).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .koans import Koan
from .sandbox import Sandbox


@dataclass(frozen=True)
class Mutation:
    name: str
    family: str
    expected: tuple[str, ...]           # error codes this mutation is known to cause
    apply: Callable[[str], Iterator[str]]
    title: str


def _each_match(pattern: str, repl: Callable[[re.Match], str]) -> Callable[[str], Iterator[str]]:
    rx = re.compile(pattern)

    def gen(code: str) -> Iterator[str]:
        for m in rx.finditer(code):
            out = code[:m.start()] + repl(m) + code[m.end():]
            if out != code:
                yield out
    return gen


def _drop_derive(code: str) -> Iterator[str]:
    for m in re.finditer(r"#\[derive\(([^)]*)\)\]", code):
        traits = [t.strip() for t in m.group(1).split(",") if t.strip()]
        for t in traits:
            rest = [x for x in traits if x != t]
            new = f"#[derive({', '.join(rest)})]" if rest else ""
            yield code[:m.start()] + new + code[m.end():]


MUTATIONS: tuple[Mutation, ...] = (
    Mutation("drop_derive", "trait_bounds", ("E0277", "E0599", "E0369", "E0382", "E0507"), _drop_derive,
             "a derive is missing"),
    Mutation("drop_mut", "borrow_checker", ("E0596", "E0384"),
             _each_match(r"\blet mut (\w+)", lambda m: f"let {m.group(1)}"), "a binding lost its mut"),
    Mutation("drop_mut_ref", "borrow_checker", ("E0596",),
             _each_match(r"&mut self\b", lambda m: "&self"), "a method lost &mut self"),
    Mutation("move_not_borrow", "borrow_checker", ("E0382", "E0308", "E0505"),
             _each_match(r"for (\w+|\([^)]*\)) in &(\w+)\b", lambda m: f"for {m.group(1)} in {m.group(2)}"),
             "a loop consumes what it should borrow"),
    Mutation("drop_clone", "borrow_checker", ("E0382", "E0507", "E0505", "E0308"),
             _each_match(r"\.clone\(\)", lambda m: ""), "a clone is missing"),
    Mutation("drop_question_mark", "result_handling", ("E0308", "E0599", "E0277", "E0369", "E0614"),
             _each_match(r"\)\?", lambda m: ")"), "an error is not propagated"),
    Mutation("drop_ok_or", "result_handling", ("E0277", "E0308"),
             _each_match(r"\.ok_or(_else)?\((?:[^()]|\([^()]*\))*\)", lambda m: ""), "an Option is used as a Result"),
    Mutation("numeric_mismatch", "type_mismatch", ("E0308", "E0277"),
             _each_match(r" as (f64|f32|i64|u64|usize|i32|u32)\b", lambda m: ""), "a numeric conversion is missing"),
    Mutation("ref_to_local", "lifetimes", ("E0106", "E0515", "E0308"),
             _each_match(r"\) -> String \{", lambda m: ") -> &str {"), "a function returns a reference to a local"),
)


def mutants(koan: Koan) -> Iterator[tuple[Mutation, str]]:
    seen: set[str] = set()
    for mut in MUTATIONS:
        for code in mut.apply(koan.solution):
            if code not in seen:
                seen.add(code)
                yield mut, code


def generated_koan_text(source: Koan, mut: Mutation, code: str, error: str) -> tuple[str, str]:
    digest = hashlib.sha256(code.encode()).hexdigest()[:8]
    kid = f"gen_{source.id}_{mut.name}_{digest}"
    def lit(s: str) -> str:
        if "'''" in s:
            raise ValueError("code contains '''")
        return "'''\n" + s.strip("\n") + "\n'''"
    text = "\n".join([
        f'id = "{kid}"', f'family = "{mut.family}"', f'title = "{source.title}"', f'expected_error = "{error}"',
        f'hint = "Generated from {source.id} by the {mut.name} mutation ({mut.title})."',
        f"buggy = {lit(code)}", f"solution = {lit(source.solution)}", f"tests = {lit(source.tests)}", ""])
    return kid, text


def generate(sources: list[Koan], sandbox: Sandbox, out_dir: Path, *, limit: int = 50,
             per_source: int = 2, on_line: Callable[[str], None] = lambda s: None) -> list[Path]:
    """Write up to `limit` verified mutants; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for src in sources:
        if src.split != "train":
            continue  # never derive from the frozen eval set
        if not sandbox.check(src.solution, src.tests).passed:
            on_line(f"skip {src.id}: its solution does not pass")
            continue
        kept = 0
        for mut, code in mutants(src):
            if len(written) >= limit or kept >= per_source:
                break
            r = sandbox.check(code, src.tests)
            if r.outcome != "compile_error":
                continue
            first = next((d.code for d in r.diagnostics if d.level == "error"), None)
            if first not in mut.expected:
                continue
            kid, text = generated_koan_text(src, mut, code, first)
            path = out_dir / f"{kid}.toml"
            if path.exists():
                continue
            path.write_text(text)
            written.append(path)
            kept += 1
            on_line(f"{path.name}: {mut.name} -> {first}")
        if len(written) >= limit:
            break
    return written
