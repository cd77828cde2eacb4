"""Defects of the engine's rules found in review (issue 14), each with the test that failed before its fix."""

from sleepy_tui.cli import main
from sleepy_tui.koans import load_corpus, read_manifest


def test_freeze_keeps_an_edited_frozen_koan_in_the_frozen_set(koan_dir, capsys):
    path = koan_dir / "borrow_checker" / "bc_900.toml"
    path.write_text(path.read_text().replace("Report total and count", "Report the total and the count"))
    before = load_corpus(koan_dir)
    assert "bc_900" not in before.koans and "bc_900" in before.edited  # refused until re-frozen
    assert main(["koans", "freeze", "--koans", str(koan_dir)]) == 0
    after = load_corpus(koan_dir)
    assert set(read_manifest(koan_dir / "frozen_eval.toml")) == {"bc_900"}
    assert after.koans["bc_900"].split == "eval" and not after.errors
    # naming it works too (it used to fail with "unknown koan id")
    path.write_text(path.read_text().replace("the total", "a total"))
    assert main(["koans", "freeze", "bc_900", "--koans", str(koan_dir)]) == 0
    assert load_corpus(koan_dir).koans["bc_900"].split == "eval"
    capsys.readouterr()
