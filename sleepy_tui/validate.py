"""`sleepy koans check`: is every koan a fair puzzle? Buggy fails with its expected error; the fix passes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import os

from .diagnostics import errors
from .koans import Koan
from .sandbox import Sandbox


def koan_problems(sandbox: Sandbox, koan: Koan) -> list[str]:
    where = str(koan.path or koan.id)
    probs: list[str] = []
    buggy = sandbox.check(koan.buggy, koan.tests)
    if buggy.outcome != "compile_error":
        probs.append(f"{where}: buggy program does not fail to compile (outcome {buggy.outcome})")
    else:
        codes = [d.code for d in errors(buggy.diagnostics)]
        if koan.expected_error not in codes:
            probs.append(f"{where}: buggy program fails with {', '.join(map(str, codes))}, not expected_error "
                         f"{koan.expected_error}")
        elif codes[0] != koan.expected_error:
            probs.append(f"{where}: expected_error {koan.expected_error} is not the first error ({codes[0]})")
    fixed = sandbox.check(koan.solution, koan.tests)
    if not fixed.passed:
        detail = fixed.signature or fixed.outcome
        probs.append(f"{where}: solution does not pass its tests ({fixed.outcome}: {detail})")
    elif fixed.tests_passed < 1:
        probs.append(f"{where}: no test ran")
    return probs


def corpus_problems(sandbox: Sandbox, koans: list[Koan], workers: int | None = None) -> list[str]:
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return [p for probs in pool.map(lambda k: koan_problems(sandbox, k), koans) for p in probs]
