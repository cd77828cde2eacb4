"""The verdict and the jail against an adversarial candidate, on real rustc.

Most programs here are checked with `screened=False`: the screen would refuse them before compiling, and
these tests prove that the layers behind it (the verdict channel, `-F unsafe_code`, the jail) hold alone.
"""

import json
import os
import socket
import subprocess
import threading
import time

import pytest

from sleepy_tui.sandbox import Limits, Sandbox

TWO_TESTS = ("    #[test]\n    fn first() { assert_eq!(f(), 2); }\n"
             "    #[test]\n    fn second() { assert_eq!(f() * 2, 4); }\n")
FAKE = ('println!("test tests::first ... ok\\ntest tests::second ... ok\\n\\n'
        'test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s");')
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the jail needs root (as in CI)")

FORGED = {
    "prints a pass, exits 0 in the tested function": f"pub fn f() -> i32 {{ {FAKE} std::process::exit(0) }}",
    "exits 0 from another thread": ("pub fn f() -> i32 { std::thread::spawn(|| { " + FAKE +
                                    " std::process::exit(0) }).join().unwrap(); 1 }"),
    "exits 0 from the panic hook after failing": ("pub fn f() -> i32 { std::panic::set_hook(Box::new(|_| { " + FAKE +
                                                  " std::process::exit(0) })); 1 }"),
    "prints a pass and fails": f"pub fn f() -> i32 {{ {FAKE} 1 }}",
    "aborts after printing": f"pub fn f() -> i32 {{ {FAKE} std::process::abort() }}",
}
UNSAFE_FORGED = {
    "static constructor": ('#[used]\n#[link_section = ".init_array"]\nstatic INIT: extern "C" fn() = {\n'
                           f'    extern "C" fn init() {{ {FAKE} std::process::exit(0) }}\n    init\n}};\n'
                           "pub fn f() -> i32 { 1 }"),
    "atexit + _exit": ('extern "C" { fn atexit(cb: extern "C" fn()) -> i32; fn _exit(code: i32) -> !; }\n'
                       'extern "C" fn bye() { unsafe { _exit(0) } }\n'
                       "pub fn f() -> i32 { unsafe { atexit(bye); } 1 }"),
    "export_name main": '#[export_name = "main"]\npub extern "C" fn fake() -> i32 { 0 }\npub fn f() -> i32 { 1 }',
}


def test_an_honest_fix_passes_and_every_test_is_seen(sandbox):
    r = sandbox.check("pub fn f() -> i32 { 2 }", TWO_TESTS)
    assert r.passed and r.tests_passed == 2 and r.tests_failed == 0


@pytest.mark.parametrize("name", sorted(FORGED))
def test_a_forged_pass_is_not_a_pass(sandbox, name):
    unscreened = sandbox.check(FORGED[name], TWO_TESTS, screened=False)
    assert not unscreened.passed, name
    assert unscreened.signature in ("test_failure:tests_not_run", "test_failure:assert_eq", "crashed:sigabrt")
    screened = sandbox.check(FORGED[name], TWO_TESTS)
    assert not screened.passed
    if "process" in FORGED[name]:
        assert screened.signature == "forbidden:process"


@pytest.mark.parametrize("name", sorted(UNSAFE_FORGED))
def test_unsafe_forgeries_do_not_compile(sandbox, name):
    r = sandbox.check(UNSAFE_FORGED[name], TWO_TESTS, screened=False)  # -F unsafe_code alone stops them
    assert r.outcome == "compile_error" and r.signature.startswith("unsafe_code:"), r.signature
    assert sandbox.check(UNSAFE_FORGED[name], TWO_TESTS).signature.startswith("forbidden:")


def test_a_pass_needs_every_test_of_the_koan(sandbox):
    # a candidate that hides the koan's tests (a trailing cfg attribute swallows the tests module) runs none
    r = sandbox.check("pub fn f() -> i32 { 2 }\n#[cfg(any())]", TWO_TESTS)
    assert not r.passed


def test_the_compilers_flood_is_cut(sandbox):
    levels = ["macro_rules! d0 { () => { compile_error!(\"boom\"); } }"]
    levels += [f"macro_rules! d{i} {{ () => {{ d{i - 1}!(); d{i - 1}!(); }} }}" for i in range(1, 17)]
    code = "\n".join(levels) + "\npub fn f() -> i32 { d16!(); 2 }"  # 65,536 errors from 2 KB
    assert len(code) < 3000
    small = Sandbox(Limits(compile_output_bytes=256 << 10, compile_timeout_s=30), jail=sandbox.jail)
    try:
        t0 = time.monotonic()
        r = small.check(code, TWO_TESTS, screened=False)
        took = time.monotonic() - t0
    finally:
        small.close()
    assert r.signature in ("crashed:compiler_output_limit", "timeout:compile"), r.signature
    assert took < 35 and len(r.diagnostics) <= 32
    assert len(json.dumps(r.to_dict())) < 200_000  # what an episode stores stays small
    assert sandbox.check(code, TWO_TESTS).signature == "forbidden:macro_rules"


