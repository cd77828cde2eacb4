"""Every number the CLI, the app and the report show is computed here, from episodes in the store.

Definitions (also in the README):
- pass rate: koans whose last attempt passed / koans attempted.
- steps to green: the attempt number of a koan's first pass; the median is over passed koans.
- repeat error rate (within a run): among retries (attempt >= 2), the share whose signature equals the
  previous attempt's signature: the model made the same mistake again despite the compiler's feedback.
- repeat error rate (across cycles): among koans failed in this cycle's eval and the previous one, the share
  whose final signature is unchanged.
- regressions: koans passed in the previous cycle's eval that fail now; gains: the reverse.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from .records import RunRecord
from .stats import judged, pass_rates


@dataclass
class KoanOutcome:
    koan_id: str
    family: str
    passed: bool
    attempts: int
    steps_to_green: int | None
    final_signature: str | None
    signatures: list[str | None]


def koan_outcomes(episodes: list[dict]) -> dict[str, KoanOutcome]:
    """Per koan of ONE run: its attempts in order, folded into one outcome."""
    by_koan: dict[str, list[dict]] = defaultdict(list)
    for e in episodes:
        by_koan[e["koan_id"]].append(e)
    out = {}
    for kid, eps in by_koan.items():
        eps.sort(key=lambda e: e["attempt"])
        first_pass = next((e["attempt"] for e in eps if e["outcome"] == "pass"), None)
        last = eps[-1]
        out[kid] = KoanOutcome(
            koan_id=kid, family=last.get("family", ""), passed=first_pass is not None, attempts=len(eps),
            steps_to_green=first_pass, final_signature=None if first_pass else last.get("signature"),
            signatures=[e.get("signature") for e in eps])
    return out


def passed_of(outcomes: dict[str, KoanOutcome]) -> dict[str, bool]:
    """Per koan of one run: whether it passed."""
    return {k: o.passed for k, o in outcomes.items()}


def runs_passed(store, run_ids: list[str]) -> list[dict[str, bool]]:
    """Per run of `run_ids`, in order: whether each koan passed (what stats.paired_change compares)."""
    return [passed_of(koan_outcomes(store.episodes(r))) for r in run_ids]


def repeat_error_rate_within(outcomes: dict[str, KoanOutcome]) -> float | None:
    retries = repeats = 0
    for o in outcomes.values():
        for prev, cur in zip(o.signatures, o.signatures[1:]):
            retries += 1
            repeats += prev is not None and prev == cur
    return repeats / retries if retries else None


def repeat_error_rate_across(prev: dict[str, KoanOutcome], cur: dict[str, KoanOutcome]) -> float | None:
    both = [k for k, o in cur.items() if not o.passed and k in prev and not prev[k].passed]
    if not both:
        return None
    return sum(cur[k].final_signature == prev[k].final_signature for k in both) / len(both)


@dataclass
class RunMetrics:
    total: int
    passed: int
    pass_rate: float
    median_steps_to_green: float | None
    repeat_error_rate: float | None
    signature_counts: dict[str, int]         # every failed attempt
    final_signature_counts: dict[str, int]   # the last signature of each failed koan
    per_family: dict[str, dict]              # family -> {passed, total, rate}
    mean_attempts: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def run_metrics(episodes: list[dict]) -> RunMetrics:
    return metrics_of(koan_outcomes(episodes))


def metrics_of(outcomes: dict[str, KoanOutcome]) -> RunMetrics:
    total = len(outcomes)
    passed = sum(o.passed for o in outcomes.values())
    steps = [o.steps_to_green for o in outcomes.values() if o.steps_to_green]
    sigs = Counter(s for o in outcomes.values() for s in o.signatures if s)
    finals = Counter(o.final_signature or "unknown" for o in outcomes.values() if not o.passed)
    fam: dict[str, dict] = defaultdict(lambda: {"passed": 0, "total": 0})
    for o in outcomes.values():
        fam[o.family]["total"] += 1
        fam[o.family]["passed"] += o.passed
    per_family = {f: {**v, "rate": v["passed"] / v["total"]} for f, v in sorted(fam.items())}
    return RunMetrics(
        total=total, passed=passed, pass_rate=passed / total if total else 0.0,
        median_steps_to_green=statistics.median(steps) if steps else None,
        repeat_error_rate=repeat_error_rate_within(outcomes),
        signature_counts=dict(sigs.most_common()), final_signature_counts=dict(finals.most_common()),
        per_family=per_family,
        mean_attempts=statistics.mean(o.attempts for o in outcomes.values()) if outcomes else None)


@dataclass
class CycleRow:
    cycle: int
    run_ids: list[str]
    metrics: RunMetrics                       # of the latest eval run of the cycle
    pass_rates: list[float]                   # one per eval run (repeats)
    regressions: list[str] = field(default_factory=list)
    gains: list[str] = field(default_factory=list)
    repeat_error_rate_across: float | None = None
    adapter: str = ""

    @property
    def pass_rate_mean(self) -> float:
        return statistics.mean(self.pass_rates) if self.pass_rates else 0.0

    @property
    def pass_rate_spread(self) -> float:
        return statistics.pstdev(self.pass_rates) if len(self.pass_rates) > 1 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(pass_rate_mean=self.pass_rate_mean, pass_rate_spread=self.pass_rate_spread)
        return d


def compare(prev: dict[str, KoanOutcome], cur: dict[str, KoanOutcome]) -> tuple[list[str], list[str]]:
    """(regressions, gains) between two evals on the same koans."""
    common = sorted(set(prev) & set(cur))
    return ([k for k in common if prev[k].passed and not cur[k].passed],
            [k for k in common if not prev[k].passed and cur[k].passed])


def cycle_table(runs: list[RunRecord], episodes_of) -> list[CycleRow]:
    """One row per cycle from its finished eval runs (`episodes_of(run_id)` reads a run's episodes)."""
    evals: dict[int, list[RunRecord]] = defaultdict(list)
    for r in runs:
        if r.kind == "eval" and r.status == "done" and r.sample is None:
            evals[r.cycle].append(r)
    rows: list[CycleRow] = []
    prev: dict[str, KoanOutcome] | None = None
    prev_runs: list[dict[str, bool]] = []
    for cycle in sorted(evals):
        rs = sorted(evals[cycle], key=lambda r: r.started)
        outs = [koan_outcomes(episodes_of(r.run_id)) for r in rs]
        outs = [o for o in outs if o]
        if not outs:
            continue
        latest = outs[-1]
        row = CycleRow(cycle=cycle, run_ids=[r.run_id for r in rs], metrics=metrics_of(latest),
                       pass_rates=[metrics_of(o).pass_rate for o in outs],
                       adapter=rs[-1].adapter_id or rs[-1].adapter)
        passed = [passed_of(out) for out in outs]
        if prev is not None:    # judged on every run of each cycle, as the gate does (stats.judged)
            row.regressions, row.gains = judged(pass_rates(prev_runs), pass_rates(passed))
            row.repeat_error_rate_across = repeat_error_rate_across(prev, latest)
        rows.append(row)
        prev, prev_runs = latest, passed
    return rows


@dataclass
class PassAtK:
    """K independent first attempts per koan (`sleepy eval --samples K`)."""
    k: int
    pass_at_1: float                 # mean over koans of the share of samples that passed
    pass_at_k: float                 # share of koans that at least one of the K samples passed
    spread: float                    # standard deviation of the K per-sample pass rates
    per_koan: dict[str, float]       # koan -> share of its samples that passed


def pass_at_k(sample_runs: list[list[dict]]) -> PassAtK:
    """From the episodes of K sample runs over the same koans."""
    outs = [koan_outcomes(eps) for eps in sample_runs]
    koans = sorted(set().union(*outs)) if outs else []
    per_koan = {kid: statistics.mean(o[kid].passed if kid in o else 0 for o in outs) for kid in koans}
    rates = [metrics_of(o).pass_rate for o in outs]
    return PassAtK(k=len(outs), pass_at_1=statistics.mean(per_koan.values()) if koans else 0.0,
                   pass_at_k=(sum(v > 0 for v in per_koan.values()) / len(koans)) if koans else 0.0,
                   spread=statistics.pstdev(rates) if len(rates) > 1 else 0.0, per_koan=per_koan)


def store_cycle_table(store) -> list[CycleRow]:
    return cycle_table(store.runs(), store.episodes)
