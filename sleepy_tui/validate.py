"""`sleepy koans check`: is every koan a fair puzzle? Buggy fails as expected_error says; the fix passes.

Two kinds of koan: a compile-error koan (`expected_error` is a rustc code, the first error the buggy program
fails with) and a behaviour-bug koan (`expected_error = "test_failure"`: the buggy program compiles and at least
one of its tests fails, by a panic of the test, not a timeout or a crash)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import os

from .diagnostics import errors
from .koans import TEST_FAILURE, Koan
from .sandbox import CheckResult, Sandbox


def buggy_problems(koan: Koan, buggy: CheckResult) -> list[str]:
    """What is wrong with the buggy program's verdict for this koan's expected_error (nothing: [])."""
    where = str(koan.path or koan.id)
    if koan.expected_error == TEST_FAILURE:
        if buggy.outcome == "compile_error":
            codes = [d.code for d in errors(buggy.diagnostics)]
            return [f"{where}: buggy program does not compile ({', '.join(map(str, codes))}), but expected_error "
                    f"is {TEST_FAILURE} (it must compile and fail a test)"]
        if buggy.outcome != "test_failure" or buggy.tests_failed < 1:
            return [f"{where}: buggy program does not fail a test (outcome {buggy.outcome}: "
                    f"{buggy.signature or 'every test passed'})"]
        return []
    if buggy.outcome != "compile_error":
        return [f"{where}: buggy program does not fail to compile (outcome {buggy.outcome})"]
    codes = [d.code for d in errors(buggy.diagnostics)]
    if koan.expected_error not in codes:
        return [f"{where}: buggy program fails with {', '.join(map(str, codes))}, not expected_error "
                f"{koan.expected_error}"]
    if codes[0] != koan.expected_error:
        return [f"{where}: expected_error {koan.expected_error} is not the first error ({codes[0]})"]
    return []


def koan_problems(sandbox: Sandbox, koan: Koan) -> list[str]:
    where = str(koan.path or koan.id)
    probs = buggy_problems(koan, sandbox.check(koan.buggy, koan.tests))
    fixed = sandbox.check(koan.solution, koan.tests)
    if not fixed.passed:
        detail = fixed.signature or fixed.outcome
        probs.append(f"{where}: solution does not pass its tests ({fixed.outcome}: {detail})")
    elif fixed.tests_passed < 1:
        probs.append(f"{where}: no test ran")
    return probs


def corpus_problems(sandbox: Sandbox, koans: list[Koan], workers: int | None = None) -> list[str]:
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        probs = [p for probs in pool.map(lambda k: koan_problems(sandbox, k), koans) for p in probs]
    return probs + near_copy_problems(koans)


def near_copy_problems(koans: list[Koan]) -> list[str]:
    """Training koans that are near-copies of a frozen one (similarity.py): they would leak it into training."""
    from .similarity import frozen_programs
    frozen = [k for k in koans if k.split == "eval"]
    if not frozen:
        return []
    index = frozen_programs(frozen)
    out = []
    for k in koans:
        if k.split != "eval":
            hit = index.of(k.solution) or index.of(k.buggy)
            if hit:
                out.append(f"{k.path or k.id}: a near-copy of frozen koan {hit}; training on it would leak the eval set")
    return out
