"""Agent overhead: a frozen-set eval with the embedded model; the share of wall time spent generating.

Everything that is not generation (prompt building, checking, storage) should overlap generation or cost
little: goal at least 90% of wall time generating.
usage: python bench/bench_agent.py [--quick] [--count N] [--max-attempts N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from common import record, table

from sleepy_tui.config import Settings
from sleepy_tui.engine import Engine
from sleepy_tui.metrics import run_metrics


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--max-attempts", type=int, default=5)
    args = ap.parse_args()
    count, attempts, tokens = (2, 1, 32) if args.quick else (args.count, args.max_attempts, 768)
    with tempfile.TemporaryDirectory() as state:
        engine = Engine(Settings(backend="embedded", state_dir=state, max_attempts=attempts, max_tokens=tokens))
        koans = engine.corpus().eval_set[:count]
        backend = engine.make_backend()
        backend.chat([{"role": "user", "content": "hi"}])  # load the model outside the measurement
        t0 = time.perf_counter()
        result = engine.run_agent(koans, kind="eval", cycle=0, backend=backend)
        wall = time.perf_counter() - t0
        eps = engine.store.episodes(result.run_id)
        engine.close()
    gen = sum(e["generation_ms"] for e in eps) / 1000
    check = sum(e["check_ms"] for e in eps) / 1000
    m = run_metrics(eps)
    rows = [["wall time", f"{wall:.1f}", "100%"], ["generating", f"{gen:.1f}", f"{gen / wall:.1%}"],
            ["checking (in the loop)", f"{check:.1f}", f"{check / wall:.1%}"],
            ["everything else", f"{wall - gen - check:.1f}", f"{(wall - gen - check) / wall:.1%}"]]
    body = (f"{len(koans)} frozen koans, up to {attempts} attempts, {len(eps)} attempts made, pass rate "
            f"{m.pass_rate:.1%}, embedded model.\n\n" + table(["part", "seconds", "share"], rows)
            + f"\n\nGeneration share: {gen / wall:.1%} (goal: at least 90%).")
    record("Agent overhead", " ".join(["python", "bench/bench_agent.py"] + sys.argv[1:]), body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
