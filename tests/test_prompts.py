from pathlib import Path

from sleepy_tui.diagnostics import Diagnostic
from sleepy_tui.koans import parse_koan
from sleepy_tui.prompts import build_messages, extract_code, hints_for
from tests.conftest import mini_koan

KOAN = parse_koan(mini_koan("bc_901"), Path("bc_901.toml"))
E0382 = Diagnostic("error", "E0382", "borrow of moved value: `readings`", 8, 17, "error[E0382]: borrow of moved value")


def test_extracts_fenced_rust_block():
    reply = "Here you go:\n```rust\npub fn f() -> i32 { 1 }\n```\nThis works because..."
    assert extract_code(reply) == "pub fn f() -> i32 { 1 }\n"


def test_prefers_rust_block_and_the_longest():
    reply = "```\nnot code\n```\n```rust\nfn a() {}\n```\n```rust\npub fn main_one() { let x = 1; }\n```"
    assert extract_code(reply) == "pub fn main_one() { let x = 1; }\n"


def test_unfenced_rust_is_taken_whole_and_unclosed_fence_works():
    assert extract_code("pub fn f() -> i32 { 2 }") == "pub fn f() -> i32 { 2 }\n"
    assert extract_code("```rust\npub fn f() -> i32 { 3 }") == "pub fn f() -> i32 { 3 }\n"


def test_no_code_and_garbage():
    assert extract_code("I am not sure what to do.") == ""
    assert extract_code("") == ""
    assert extract_code("\x00\x01\x02 ``` ```") == ""
    assert extract_code(None) == ""  # type: ignore[arg-type]


def test_echoed_test_module_is_cut():
    reply = ("```rust\npub fn f() -> i32 { 1 }\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n"
             "    #[test]\n    fn t() {}\n}\n```")
    assert extract_code(reply) == "pub fn f() -> i32 { 1 }\n"


def test_hints_come_from_the_table():
    assert any("Borrow it" in h for h in hints_for([E0382]))
    clone = Diagnostic("error", "E0277", "the trait bound `P: Clone` is not satisfied", 1, 1, "")
    assert hints_for([clone])[0].startswith("The type must implement Clone")
    assert "no Rust code" in hints_for([], "no_code")[0]
    assert hints_for([Diagnostic("warning", "E0382", "x", 1, 1, "")]) == []


def test_first_prompt_has_code_errors_and_hint():
    msgs = build_messages(KOAN, buggy_diagnostics=[E0382])
    user = msgs[1]["content"]
    assert msgs[0]["role"] == "system" and KOAN.title in user
    assert "let t = total(readings);" in user and "error[E0382]" in user and "Hints:" in user
    assert "previous attempt" not in user


def test_retry_prompt_shows_previous_attempt_and_its_errors():
    msgs = build_messages(KOAN, buggy_diagnostics=[E0382], previous="pub fn total() {}",
                          previous_diagnostics=[E0382], previous_signature="E0382:borrow_of_moved_value")
    user = msgs[1]["content"]
    assert "Your previous attempt:" in user and "pub fn total() {}" in user and "It failed to compile" in user
    failed_tests = build_messages(KOAN, previous="pub fn x() {}", previous_failure="assertion `left == right` failed",
                                  previous_signature="test_failure:assert_eq")[1]["content"]
    assert "It failed its tests" in failed_tests and "left == right" in failed_tests
    nocode = build_messages(KOAN, previous_signature="no_code")[1]["content"]
    assert "contained no Rust code" in nocode


# ---- behaviour bugs: hints and the test lines an error points into --------------------------------------------

BEHAVIOUR = parse_koan('''
id = "tf_901"
family = "borrow_checker"
title = "Count the even numbers"
expected_error = "test_failure"
buggy = """
pub fn evens(v: &[i32]) -> usize {
    v.iter().filter(|x| *x % 2 == 1).count()
}
"""
solution = """
pub fn evens(v: &[i32]) -> usize {
    v.iter().filter(|x| *x % 2 == 0).count()
}
"""
tests = """
    fn sample() -> Vec<i32> {
        vec![1, 2, 4, 7]
    }

    #[test]
    fn counts_evens() {
        assert_eq!(evens(&sample()), 2);
    }

    #[test]
    fn none_in_empty() {
        assert_eq!(evens(&[]), 0);
    }
"""
''', Path("tf_901.toml"))


def test_test_failures_get_hints_by_signature_else_the_general_row():
    assert "off-by-one" in hints_for([], "test_failure:assert_eq")[0]
    assert "`todo!()`" in hints_for([], "test_failure:todo")[0]
    assert hints_for([], "test_failure:tests_not_run")[0].startswith("It compiles, but a test fails")


def test_a_behaviour_bug_is_shown_its_tests_on_the_first_attempt():
    user = build_messages(BEHAVIOUR, buggy_diagnostics=[])[1]["content"]
    assert "It compiles, but fails a test. The tests:" in user
    assert "#[test]\nfn counts_evens() {\n    assert_eq!(evens(&sample()), 2);\n}" in user
    assert "fn sample()" not in user                             # test functions only, not the helpers
    assert "It compiles, but a test fails" in user               # the general hint
    compile_koan = build_messages(KOAN, buggy_diagnostics=[E0382])[1]["content"]
    assert "#[test]" not in compile_koan                         # an error in the program shows no tests


def test_a_retry_is_shown_the_failing_test_only():
    output = ("test tests::counts_evens ... \nthread 'tests::counts_evens' (3) panicked at main.rs:14:9:\n"
              "assertion `left == right` failed\n  left: 1\n right: 2\nFAILED\ntest tests::none_in_empty ... ok\n")
    user = build_messages(BEHAVIOUR, previous="pub fn evens(v: &[i32]) -> usize { 1 }", previous_failure=output,
                          previous_signature="test_failure:assert_eq")[1]["content"]
    assert "The failing test:\n```rust\n#[test]\nfn counts_evens()" in user
    assert "fn none_in_empty" not in user and "off-by-one" in user


def test_a_compile_error_inside_the_tests_shows_that_test():
    code = "pub fn evens(v: Vec<i32>) -> usize {\n    v.len()\n}\n"     # 3 lines, the tests start 5 lines below
    # line 12 of the combined source is line 7 of the tests: `assert_eq!(evens(&sample()), 2);`
    wrong_arg = Diagnostic("error", "E0308", "mismatched types", 3 + 5 + 7, 25, "error[E0308]: mismatched types")
    user = build_messages(BEHAVIOUR, previous=code, previous_diagnostics=[wrong_arg],
                          previous_signature="E0308:mismatched_types")[1]["content"]
    assert "The error is in code these tests run:" in user and "fn counts_evens()" in user
    assert "fn none_in_empty" not in user
