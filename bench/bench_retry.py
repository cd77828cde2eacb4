"""Retries that explore: the old loop (strategy `fixed`) against the new one (`explore`) on the frozen set.

Same model, same koans, same attempt budget. Reports the pass rate, median steps to green, the share of koans
failed at attempt 1 that a later attempt solved (goal: at least 40%), distinct candidates per such koan
(goal: every attempt distinct), candidates equal to the broken program, compiles, and wall time per koan.

Each strategy's eval is kept in its own state folder (default state/bench_retry/<model>/<strategy>): a finished
one is reused, so an interrupted benchmark continues with the strategy it had not finished.
usage: python bench/bench_retry.py [--quick] [--model NAME] [--count N] [--max-attempts N] [--strategies a,b]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, record, table

from sleepy_tui.config import Settings
from sleepy_tui.engine import Engine
from sleepy_tui.metrics import run_metrics
from sleepy_tui.retry import candidate_key


def evaluate(state: Path, strategy: str, args, koan_count: int) -> tuple[list[dict], float]:
    settings = Settings(backend=args.backend, model=args.model, state_dir=str(state), max_attempts=args.max_attempts,
                        max_tokens=args.max_tokens, retry_strategy=strategy)
    engine = Engine(settings)
    try:
        done = [r for r in engine.runs(kind="eval") if r.status == "done" and len(r.koan_ids) == koan_count]
        if done:
            run = done[-1]
            print(f"{strategy}: reusing {run.run_id} from {state}", file=sys.stderr)
        else:
            koans = interleaved(engine.corpus().eval_set)[:koan_count]
            t0 = time.time()
            result = engine.run_agent(koans, kind="eval", cycle=0, adapter_id="")
            print(f"{strategy}: {result.passed}/{len(koans)} in {time.time() - t0:.0f} s", file=sys.stderr)
            run = engine.run(result.run_id)
        eps = engine.episodes(run.run_id)
        return eps, ((run.finished or run.started) - run.started) / max(1, len(run.koan_ids))
    finally:
        engine.close()


def interleaved(koans: list) -> list:
    """One koan of each family in turn, so that `--count N` below 30 still covers every family."""
    import itertools
    by_family: dict[str, list] = {}
    for k in koans:
        by_family.setdefault(k.family, []).append(k)
    rows = itertools.zip_longest(*(by_family[f] for f in sorted(by_family)))
    return [k for row in rows for k in row if k is not None]


def summarize(eps: list[dict], koans: dict[str, dict]) -> dict:
    by_koan: dict[str, list[dict]] = {}
    for e in sorted(eps, key=lambda e: e["attempt"]):
        by_koan.setdefault(e["koan_id"], []).append(e)
    failed_first = [k for k, es in by_koan.items() if es[0]["outcome"] != "pass"]
    solved_later = [k for k in failed_first if any(e["outcome"] == "pass" for e in by_koan[k])]
    distinct, unchanged = [], 0
    for k in failed_first:
        keys = [candidate_key(e["code"]) for e in by_koan[k] if e["code"]]
        distinct.append(len(set(keys)) / len(by_koan[k]))
        buggy = candidate_key(koans[k]["buggy"]) if k in koans else None
        unchanged += sum(key == buggy for key in keys)
    m = run_metrics(eps)
    return {"pass_rate": m.pass_rate, "passed": m.passed, "total": m.total,
            "median_steps": m.median_steps_to_green, "failed_first": len(failed_first),
            "solved_later": len(solved_later), "distinct": statistics.mean(distinct) if distinct else None,
            "unchanged": unchanged, "attempts": len(eps), "compiles": sum(e["check_ms"] > 0 for e in eps)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run: the fake backend, 3 koans")
    ap.add_argument("--backend", default="embedded")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--max-attempts", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=768)
    ap.add_argument("--strategies", default="fixed,explore")
    ap.add_argument("--state", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.backend, args.model, args.count, args.max_attempts = "fake", "", 3, 2
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    base = args.state or ROOT / "state" / "bench_retry" / (args.model or args.backend)
    if args.quick:
        import tempfile
        base = Path(tempfile.mkdtemp(prefix="bench-retry-"))
    from sleepy_tui.koans import load_corpus
    koans = {k.id: {"buggy": k.buggy} for k in load_corpus().eval_set}
    rows, summaries = [], {}
    for strategy in strategies:
        eps, per_koan_s = evaluate(base / strategy, strategy, args, args.count)
        s = summarize(eps, koans)
        summaries[strategy] = s
        later = f"{s['solved_later']}/{s['failed_first']}" + (
            f" ({s['solved_later'] / s['failed_first']:.0%})" if s["failed_first"] else "")
        rows.append([strategy, f"{s['pass_rate']:.1%} ({s['passed']}/{s['total']})",
                     f"{s['median_steps']:g}" if s["median_steps"] else "-", later,
                     f"{s['distinct']:.2f}" if s["distinct"] is not None else "-", s["unchanged"],
                     f"{s['compiles']}/{s['attempts']}", f"{per_koan_s:.1f}"])
    body = (f"{args.count} frozen koans (one family after another in turn), {args.backend} {args.model or ''}, "
            f"up to {args.max_attempts} attempts, "
            f"{args.max_tokens} tokens per reply; one run per strategy.\n\n"
            + table(["strategy", "pass rate", "median steps", "failed at 1, solved later",
                     "distinct candidates per attempt (failed at 1)", "broken program sent back", "compiles/attempts",
                     "s per koan"], rows)
            + "\n\nGoals (explore): at least 40% of the koans failed at attempt 1 solved later; every attempt "
              "distinct (1.00).")
    record("Retries (fixed vs explore)", " ".join(["python", "bench/bench_retry.py"] + sys.argv[1:]), body,
           args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
