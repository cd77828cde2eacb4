"""Training data for a sleep: verified fixes in chat form, never anything from the frozen eval set.

Sources, each example tagged with its provenance:
- own_pass:   the model's own passing attempt, with the exact prompt it saw.
- own_sample: a passing independent first attempt of expert iteration (`day_samples`): the day missed the koan
              at its first attempt, a fresh sample of that prompt fixed it.
- reference:  a training koan the model failed: the prompts it saw (first and last attempt), answered with
              the koan's reference solution (which the corpus check proves passes).
- reference_corpus: with `reference_fixes = "all"`, the reference fix of every training koan the day did not
              take, with its first prompt: the day's few failures are little to learn from, the corpus holds
              a lesson for every koan.
- correction: a fix a person wrote in the failure review (checked in the sandbox before it was stored).
- replay:     examples from earlier datasets, mixed in against forgetting (settings.replay_share).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..koans import Corpus, Koan
from ..prompts import build_messages
from ..atomic import write_text
from ..store import Store

PROVENANCES = ("own_pass", "own_sample", "reference", "reference_corpus", "correction", "replay")


class EvalLeak(ValueError):
    """An example touches the frozen eval set."""


@dataclass
class DatasetInfo:
    path: Path
    hash: str
    examples: int
    by_provenance: dict[str, int] = field(default_factory=dict)
    dropped_leaks: int = 0
    dropped_duplicates: int = 0

    def to_dict(self) -> dict:
        return {"path": str(self.path), "hash": self.hash, "examples": self.examples,
                "by_provenance": self.by_provenance, "dropped_leaks": self.dropped_leaks,
                "dropped_duplicates": self.dropped_duplicates}


def fenced(code: str) -> str:
    return f"```rust\n{code.strip()}\n```"


def _squash(code: str) -> str:
    return re.sub(r"\s+", "", code)


class LeakGuard:
    """Knows the koans never trained on (the frozen set, the validation slice); says whether an example would
    leak one of them into training: by id, by a verbatim program, or by a near-copy of one as the reply."""

    def __init__(self, eval_koans: list[Koan]):
        from ..similarity import frozen_programs
        self.ids = {k.id for k in eval_koans}
        self.codes = [c for k in eval_koans for c in (_squash(k.buggy), _squash(k.solution)) if len(c) > 40]
        self.near = frozen_programs(eval_koans)

    def leaks(self, example: dict) -> bool:
        if example.get("koan_id") in self.ids:
            return True
        text = _squash(" ".join(m.get("content", "") for m in example["messages"]))
        if any(c in text for c in self.codes):
            return True
        # the reply it learns to write: not even a renamed or lightly edited copy of a frozen koan's program
        target = next((m.get("content", "") for m in reversed(example["messages"]) if m.get("role") == "assistant"), "")
        return self.near.of(target.replace("```rust", "").replace("```", "")) is not None


def _example(koan_id: str, family: str, provenance: str, messages: list[dict], code: str) -> dict:
    msgs = [dict(m) for m in messages if m["role"] != "assistant"] + [{"role": "assistant", "content": fenced(code)}]
    body = json.dumps(msgs, sort_keys=True)
    return {"id": hashlib.sha256(body.encode()).hexdigest()[:16], "koan_id": koan_id, "family": family,
            "provenance": provenance, "messages": msgs}


def collect_examples(store: Store, corpus: Corpus, run_ids: list[str] | None = None) -> list[dict]:
    """Examples from day runs (all of them, or `run_ids`) and from the person's corrections."""
    wanted = set(run_ids) if run_ids is not None else None
    sampled = {r.run_id for r in store.runs() if r.sample is not None}     # expert iteration's runs
    by_koan: dict[tuple[str, str], list[dict]] = {}
    for e in store.episodes():
        if e.get("split") != "train" or (wanted is not None and e["run_id"] not in wanted):
            continue
        by_koan.setdefault((e["run_id"], e["koan_id"]), []).append(e)
    out: list[dict] = []
    for (run_id, kid), eps in sorted(by_koan.items()):
        eps.sort(key=lambda e: e["attempt"])
        passing = [e for e in eps if e["outcome"] == "pass"]
        if passing:
            e = passing[0]
            out.append(_example(kid, e["family"], "own_sample" if run_id in sampled else "own_pass", e["prompt"],
                                e["code"]))
            continue
        if run_id in sampled:      # a missed sample: the day's own episodes already gave the reference fix
            continue
        koan = corpus.koans.get(kid)
        if koan is None or koan.split != "train":
            continue
        for e in {eps[0]["attempt"]: eps[0], eps[-1]["attempt"]: eps[-1]}.values():
            out.append(_example(kid, koan.family, "reference", e["prompt"], koan.solution))
    for c in store.corrections():
        koan = corpus.koans.get(c.get("koan_id"))
        if c.get("passed") and koan is not None and koan.split == "train":
            prompt = c.get("prompt") or build_messages(koan)
            out.append(_example(koan.id, koan.family, "correction", prompt, c["code"]))
    return out


def reference_examples(corpus: Corpus, koans: list[Koan] | None = None, sandbox=None,
                       provenance: str = "reference") -> list[dict]:
    """Reference fixes for training koans with the first-attempt prompt (buggy program + its errors)."""
    out = []
    for k in koans if koans is not None else corpus.train_set:
        diags = sandbox.check(k.buggy, k.tests).diagnostics if sandbox else []
        out.append(_example(k.id, k.family, provenance, build_messages(k, buggy_diagnostics=diags), k.solution))
    return out


def build_dataset(store: Store, corpus: Corpus, *, replay_share: float = 0.3, run_ids: list[str] | None = None,
                  extra: list[dict] | None = None, seed: int = 0) -> DatasetInfo:
    """Write a deduplicated, leak-free JSONL dataset under state/datasets/ and return what went in."""
    guard = LeakGuard(corpus.eval_set + corpus.validation_set)   # neither is ever trained on
    fresh = collect_examples(store, corpus, run_ids) + list(extra or [])
    examples: list[dict] = []
    seen: set[str] = set()
    leaks = dups = 0
    for ex in fresh:
        if guard.leaks(ex):
            leaks += 1
            continue
        if ex["id"] in seen:
            dups += 1
            continue
        seen.add(ex["id"])
        examples.append(ex)
    # Replay: earlier datasets' examples that are not already in this one.
    if replay_share > 0 and examples:
        pool = [ex for ex in _previous_examples(store) if ex["id"] not in seen and not guard.leaks(ex)]
        want = int(round(len(examples) * replay_share / (1 - replay_share)))
        rng = random.Random(seed)
        for ex in rng.sample(pool, min(want, len(pool))):
            seen.add(ex["id"])
            examples.append({**ex, "provenance": "replay"})
    if not examples:
        raise ValueError("no training examples: run a day first (`sleepy run`), or add corrections")
    examples.sort(key=lambda ex: ex["id"])
    text = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = store.dir / "datasets" / f"{digest}.jsonl"
    write_text(path, text)
    counts = {p: sum(ex["provenance"] == p for ex in examples) for p in PROVENANCES}
    info = DatasetInfo(path, digest, len(examples), counts, leaks, dups)
    store.set_value("latest_dataset", info.to_dict())
    return info


def _previous_examples(store: Store) -> list[dict]:
    out = []
    for p in sorted((store.dir / "datasets").glob("*.jsonl")):
        with open(p, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return out
