"""Is a before/after change on the same frozen koans real? Paired tests, no scipy needed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from math import comb


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value. b: passed before, failed after; c: failed before, passed after."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def bootstrap_diff(before: dict[str, float], after: dict[str, float], *, samples: int = 2000,
                   seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean pass-rate difference (after - before) over paired koans, with a percentile bootstrap interval.

    Values are per-koan pass frequencies (0/1 for one run, the share of passing runs with repeats)."""
    keys = sorted(set(before) & set(after))
    if not keys:
        return 0.0, 0.0, 0.0
    diffs = [after[k] - before[k] for k in keys]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    lo = means[int((1 - level) / 2 * samples)]
    hi = means[min(samples - 1, int((1 + level) / 2 * samples))]
    return sum(diffs) / n, lo, hi


@dataclass
class PairedChange:
    before: float
    after: float
    p_value: float
    diff: float
    ci_low: float
    ci_high: float
    lost: list[str] = field(default_factory=list)    # regressions (stats.judged)
    won: list[str] = field(default_factory=list)     # gains
    koans: int = 0                                    # koans the runs after hold

    @property
    def b(self) -> int:          # McNemar's names: passed before, failed after
        return len(self.lost)

    @property
    def c(self) -> int:          # failed before, passed after
        return len(self.won)

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def verdict(self) -> str:
        if not self.significant:
            return f"no significant change (McNemar exact p = {self.p_value:.2f})"
        way = "gain" if self.c > self.b else "loss"
        return f"significant {way} (McNemar exact p = {self.p_value:.3f})"


def pass_rates(runs: list[dict[str, bool]]) -> dict[str, float]:
    """Per koan: the share of the runs that passed it (over the runs that hold the koan)."""
    keys = set().union(*runs) if runs else set()
    return {k: sum(r[k] for r in runs if k in r) / sum(k in r for r in runs) for k in sorted(keys)}


def judged(before: dict[str, float], after: dict[str, float]) -> tuple[list[str], list[str]]:
    """(regressions, gains) judged on per-koan pass rates over repeated runs: a koan regressed when it passed in
    more than half of its runs before and in fewer than half after (a gain, the other way round). With one run
    each, that is passed -> failed; a koan at exactly half is neither, so one noisy run in two flips nothing."""
    common = sorted(set(before) & set(after))
    return ([k for k in common if before[k] > 0.5 and after[k] < 0.5],
            [k for k in common if before[k] < 0.5 and after[k] > 0.5])


def paired_change(before_runs: list[dict[str, bool]], after_runs: list[dict[str, bool]]) -> PairedChange:
    """Compare per-koan pass/fail of the before runs with the after runs: pass rates are means over the runs,
    McNemar counts the koans `judged` to have flipped, the bootstrap resamples koans' rate differences."""
    fb, fa = pass_rates(before_runs), pass_rates(after_runs)
    lost, won = judged(fb, fa)
    diff, lo, hi = bootstrap_diff(fb, fa)

    def mean(runs: list[dict[str, bool]]) -> float:
        rates = [sum(r.values()) / len(r) for r in runs if r]
        return sum(rates) / len(rates) if rates else 0.0

    return PairedChange(mean(before_runs), mean(after_runs), mcnemar_exact(len(lost), len(won)), diff, lo, hi,
                        lost, won, len(fa))
