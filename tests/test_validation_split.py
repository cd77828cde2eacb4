"""The validation slice: training koans held out of every day and dataset, chosen by a stable rule."""

import json

from sleepy_tui.koans import VALIDATION_MIN, in_validation, load_corpus, root_id
from sleepy_tui.store import Store
from sleepy_tui.training.dataset import build_dataset


def test_the_projects_slice_is_stable_covers_every_family_and_is_held_out_of_the_day():
    corpus = load_corpus()
    held = corpus.validation_set
    assert 0.08 * len(corpus.koans) < len(held) < 0.2 * len(corpus.koans)
    assert {k.family for k in held} == {k.family for k in corpus.train_set}
    assert not {k.id for k in held} & {k.id for k in corpus.train_set + corpus.eval_set}
    assert all(in_validation(k.id) for k in held) and not any(in_validation(k.id) for k in corpus.train_set)
    assert not {k.id for k in held} & {k.id for k in corpus.day_queue()}


def test_a_generated_koan_goes_with_its_source():
    assert root_id("gen_bc_011_drop_clone_fbf40a82") == "bc_011" and root_id("bc_011") == "bc_011"
    assert root_id("tf_bc_swap_pairs") == "tf_bc_swap_pairs"
    corpus = load_corpus()
    for k in corpus.koans.values():
        if k.id.startswith("gen_") and k.split != "eval":
            assert in_validation(k.id) == in_validation(root_id(k.id))


def test_membership_depends_on_the_id_alone(tmp_path):
    """Adding koans never moves one in or out; a small folder keeps every koan for training."""
    corpus = load_corpus()
    ids = sorted(corpus.koans)
    assert [in_validation(i) for i in ids] == [in_validation(i) for i in ids]
    small = tmp_path / "small" / "borrow_checker"
    small.mkdir(parents=True)
    for k in corpus.validation_set[:3]:
        (small / f"{k.id}.toml").write_text(k.path.read_text())
    few = load_corpus(tmp_path / "small")
    assert len(few.koans) == 3 < VALIDATION_MIN and not few.validation_set and len(few.train_set) == 3


def test_validation_episodes_and_corrections_never_become_training_data(tmp_path):
    corpus = load_corpus()
    held, trained = corpus.validation_set[0], corpus.train_set[0]
    store = Store(tmp_path / "state")

    def ep(koan, split, outcome):
        return {"run_id": "r1", "koan_id": koan.id, "family": koan.family, "split": split, "attempt": 1,
                "outcome": outcome, "signature": None, "code": koan.solution,
                "prompt": [{"role": "user", "content": f"fix {koan.id}"}]}

    # a validation run's episodes carry split "validation"; a stray one marked "train" is refused by id too
    store.add_episodes([ep(held, "validation", "pass"), ep(held, "train", "compile_error"), ep(trained, "train", "pass")])
    store.add_correction({"correction_id": "c1", "koan_id": held.id, "code": held.solution, "passed": True})
    store.flush()
    info = build_dataset(store, corpus, replay_share=0.0)
    rows = [json.loads(line) for line in info.path.read_text().splitlines()]
    assert [r["koan_id"] for r in rows] == [trained.id]