@root_only
def test_compile_time_reads_find_nothing_of_the_host(sandbox, tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("SLEEPY-ROOT-ONLY-7731")
    secret.chmod(0o600)
    monkeypatch.setenv("SLEEPY_TEST_SECRET", "SLEEPY-ENV-SECRET-7731")
    programs = [
        f'pub fn f() -> i32 {{ let s = include_str!("{secret}"); println!("{{s}}"); 2 }}',
        'pub fn f() -> i32 { let s = env!("SLEEPY_TEST_SECRET"); println!("{s}"); 2 }',
        f'#[path = "{secret}"]\nmod leak;\npub fn f() -> i32 {{ 2 }}',
        'pub fn f() -> i32 { println!("{:?}", std::fs::read_to_string("/root/.bashrc")); '
        'println!("{:?}", std::env::var("SLEEPY_TEST_SECRET")); 2 }',
        f'pub fn f() -> i32 {{ println!("{{:?}}", std::fs::read_to_string("{secret}")); 2 }}',
    ]
    for code in programs:
        r = sandbox.check(code, TWO_TESTS, screened=False)
        seen = r.output + "".join(d.rendered for d in r.diagnostics)
        assert "7731" not in seen, code
    assert sandbox.check(programs[0], TWO_TESTS).signature == "forbidden:include_str"


@root_only
def test_nothing_of_a_check_survives_it(sandbox):
    programs = [  # a double-forked daemon in its own session, and a child in its own process group
        'pub fn f() -> i32 { std::process::Command::new("/bin/sh").args(["-c", "setsid sh -c \'sleep 97.25\' &"])'
        ".status().unwrap(); 2 }",
        "use std::os::unix::process::CommandExt;\n"
        'pub fn f() -> i32 { std::process::Command::new("/bin/sleep").arg("97.5").process_group(0).spawn().unwrap(); 2 }',
    ]
    for code in programs:
        r = sandbox.check(code, TWO_TESTS, screened=False)
        assert r.passed, r.output
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", "sleep 97"], capture_output=True, text=True).stdout
    assert left.strip() == ""


@root_only
def test_a_check_sees_only_its_own_processes(sandbox):
    sleeper = "pub fn f() -> i32 { std::thread::sleep(std::time::Duration::from_millis(1500)); 2 }"
    looker = ('pub fn f() -> i32 { let mut pids: Vec<u32> = std::fs::read_dir("/proc").unwrap()'
              ".filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(); pids.sort(); "
              'println!("PIDS {pids:?}"); 2 }')
    other = threading.Thread(target=sandbox.check, args=(sleeper, TWO_TESTS), kwargs={"screened": False})
    other.start()
    time.sleep(0.5)
    r = sandbox.check(looker, TWO_TESTS, screened=False)
    other.join()
    line = next(ln for ln in r.output.splitlines() if "PIDS" in ln)
    pids = json.loads(line.split("PIDS", 1)[1].strip().replace("[", "[").strip())
    assert pids == [1, 2], line  # the jail's init and the test binary: nothing of the host, nor the other check


@root_only
def test_writes_outside_the_work_dir_vanish_and_the_total_is_capped(sandbox):
    tag = f"sleepy-escape-{os.getpid()}"
    places = [f"/tmp/{tag}", f"/var/tmp/{tag}", f"/dev/shm/{tag}", f"/run/lock/{tag}", f"/{tag}"]
    writes = "".join(f'let _ = std::fs::write("{p}", "x"); ' for p in places)
    assert sandbox.check(f"pub fn f() -> i32 {{ {writes} 2 }}", TWO_TESTS, screened=False).passed
    assert not any(os.path.exists(p) for p in places)
    flood = ('pub fn f() -> i32 { let b = vec![7u8; 1 << 20]; let mut n = 0; for i in 0..200 { '
             'if std::fs::write(format!("f{i}"), &b).is_ok() { n += 1 } } println!("WROTE {n}"); 2 }')
    r = sandbox.check(flood, TWO_TESTS, screened=False)
    assert not r.passed
    wrote = int(r.output.split("WROTE ", 1)[1].split()[0])
    assert wrote <= sandbox.limits.disk_mb


@root_only
def test_no_host_unix_socket_is_reachable(sandbox, tmp_path):
    paths = [f"/run/lock/sleepy-{os.getpid()}.sock", str(tmp_path / "s.sock")]
    servers = []
    for p in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(p)
        os.chmod(p, 0o777)
        s.listen(1)
        servers.append(s)
    try:
        for p in paths:
            code = (f'pub fn f() -> i32 {{ println!("CONNECT {{:?}}", std::os::unix::net::UnixStream::connect("{p}")'
                    ".map(|_| ())); 2 }")
            r = sandbox.check(code, TWO_TESTS, screened=False)
            line = next(ln for ln in r.output.splitlines() if "CONNECT" in ln)
            assert "Err" in line, line
    finally:
        for s, p in zip(servers, paths):
            s.close()
            os.unlink(p)


def test_a_forged_pass_never_becomes_training_data(koan_dir, sandbox, tmp_path):
    from sleepy_tui.agent import Agent
    from sleepy_tui.backends.fake import ScriptedBackend
    from sleepy_tui.config import Settings
    from sleepy_tui.koans import load_corpus
    from sleepy_tui.store import Store
    from sleepy_tui.training.dataset import collect_examples

    corpus = load_corpus(koan_dir)
    koan = corpus.koans["bc_902"]
    forged = koan.buggy.replace("pub fn report() -> (i32, usize) {",
                                "pub fn report() -> (i32, usize) {\n    " + FAKE + " std::process::exit(0);")
    store = Store(tmp_path / "state")
    reply = f"```rust\n{forged.strip()}\n```\n"
    agent = Agent(ScriptedBackend([reply] * 2), sandbox, store, Settings(max_attempts=2))
    result = agent.run([koan], kind="day")
    assert result.passed == 0
    assert [e["signature"] for e in store.episodes(result.run_id)] == ["forbidden:process"] * 2
    assert not [x for x in collect_examples(store, corpus) if x["provenance"] == "own_pass"]
