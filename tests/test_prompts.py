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
