"""`sleepy koans import rustlings`: a tiny exercise tree written here (no network) becomes a koan folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

from sleepy_tui.cli import main
from sleepy_tui.koans import load_corpus
from sleepy_tui.rustlings import split_tests

TESTS = '''
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles() {
        assert_eq!(double(&[1, 2]), vec![2, 4]);
        let braces = "}{";
        assert_eq!(braces.len(), 2);
    }
}
'''

# name -> (topic, exercise, solution or None, hint)
TREE = {
    # compiles, fails its test: a behaviour bug
    "vecs9": ("05_vecs", "fn double(v: &[i32]) -> Vec<i32> {\n    // TODO: double them\n    v.to_vec()\n}\n" + TESTS,
              "fn double(v: &[i32]) -> Vec<i32> {\n    v.iter().map(|x| x * 2).collect()\n}\n" + TESTS, "Use map."),
    # does not compile: E0308
    "if9": ("03_if", 'fn double(v: &[i32]) -> Vec<i32> {\n    "two"\n}\n' + TESTS,
            "fn double(v: &[i32]) -> Vec<i32> {\n    v.iter().map(|x| x + x).collect()\n}\n" + TESTS, ""),
    # already passes
    "done9": ("05_vecs", "fn double(v: &[i32]) -> Vec<i32> {\n    v.iter().map(|x| x * 2).collect()\n}\n" + TESTS,
              "fn double(v: &[i32]) -> Vec<i32> {\n    v.iter().map(|x| 2 * x).collect()\n}\n" + TESTS, ""),
    # no tests module
    "intro9": ("00_intro", "fn main() {\n    println!(\"hi\")\n}\n", "fn main() {\n    println!(\"hi\");\n}\n", ""),
    # no solution
    "lonely9": ("05_vecs", "fn double(v: &[i32]) -> Vec<i32> {\n    v.to_vec()\n}\n" + TESTS, None, ""),
    # the fix is in the tests only (the code differs in a comment)
    "tests9": ("17_tests", "fn double(v: &[i32]) -> Vec<i32> {\n    // TODO\n    v.iter().map(|x| x * 2).collect()\n}\n"
               + TESTS.replace("vec![2, 4]", "todo!()"),
               "fn double(v: &[i32]) -> Vec<i32> {\n    v.iter().map(|x| x * 2).collect()\n}\n" + TESTS, ""),
    # the solution fails the exercise's tests
    "wrong9": ("05_vecs", "fn double(v: &[i32]) -> Vec<i32> {\n    v.to_vec()\n}\n" + TESTS,
               "fn double(v: &[i32]) -> Vec<i32> {\n    v.iter().map(|x| x * 3).collect()\n}\n" + TESTS, ""),
}


def write_tree(root: Path) -> Path:
    info = ["format_version = 1", ""]
    for name, (topic, exercise, solution, hint) in TREE.items():
        (root / "exercises" / topic).mkdir(parents=True, exist_ok=True)
        (root / "exercises" / topic / f"{name}.rs").write_text(exercise)
        if solution is not None:
            (root / "solutions" / topic).mkdir(parents=True, exist_ok=True)
            (root / "solutions" / topic / f"{name}.rs").write_text(solution)
        info += ["[[exercises]]", f'name = "{name}"', f'dir = "{topic}"', f'hint = """\n{hint}"""', ""]
    (root / "info.toml").write_text("\n".join(info))
    (root / "LICENSE").write_text("MIT License\n\nCopyright (c) 2016 Carol (Nichols || Goulding)\n")
    return root


def test_split_tests_cuts_the_module_on_tokens():
    program, tests = split_tests("fn f() {}\n" + TESTS + "\nfn after() {}\n")
    assert program == "fn f() {}\n\n\nfn after() {}\n"
    assert "use super::*;" not in tests and textwrap.dedent(tests).startswith("#[test]\nfn doubles()")
    assert tests.rstrip().endswith('assert_eq!(braces.len(), 2);\n    }')
    assert split_tests("fn f() {}\n") is None


def test_import_keeps_the_fair_exercises_and_says_why_it_skips_the_others(tmp_path, capsys):
    src, out = write_tree(tmp_path / "rustlings"), tmp_path / "koans"
    code = main(["--state", str(tmp_path / "state"), "koans", "import", "rustlings", str(src), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped done9: the exercise already passes its tests" in printed
    assert "skipped intro9: no #[cfg(test)] mod tests" in printed
    assert "skipped lonely9: no reference solution" in printed
    assert "skipped tests9: the solution differs only in the tests" in printed
    assert "skipped wrong9: the reference solution does not pass the exercise's tests (test_failure:assert_eq)" in printed
    assert f"wrote 2 koan(s) to {out} (1 E0308, 1 test_failure); skipped 5 exercise(s)" in printed

    corpus = load_corpus(out)
    assert corpus.errors == [] and sorted(corpus.koans) == ["rl_if9", "rl_vecs9"]
    vecs = corpus.koans["rl_vecs9"]
    assert (vecs.family, vecs.expected_error, vecs.hint) == ("vecs", "test_failure", "Use map.")
    assert "mod tests" not in vecs.buggy and "mod tests" not in vecs.solution and "// TODO" in vecs.buggy
    assert "fn doubles()" in vecs.tests and "use super::*" not in vecs.tests
    assert (corpus.koans["rl_if9"].family, corpus.koans["rl_if9"].expected_error) == ("if", "E0308")
    readme = (out / "README.md").read_text()
    assert "rustlings" in readme and "MIT" in readme and "github.com/rust-lang/rustlings" in readme
    assert (out / "LICENSE").read_text().startswith("MIT License")

    # the folder passes `koans check` (any family name; a behaviour bug held to its rule)
    assert main(["--state", str(tmp_path / "state"), "koans", "check", str(out)]) == 0
    assert "checked 2 koans: ok" in capsys.readouterr().out


def test_a_folder_that_is_no_rustlings_checkout_is_one_line(tmp_path, capsys):
    code = main(["--state", str(tmp_path / "state"), "koans", "import", "rustlings", str(tmp_path), "--out",
                 str(tmp_path / "out")])
    assert code == 2 and "not a rustlings checkout (no exercises/ folder)" in capsys.readouterr().err
