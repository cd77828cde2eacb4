"""The eval-leak guard, provenance, dedup and replay of the sleep dataset."""

import json

import pytest

from sleepy_tui.koans import load_corpus
from sleepy_tui.store import Store
from sleepy_tui.training.dataset import LeakGuard, build_dataset, reference_examples


def episode(run, koan, attempt, outcome, split="train", code="pub fn fixed() {}\n", prompt=None):
    return {"run_id": run, "koan_id": koan, "family": "borrow_checker", "split": split, "attempt": attempt,
            "outcome": outcome, "signature": None if outcome == "pass" else "E0382:x", "code": code,
            "prompt": prompt or [{"role": "system", "content": "sys"}, {"role": "user", "content": f"fix {koan} {attempt}"}]}


def read(info):
    return [json.loads(l) for l in info.path.read_text().splitlines()]


def test_sources_provenance_and_no_eval_koans(koan_dir, tmp_path):
    corpus = load_corpus(koan_dir)
    store = Store(tmp_path / "state")
    store.add_episodes([
        episode("d1", "bc_901", 1, "compile_error"), episode("d1", "bc_901", 2, "pass"),     # own pass
        episode("d1", "bc_902", 1, "compile_error"), episode("d1", "bc_902", 2, "compile_error"),  # reference
        episode("e1", "bc_900", 1, "pass", split="eval"),                                      # eval: never
    ])
    store.add_correction({"correction_id": "c1", "koan_id": "bc_902", "code": "pub fn by_hand() {}", "passed": True})
    store.flush()
    info = build_dataset(store, corpus, replay_share=0.0)
    rows = read(info)
    assert info.by_provenance == {"own_pass": 1, "own_sample": 0, "reference": 2, "reference_corpus": 0,
                                  "correction": 1, "replay": 0}
    assert all(r["koan_id"] != "bc_900" for r in rows)
    own = [r for r in rows if r["provenance"] == "own_pass"][0]
    assert own["messages"][1]["content"] == "fix bc_901 2" and own["messages"][-1]["role"] == "assistant"
    ref = [r for r in rows if r["provenance"] == "reference"]
    assert {r["messages"][1]["content"] for r in ref} == {"fix bc_902 1", "fix bc_902 2"}
    assert all(corpus.koans["bc_902"].solution.strip() in r["messages"][-1]["content"] for r in ref)
    assert info.path.name == f"{info.hash}.jsonl"


def test_buggy_code_of_an_eval_koan_is_refused_even_under_another_id(koan_dir, tmp_path):
    corpus = load_corpus(koan_dir)
    store = Store(tmp_path / "state")
    frozen = corpus.koans["bc_900"]
    sneaky = [{"role": "user", "content": "please fix\n" + frozen.buggy}]
    store.add_episodes([episode("d1", "bc_901", 1, "pass", prompt=sneaky), episode("d1", "bc_902", 1, "pass")])
    store.flush()
    info = build_dataset(store, corpus, replay_share=0.0)
    assert info.dropped_leaks == 1 and info.examples == 1
    guard = LeakGuard(corpus.eval_set)
    assert guard.leaks({"koan_id": "bc_900", "messages": []})
    assert not any(guard.leaks(ex) for ex in reference_examples(corpus))


def test_duplicates_dropped_and_replay_mixed_in(koan_dir, tmp_path):
    corpus = load_corpus(koan_dir)
    store = Store(tmp_path / "state")
    store.add_episodes([episode("d1", "bc_901", 1, "pass"), episode("d2", "bc_901", 1, "pass")])
    store.flush()
    first = build_dataset(store, corpus, replay_share=0.0, run_ids=["d1"])
    assert first.examples == 1
    both = build_dataset(store, corpus, replay_share=0.0)
    assert both.dropped_duplicates == 1
    store.add_episode(episode("d3", "bc_902", 1, "pass", code="pub fn other() {}\n"))
    store.flush()
    mixed = build_dataset(store, corpus, replay_share=0.5, run_ids=["d3"])
    assert mixed.by_provenance["replay"] == 1 and mixed.by_provenance["own_pass"] == 1


def test_empty_dataset_is_a_clear_error(koan_dir, tmp_path):
    with pytest.raises(ValueError, match="run a day first"):
        build_dataset(Store(tmp_path / "state"), load_corpus(koan_dir))
