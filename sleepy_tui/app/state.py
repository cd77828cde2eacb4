"""What the app shows, read from the engine: plain data built in worker threads (no widgets here).

Every number comes from sleepy_tui.metrics, the module `sleepy status` and `sleepy report` read too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..koans import Corpus, Koan, KoanError
from ..engine import AdapterRecord, RunRecord
from ..metrics import CycleRow, KoanOutcome, koan_outcomes, run_metrics, store_cycle_table


@dataclass
class StateSnapshot:
    """Everything the main screen restores on start and refreshes after a run, a training or a cycle."""
    corpus: Corpus | None
    corpus_error: str = ""
    cycle: int = 0
    cycle_rows: list[CycleRow] = field(default_factory=list)
    loss_curve: list[dict] = field(default_factory=list)   # the latest adapter's [{"step", "loss"}]
    current_adapter: AdapterRecord | None = None
    last_run: RunRecord | None = None
    last_outcomes: dict[str, KoanOutcome] = field(default_factory=dict)
    family_rates: dict[str, dict] = field(default_factory=dict)  # family -> {passed, total, rate}
    family_source: str = ""                                      # which run the family rates describe
    resumable: bool = False                                      # a dataset exists to resume training on
    warnings: list[str] = field(default_factory=list)


def read_state(engine) -> StateSnapshot:
    store = engine.store
    corpus, corpus_error = None, ""
    try:
        corpus = engine.corpus()
    except KoanError as e:
        corpus_error = str(e)
    rows = store_cycle_table(store)
    adapters = store.adapters()
    runs = store.runs()
    last = runs[-1] if runs else None
    outcomes = koan_outcomes(store.episodes(last.run_id)) if last else {}
    if rows:
        family_rates, source = rows[-1].metrics.per_family, f"cycle {rows[-1].cycle} eval"
    elif last:
        family_rates, source = run_metrics(store.episodes(last.run_id)).per_family, f"last {last.kind} run"
    else:
        family_rates, source = {}, ""
    warnings = list(store.warnings)
    if corpus:
        warnings += corpus.errors
    return StateSnapshot(
        corpus=corpus, corpus_error=corpus_error, cycle=engine.current_cycle(), cycle_rows=rows,
        loss_curve=adapters[-1].loss_curve if adapters else [], current_adapter=engine.current_adapter(),
        last_run=last, last_outcomes=outcomes, family_rates=family_rates, family_source=source,
        resumable=engine.latest_dataset() is not None, warnings=warnings)


@dataclass
class FailureItem:
    """One failed koan of a run, with every attempt, for the failure review."""
    koan_id: str
    family: str
    koan: Koan | None              # None when the koan is no longer in the corpus
    outcome: KoanOutcome
    episodes: list[dict]
    flagged: bool = False

    @property
    def first_prompt(self) -> list[dict]:
        return self.episodes[0].get("prompt", []) if self.episodes else []

    @property
    def last_code(self) -> str:
        return next((e["code"] for e in reversed(self.episodes) if e.get("code")), "")


def read_failures(engine, run_id: str | None) -> tuple[RunRecord | None, list[FailureItem]]:
    """The failed koans of `run_id` (default: the latest run), in the run's order."""
    store = engine.store
    run = store.run(run_id) if run_id else (store.runs() or [None])[-1]
    if run is None:
        return None, []
    episodes = store.episodes(run.run_id)
    outcomes = koan_outcomes(episodes)
    try:
        koans = engine.corpus().koans
    except KoanError:
        koans = {}
    flagged = {f["koan_id"] for f in store.flags()}
    order = {kid: i for i, kid in enumerate(run.koan_ids)}
    items = []
    for kid, outcome in sorted(outcomes.items(), key=lambda kv: order.get(kv[0], len(order))):
        if outcome.passed:
            continue
        eps = sorted((e for e in episodes if e["koan_id"] == kid), key=lambda e: e["attempt"])
        items.append(FailureItem(kid, outcome.family, koans.get(kid), outcome, eps, kid in flagged))
    return run, items


def koan_history(store, koan_id: str) -> list[dict]:
    """Every episode of one koan across all runs, oldest run first."""
    return [e for e in store.episodes() if e["koan_id"] == koan_id]
