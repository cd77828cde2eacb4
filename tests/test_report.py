"""The results page and its plots, from a state made by the scripted backend through the engine."""

import re

from sleepy_tui.report import PLOTS, build_report


def fence(code):
    return f"```rust\n{code}\n```"


def test_report_tables_match_the_episodes(setup, tmp_path):
    engine, corpus, replies, trainer = setup
    k = corpus.koans
    replies += ["no idea", fence(k["bc_901"].solution), "still no idea", fence(k["bc_900"].solution)]
    engine.cycle()
    path = build_report(engine.store, tmp_path / "report")
    md = path.read_text()
    # what the scripted cycle did, written out by hand (not with the report's own functions): the baseline eval
    # failed bc_900, the eval with the adapter passed it
    assert re.search(r"\| 0 \| 0\.0% \| 0 \| 1 \|", md) and re.search(r"\| 1 \| 100\.0% \| 1 \| 0 \|", md)
    assert "| 0 | 0.0% | 0 | 1 | N/A (baseline) | - | base |" in md
    assert "| 1 | 100.0% | 1 | 0 | none | bc_900 | c001-" in md
    assert "\x1b[" not in md
    assert "| Pass rate | 0.0% | 100.0% | +100.0 pts |" in md
    assert "no significant change" in md  # one koan can't make a significant change
    assert "| `no_code` | 1 | 0 | down |" in md
    assert "**Gate:** promoted" in md and "| borrow_checker | 0/1 | 1/1 |" in md
    for name in PLOTS:
        png = tmp_path / "report" / name
        assert png.exists() and png.stat().st_size > 2000 and png.read_bytes()[:4] == b"\x89PNG"
        assert f"![{name}]({name})" in md


def test_report_without_eval_says_what_to_do(tmp_path):
    from sleepy_tui.store import Store
    md = build_report(Store(tmp_path / "s"), tmp_path / "r").read_text()
    assert "sleepy eval --cycle 0" in md
