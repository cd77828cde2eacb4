"""The screen decides on tokens: every way around it that was tried is refused, honest code never is."""

import pytest

from sleepy_tui.koans import load_corpus
from sleepy_tui.rust_lexer import tokenize
from sleepy_tui.screen import screen
from sleepy_tui.screen import test_names as koan_test_names

REFUSED = {
    # a forged exit status
    "process exit": ("pub fn f() -> i32 { std::process::exit(0) }", "process"),
    "use exit": ("use std::process::exit;\npub fn f() -> i32 { exit(0) }", "process"),
    "use tree rename": ("use std::{process as p};\npub fn f() -> i32 { p::exit(0) }", "process"),
    "glob then path": ("use std::*;\npub fn f() -> i32 { process::exit(0) }", "process"),
    "raw identifier": ("pub fn f() -> i32 { std::r#process::exit(0) }", "process"),
    "leading colons": ("pub fn f() -> i32 { ::std::process::abort() }", "process"),
    "os extension": ("use std::os::unix::process::CommandExt;", "os"),
    "static constructor": ('#[used]\n#[link_section = ".init_array"]\nstatic I: fn() = f;\nfn f() {}', "attribute"),
    "cfg_attr section": ('#[cfg_attr(all(), link_section = ".init_array")]\nstatic I: fn() = f;\nfn f() {}',
                         "attribute"),
    "atexit": ('extern "C" { fn atexit(f: extern "C" fn()) -> i32; }', "extern"),
    "unsafe block": ("pub fn f() { unsafe {} }", "unsafe"),
    "no_mangle": ("#[no_mangle]\npub fn main() {}", "attribute"),
    "export_name": ('#[export_name = "main"]\npub fn m() {}', "attribute"),
    # reading the host at compile time
    "include_str": ('pub fn f() -> &\'static str { include_str!("/etc/shadow") }', "include_str"),
    "comment before bang": ('pub fn f() -> &\'static str { include_str /* hi */ !("/etc/shadow") }',
                            "include_str"),
    "use as": ('use std::include_str as slurp;\npub fn f() -> &\'static str { slurp!("/etc/shadow") }',
               "include_str"),
    "through macro_rules": ('macro_rules! m { ($n:ident) => { $n!("/etc/shadow") } }\n'
                            'pub fn f() -> &\'static str { m!(include_str) }', "macro_rules"),
    "macro_rules splice": ("macro_rules! m { ($a:ident) => { std::$a::exit(0) } }\npub fn f() { m!(process) }",
                           "macro_rules"),
    "path module": ('#[path = "/etc/passwd"]\nmod x;', "attribute"),
    "global_asm incbin": ('std::arch::global_asm!(".incbin \\"/etc/shadow\\"");', "asm"),
    "core asm": ('core::arch::global_asm!("");', "asm"),
    "env macro": ('pub const H: &str = env!("HOME");', "env"),
    "env macro spaced": ('pub const H: &str = env /* x */ !("HOME");', "env"),
    "option_env": ('pub const H: Option<&str> = option_env!("HOME");', "env"),
    "env at run time": ('pub fn f() -> String { std::env::var("SECRET").unwrap() }', "env"),
    "fs at run time": ('pub fn f() { let _ = std::fs::read("/proc/self/cmdline"); }', "fs"),
    "net": ('pub fn f() { let _ = std::net::TcpStream::connect("127.0.0.1:1"); }', "net"),
    # lying comparisons
    "shadowed assert_eq": ("use std::stringify as assert_eq;", "shadow"),
    "manual PartialEq": ("pub struct X;\nimpl PartialEq for X { fn eq(&self, _: &X) -> bool { true } }",
                         "impl_comparison"),
    "generic PartialEq": ("pub struct X<F>(F);\nimpl<F: Fn() -> u8> std::cmp::PartialEq for X<F> "
                          "{ fn eq(&self, _: &Self) -> bool { true } }", "impl_comparison"),
    "crate attribute": ("#![no_implicit_prelude]\npub fn f() {}", "attribute"),
}

HONEST = {
    "macro names in a comment": '// do not use env!() or include_str!() here\npub fn f() -> u32 { 1 }',
    "doc comment": "/// Calls std::process::exit? No.\npub fn f() -> u32 { 1 }",
    "in a string": 'pub fn f() -> &\'static str { "std::process::exit(0); unsafe { }" }',
    "raw string": 'pub fn f() -> &\'static str { r#"extern "C" unsafe"# }',
    "nested comment": "/* a /* b */ unsafe */\npub fn f() {}",
    "derive PartialEq": "#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]\npub struct X(u8);",
    "bound, not impl": "pub fn same<T: PartialEq>(a: T, b: T) -> bool { a == b }",
    "inherent impl with bound": "pub struct W<T>(T);\nimpl<T: PartialEq> W<T> { pub fn is(&self, o: &T) -> bool "
                                "{ &self.0 == o } }",
    "lifetimes and chars": "pub fn f<'a>(s: &'a str) -> &'a str { let _q = '\\''; let _c = 'x'; s }",
    "a variable named env": "pub fn f(env: u32) -> u32 { env + 1 }",
    "a field named process": "pub struct Job { pub process: u32 }\npub fn p(j: &Job) -> u32 { j.process }",
    "lint attributes": "#![allow(dead_code)]\n#[allow(unused)]\n#[inline]\n#[must_use]\npub fn f() -> u8 { 1 }",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused(name):
    code, what = REFUSED[name]
    r = screen(code)
    assert r is not None, f"{name} was not refused"
    assert r.signature == f"forbidden:{what}"
    assert "\n" not in r.message and r.line >= 1


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_code_is_not_refused(name):
    assert screen(HONEST[name]) is None


def test_no_koan_program_is_refused():
    corpus = load_corpus()
    assert len(corpus.koans) > 100
    for k in corpus.koans.values():
        assert screen(k.solution) is None, k.id
        assert screen(k.buggy) is None, k.id


def test_line_numbers_count_comments_and_strings():
    r = screen('// one\n/* two\n three */\nlet s = "four\nfive";\nunsafe {}\n')
    assert r.line == 6


def test_test_names_of_a_koan():
    tests = ("    fn helper() {}\n    #[test]\n    fn first() {}\n    // #[test] fn commented() {}\n"
             "    #[test]\n    #[allow(unused)]\n    fn second() { let s = \"#[test] fn in_string\"; }\n")
    assert koan_test_names(tests) == ["first", "second"]


def test_lexer_keeps_unterminated_text_as_code():
    # rustc refuses the file anyway; what follows an unterminated opener is still seen (never a hiding place)
    assert any(t.text == "unsafe" for t in tokenize('let s = "oops;\nunsafe {}'))
    assert any(t.text == "unsafe" for t in tokenize("/* open\nunsafe {}"))
