"""Each sandbox outcome, on real rustc. Hostile programs are contained."""

import os

import pytest

from sleepy_tui.sandbox import Sandbox, SandboxError

OK_TESTS = "    #[test]\n    fn t() { assert_eq!(add(2, 3), 5); }\n"
RUN_TEST = "    #[test]\n    fn t() { run(); }\n"


def test_pass(sandbox):
    r = sandbox.check("pub fn add(a: i32, b: i32) -> i32 { a + b }\n", OK_TESTS)
    assert r.outcome == "pass" and r.signature is None and r.tests_passed == 1 and r.passed


def test_compile_error_has_structured_diagnostics(sandbox):
    r = sandbox.check("pub fn add(a: i32, b: i32) -> i32 {\n    let v = vec![a];\n    let w = v;\n"
                      "    v.len() as i32 + b\n}\n", OK_TESTS)
    assert r.outcome == "compile_error"
    assert r.signature == "E0382:borrow_of_moved_value"
    err = [d for d in r.diagnostics if d.level == "error"][0]
    assert err.code == "E0382" and err.line == 4 and "moved" in err.rendered


def test_test_failure(sandbox):
    r = sandbox.check("pub fn add(a: i32, b: i32) -> i32 { a - b }\n", OK_TESTS)
    assert r.outcome == "test_failure" and r.signature == "test_failure:assert_eq"
    assert r.tests_failed == 1 and "left" in r.output


def test_stubbed_logic_fails(sandbox):
    r = sandbox.check("pub fn add(a: i32, b: i32) -> i32 { todo!() }\n", OK_TESTS)
    assert r.outcome == "test_failure" and r.signature == "test_failure:todo"


def test_infinite_loop_times_out(sandbox):
    r = sandbox.check("pub fn run() { let mut x = 0u64; loop { x = x.wrapping_add(1); } }\n", RUN_TEST)
    assert r.outcome == "timeout" and r.signature == "timeout:tests"
    assert r.run_ms < 10_000


def test_sleeping_forever_times_out(sandbox):
    r = sandbox.check("pub fn run() { std::thread::sleep(std::time::Duration::from_secs(3600)); }\n", RUN_TEST)
    assert r.outcome == "timeout"


def test_unbounded_allocation_is_contained(sandbox):
    code = ("pub fn run() { let mut v: Vec<Vec<u8>> = Vec::new();\n"
            "    loop { let mut b = Vec::with_capacity(64 << 20); b.resize(64 << 20, 1u8); v.push(b); } }\n")
    r = sandbox.check(code, RUN_TEST)
    assert r.outcome in ("crashed", "timeout")
    assert r.signature in ("crashed:out_of_memory", "timeout:tests", "crashed:sigabrt")


def test_deep_recursion_crashes(sandbox):
    code = "pub fn f(n: u64) -> u64 { if n == 0 { 0 } else { 1 + f(n - 1) } }\npub fn run() { f(u64::MAX); }\n"
    r = sandbox.check(code, RUN_TEST)
    assert r.outcome == "crashed" and r.signature == "crashed:stack_overflow"


def test_output_flood_is_capped(sandbox):
    r = sandbox.check('pub fn run() { loop { println!("{}", "x".repeat(1000)); } }\n', RUN_TEST)
    assert r.outcome == "crashed" and r.signature == "crashed:output_limit"
    assert len(r.output) <= 8000


def test_host_reading_macros_are_refused(sandbox):
    r = sandbox.check('pub fn run() { let s = include_str!("/etc/passwd"); assert!(!s.is_empty()); }\n', RUN_TEST)
    assert r.outcome == "compile_error" and r.signature == "forbidden:include_str"


@pytest.mark.skipif(os.geteuid() != 0, reason="network and filesystem jail needs root (as in CI)")
def test_jail_blocks_network_and_outside_writes(sandbox, tmp_path):
    assert sandbox.jail
    net = sandbox.check('pub fn run() { std::net::TcpStream::connect("127.0.0.1:9").unwrap(); }\n', RUN_TEST,
                        screened=False)
    assert net.outcome == "test_failure" and "Err" in net.output
    marker = f"/tmp/sleepy-escape-{os.getpid()}"
    r = sandbox.check(f'pub fn run() {{ std::fs::write("{marker}", "x").unwrap(); }}\n', RUN_TEST, screened=False)
    assert r.outcome == "pass"  # it may write to its private /tmp...
    assert not os.path.exists(marker)  # ...which vanishes with it
    w = sandbox.check('pub fn run() { std::fs::write("/etc/sleepy-escape", "x").unwrap(); }\n', RUN_TEST,
                      screened=False)
    assert w.outcome == "test_failure" and not os.path.exists("/etc/sleepy-escape")


@pytest.mark.skipif(os.geteuid() != 0, reason="the process limit applies to the sandbox user (root in CI)")
def test_fork_bomb_is_contained(sandbox):
    code = ("pub fn run() { let mut kids = Vec::new();\n"
            "    for _ in 0..10_000 { match std::process::Command::new(\"/bin/sleep\").arg(\"61.5\").spawn() {\n"
            "        Ok(c) => kids.push(c), Err(_) => break } }\n"
            "    assert!(kids.len() < 1000, \"spawned {}\", kids.len()); }\n")
    r = sandbox.check(code, RUN_TEST, screened=False)
    assert r.outcome in ("pass", "test_failure", "crashed", "timeout")
    import subprocess
    left = subprocess.run(["pgrep", "-f", "sleep 61.5"], capture_output=True, text=True).stdout
    assert left.strip() == ""


def test_check_many_keeps_order(sandbox):
    items = [("pub fn add(a: i32, b: i32) -> i32 { a + b }\n", OK_TESTS),
             ("pub fn add(a: i32, b: i32) -> i32 { a * b }\n", OK_TESTS),
             ("pub fn add(a: i32, b: i32) -> i32 { a + }\n", OK_TESTS)]
    assert [r.outcome for r in sandbox.check_many(items)] == ["pass", "test_failure", "compile_error"]


def test_missing_rustc_is_a_clear_error():
    with pytest.raises(SandboxError, match="not found on PATH"):
        Sandbox(rustc="rustc-that-does-not-exist")


def test_temp_dirs_are_removed(sandbox):
    before = set(os.listdir(sandbox._root))
    sandbox.check("pub fn add(a: i32, b: i32) -> i32 { a + b }\n", OK_TESTS)
    assert set(os.listdir(sandbox._root)) == before
