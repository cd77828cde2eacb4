"""State: 10,000 episodes inserted and reloaded, against plain tinydb writing one document per insert.

usage: python bench/bench_store.py [--quick] [--n N]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from common import record, table

from sleepy_tui.store import Store


def episode(i: int, run: str) -> dict:
    return {"run_id": run, "koan_id": f"k{i % 120:03d}", "attempt": 1 + i % 5, "family": "borrow_checker",
            "split": "train", "cycle": 0, "backend": "embedded", "model": "SmolLM2", "adapter": "",
            "prompt": [{"role": "user", "content": "fix this program " * 60}], "reply": "```rust\nfn x() {}\n```" * 20,
            "code": "fn x() {}\n" * 20, "outcome": "compile_error", "signature": "E0382:borrow_of_moved_value",
            "diagnostics": [{"level": "error", "code": "E0382", "message": "borrow of moved value", "line": 3,
                             "column": 5, "rendered": "error[E0382]: ..." * 5}], "generation_ms": 1200.0,
            "check_ms": 180.0, "tokens_in": 600, "tokens_out": 200, "time": 0.0}


def ours(n: int, per_koan: int, per_run: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        s = Store(Path(d))
        t0 = time.perf_counter()
        for i in range(n):
            s.add_episode(episode(i, f"run-{i // per_run:04d}"))
            if i % per_koan == per_koan - 1:
                s.flush()  # the agent flushes after every koan
        s.close()
        insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert len(Store(Path(d)).episodes()) == n
        return insert, time.perf_counter() - t0


def plain_tinydb(n: int) -> tuple[float, float]:
    from tinydb import TinyDB
    with tempfile.TemporaryDirectory() as d:
        db = TinyDB(Path(d, "db.json"))
        t0 = time.perf_counter()
        for i in range(n):
            db.table("episodes").insert(episode(i, "run"))
        db.close()
        insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert len(TinyDB(Path(d, "db.json")).table("episodes").all()) == n
        return insert, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--baseline-n", type=int, default=2_000,
                    help="plain tinydb is quadratic; it is measured on this many and scaled (see the note)")
    args = ap.parse_args()
    n = 300 if args.quick else args.n
    bn = 100 if args.quick else min(args.baseline_n, n)
    oi, orl = ours(n, per_koan=3, per_run=150)
    bi, brl = plain_tinydb(bn)
    # Plain tinydb rewrites the whole file per insert: cost grows with n^2; scale the measured time.
    scaled = bi * (n / bn) ** 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [["sleepy Store (cached, atomic, flush per koan)", n, f"{oi:.2f}", f"{orl:.2f}", "1.0x"],
            [f"plain tinydb, measured at {bn}", bn, f"{bi:.2f}", f"{brl:.2f}", ""],
            [f"plain tinydb, scaled to {n} (x(n/{bn})^2)", n, f"{scaled:.0f}", "", f"{scaled / oi:.0f}x slower"]]
    body = (table(["store", "episodes", "insert s", "reload s", "ratio"], rows)
            + f"\n\nInsert speed-up at {n}: {scaled / oi:.0f}x (goal: at least 50x). Measured-size ratio at {bn}: "
              f"{bi / (oi * bn / n):.0f}x per episode. Peak RSS of this process: {peak:.0f} MiB.")
    record("State: episode store", " ".join(["python", "bench/bench_store.py"] + sys.argv[1:]), body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
