"""How many more verified fixes does expert iteration harvest than the day's retries? (issue 19)

One day on the first N training koans of the day queue (default settings: 5 attempts with the compiler's
feedback, the explore strategy), then `day_samples` = K independent first attempts at each koan the day did not
solve at its first attempt (Engine._day_samples, as `sleepy cycle --day-samples K` runs it), then the dataset
the cycle would train on. Baseline and contender come from the same run: the fixes the retries found against
those the samples added, per generation spent.

Kept under --work and reused when run again (the store's finished runs).

usage: python bench/bench_expert_iteration.py [--model NAME] [--count N] [--samples K] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from common import record, table


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="SmolLM2, 2 koans, 1 sample: a smoke test, not recorded")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="a model of the table")
    ap.add_argument("--count", type=int, default=20, help="training koans in the day")
    ap.add_argument("--samples", type=int, default=2, help="K: independent first attempts per missed koan")
    ap.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: every CPU but one)")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "sleepy-tui" / "bench" / "expert_iteration"))
    args = ap.parse_args()
    if args.quick:
        import tempfile
        args.model, args.count, args.samples = "smollm2-135m", 2, 1
        args.work = tempfile.mkdtemp(prefix="bench_expert_iteration_")

    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine
    from sleepy_tui.metrics import koan_outcomes
    state = Path(args.work) / f"{args.model}-{args.count}"
    engine = Engine(Settings(backend="embedded", model=args.model, threads=args.threads, day_samples=args.samples,
                             max_tokens=256 if args.quick else Settings().max_tokens,
                             state_dir=str(state)))
    try:
        corpus = engine.corpus()
        koans = engine.day_koans(args.count, corpus=corpus)
        t0 = time.perf_counter()
        done = [r for r in engine.runs("day") if r.sample is None and r.status == "done" and r.every_koan_finished
                and set(r.koan_ids) == {k.id for k in koans}]
        day = done[-1].run_id if done else engine.run_agent(koans, kind="day", cycle=1).run_id
        day_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        samples = engine._day_samples(1, [day], corpus, lambda e: None, threading.Event(), "embedded")
        samples_s = time.perf_counter() - t1
        dataset = engine.build_dataset(run_ids=[day, *samples], corpus=corpus)
        outs = koan_outcomes(engine.episodes(day))
        day_gens = sum(o.attempts for o in outs.values())
        first = {k for k, o in outs.items() if o.steps_to_green == 1}
        later = {k for k, o in outs.items() if o.passed and o.steps_to_green != 1}
        sampled = [koan_outcomes(engine.episodes(i)) for i in samples]
        sample_gens = sum(len(s) for s in sampled)
        by_sample = {k for s in sampled for k, o in s.items() if o.passed}
        sample_fixes = sum(o.passed for s in sampled for o in s.values())
    finally:
        engine.close()
    missed = len(outs) - len(first)

    def per100(fixes: int, gens: int) -> str:
        return f"{100 * fixes / gens:.1f}" if gens else "-"
    rows = [["day, attempt 1", len(outs), len(first), len(outs), per100(len(first), len(outs)), "-"],
            ["day, attempts 2-5 (feedback)", missed, len(later), day_gens - len(outs),
             per100(len(later), day_gens - len(outs)), f"{day_s:.0f} (whole day)"],
            [f"expert iteration, {args.samples} sample(s) a koan", missed, len(by_sample), sample_gens,
             per100(sample_fixes, sample_gens), f"{samples_s:.0f}"]]
    body = (f"{args.model} in llama.cpp, the first {len(outs)} training koans of the day queue, default settings "
            f"(5 attempts, explore); then {args.samples} independent first attempt(s) (temperature of the strategy's "
            f"samples, a seed each) at the {missed} koans the day did not solve at attempt 1.\n\n"
            + table(["stage", "koans tried", "koans fixed", "generations", "verified fixes per 100 generations",
                     "wall s"], rows)
            + f"\n\nFixed by a sample and by no attempt of the day: {len(by_sample - first - later)} "
              f"({', '.join(sorted(by_sample - first - later)) or 'none'}); fixed by a sample and only after "
              f"feedback in the day: {len(by_sample & later)}. Verified samples in all: {sample_fixes}. "
              f"The dataset the cycle would train on: {dataset.examples} examples, {dataset.by_provenance}.")
    cmd = f"python bench/bench_expert_iteration.py --model {args.model} --count {args.count} --samples {args.samples}"
    record("Expert iteration: retries against fresh samples", cmd, body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
