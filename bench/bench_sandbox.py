"""Checking code: the sandbox against bare rustc + run, and against a fresh cargo project per check.

Also: throughput of a pool on all cores against one check at a time.
usage: python bench/bench_sandbox.py [--quick] [--n N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import record, table

from sleepy_tui.koans import combine, load_corpus
from sleepy_tui.sandbox import Sandbox


def bare_rustc(source: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d, "main.rs")
        src.write_text(source)
        t0 = time.perf_counter()
        subprocess.run(["rustc", "--edition", "2021", "--test", "-o", str(Path(d, "bin")), str(src)],
                       check=True, capture_output=True)
        subprocess.run([str(Path(d, "bin"))], check=True, capture_output=True)
        return time.perf_counter() - t0


def fresh_cargo(source: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        subprocess.run(["cargo", "new", "--lib", "--offline", "--vcs", "none", "-q", "k"], cwd=d, check=True,
                       capture_output=True)
        Path(d, "k", "src", "lib.rs").write_text(source)
        subprocess.run(["cargo", "test", "--offline", "-q"], cwd=Path(d, "k"), check=True, capture_output=True,
                       env={**os.environ, "CARGO_TARGET_DIR": str(Path(d, "target"))})
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=30, help="koans to use")
    args = ap.parse_args()
    n = 4 if args.quick else args.n
    koans = load_corpus().train_set[:n]
    sources = [(k.solution, k.tests) for k in koans]
    sb = Sandbox()
    try:
        sb.check(*sources[0])  # warm the page cache for rustc and std
        ours, bare, cargo = [], [], []
        for code, tests in sources:  # interleaved, so drift hits all three alike
            t0 = time.perf_counter()
            r = sb.check(code, tests)
            ours.append(time.perf_counter() - t0)
            assert r.passed, r.signature
            bare.append(bare_rustc(combine(code, tests)))
            if len(cargo) < (2 if args.quick else 8):
                cargo.append(fresh_cargo(combine(code, tests)))
        t0 = time.perf_counter()
        for code, tests in sources:
            sb.check(code, tests)
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = sb.check_many(sources)
        pooled = time.perf_counter() - t0
        assert all(r.passed for r in results)
    finally:
        sb.close()
    med = statistics.median
    rows = [
        ["sandbox check (%s)" % sb.isolation, f"{med(ours) * 1000:.0f}", f"{med(ours) / med(bare):.2f}x"],
        ["bare rustc --test + run", f"{med(bare) * 1000:.0f}", "1.00x"],
        ["fresh cargo project + cargo test", f"{med(cargo) * 1000:.0f}", f"{med(cargo) / med(bare):.2f}x"],
    ]
    body = (f"Median latency per check over {len(sources)} koan solutions (compile + run tests).\n\n"
            + table(["what", "median ms", "vs bare rustc"], rows)
            + f"\n\nThroughput on {os.cpu_count()} cores: one at a time {len(sources) / serial:.2f} checks/s, "
              f"pool {len(sources) / pooled:.2f} checks/s ({serial / pooled:.2f}x).\n"
              "Goal: sandbox at most 1.2x bare rustc.")
    record("Checking code (sandbox)", " ".join(["python", "bench/bench_sandbox.py"] + sys.argv[1:]), body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
