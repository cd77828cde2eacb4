"""Near-copies of frozen koans are found (renamed, re-spaced, lightly edited); distinct koans are not."""

from sleepy_tui.koans import load_corpus
from sleepy_tui.similarity import frozen_programs
from sleepy_tui.training.dataset import LeakGuard
from sleepy_tui.validate import near_copy_problems


def renamed(code: str) -> str:
    for a, b in (("tally", "count_votes"), ("ballots", "papers"), ("ballot", "paper"), ("Ballot", "Paper"),
                 ("counts", "totals"), ("candidate", "choice"), ("turnout", "n")):
        code = code.replace(a, b)
    return code


def test_renamed_respaced_and_edited_copies_are_found():
    corpus = load_corpus()
    index = frozen_programs(corpus.eval_set)
    original = corpus.koans["bc_001"].solution
    assert index.of(renamed(original)).startswith("bc_001")
    assert index.of(original.replace("    ", "\t") + "\n// mine now\n").startswith("bc_001")
    edited = original.replace("let turnout = ballots.len();", "let turnout = ballots.len() + 0;")
    assert index.of(edited).startswith("bc_001")


def test_no_training_koan_is_a_near_copy_of_a_frozen_one():
    corpus = load_corpus()
    assert near_copy_problems(list(corpus.koans.values())) == []


def test_the_leak_guard_drops_a_renamed_frozen_fix():
    corpus = load_corpus()
    guard = LeakGuard(corpus.eval_set)
    train = corpus.train_set[0]
    prompt = [{"role": "user", "content": f"fix this:\n```rust\n{train.buggy}\n```"}]
    leak = {"koan_id": train.id, "messages": prompt + [
        {"role": "assistant", "content": f"```rust\n{renamed(corpus.koans['bc_001'].solution)}\n```"}]}
    honest = {"koan_id": train.id, "messages": prompt + [
        {"role": "assistant", "content": f"```rust\n{train.solution}\n```"}]}
    assert guard.leaks(leak) and not guard.leaks(honest)
