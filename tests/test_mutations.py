"""`sleepy koans generate`: every mutation, through the real rustc, on small hand-written programs."""

from __future__ import annotations

import pytest

from sleepy_tui import cli
from sleepy_tui.koans import FAMILIES, Koan, load_corpus, load_koan
from sleepy_tui import mutations
from sleepy_tui.mutations import BY_NAME, MUTATIONS, Mutation, is_source, mask, mutants

from conftest import dedent


def generate(*args, **kw):
    """The programs here are shorter than a shipped koan's minimum: allow them."""
    return mutations.generate(*args, lines=(1, 40), **kw)


def koan(kid: str, solution: str, tests: str, family: str = "type_mismatch", split: str = "train") -> Koan:
    return Koan(id=kid, family=family, title="A small program", expected_error="E0308", buggy="fn broken(",
                solution=dedent(solution), tests=dedent(tests), split=split)


# (mutation, program, tests, the error codes a kept mutant may fail with)
CASES = [
    ("drop_derive", """
        #[derive(Debug, PartialEq)]
        pub struct Pair { pub a: i32, pub b: i32 }

        pub fn swap(p: Pair) -> Pair {
            Pair { a: p.b, b: p.a }
        }
     """, """
        #[test]
        fn swaps() { assert_eq!(swap(Pair { a: 1, b: 2 }), Pair { a: 2, b: 1 }); }
     """, {"E0277", "E0369"}),
    ("drop_mut", """
        pub fn evens(n: u32) -> Vec<u32> {
            let mut out = Vec::new();
            for i in 0..n {
                if i % 2 == 0 {
                    out.push(i);
                }
            }
            out
        }
     """, """
        #[test]
        fn evens_below_five() { assert_eq!(evens(5), vec![0, 2, 4]); }
     """, {"E0596"}),
    ("drop_mut_ref", """
        pub struct Counter { pub n: u32 }

        impl Counter {
            pub fn bump(&mut self) { self.n += 1; }
        }
     """, """
        #[test]
        fn bumps() { let mut c = Counter { n: 0 }; c.bump(); assert_eq!(c.n, 1); }
     """, {"E0594"}),
    ("move_not_borrow", """
        pub fn total_and_count(words: Vec<String>) -> (usize, usize) {
            let mut total = 0;
            for w in &words {
                total += w.len();
            }
            (total, words.len())
        }
     """, """
        #[test]
        fn counts() { assert_eq!(total_and_count(vec!["ab".into(), "c".into()]), (3, 2)); }
     """, {"E0382"}),
    ("move_into_call", """
        fn total(v: &[i32]) -> i32 {
            v.iter().sum()
        }

        pub fn report(readings: Vec<i32>) -> (i32, usize) {
            let t = total(&readings);
            (t, readings.len())
        }
     """, """
        #[test]
        fn reports() { assert_eq!(report(vec![1, 2, 3]), (6, 3)); }
     """, {"E0382"}),
    ("drop_clone", """
        pub fn twice(name: String) -> (String, String) {
            let first = name.clone();
            (first, name)
        }
     """, """
        #[test]
        fn two_copies() { assert_eq!(twice("a".into()), ("a".into(), "a".into())); }
     """, {"E0382"}),
    ("drop_question_mark", """
        pub fn double(s: &str) -> Result<i32, std::num::ParseIntError> {
            let n: i32 = s.trim().parse()?;
            Ok(n * 2)
        }
     """, """
        #[test]
        fn doubles() { assert_eq!(double(" 4"), Ok(8)); assert!(double("x?").is_err()); }
     """, {"E0308"}),
    ("drop_ok_or", """
        pub fn first_word(s: &str) -> Result<&str, String> {
            let w = s.split_whitespace().next().ok_or_else(|| format!("no word in ({:?})", s.trim()))?;
            Ok(w)
        }
     """, """
        #[test]
        fn finds_it() { assert_eq!(first_word(" hi there"), Ok("hi")); assert!(first_word("  ").is_err()); }
     """, {"E0277"}),
    ("drop_cast", """
        pub fn mean(xs: &[u32]) -> f64 {
            let sum: u32 = xs.iter().sum();
            sum as f64 / xs.len() as f64
        }
     """, """
        #[test]
        fn means() { assert_eq!(mean(&[1, 2, 3, 6]), 3.0); }
     """, {"E0277"}),
    ("numeric_return", """
        pub fn area(w: u32, h: u32) -> u32 {
            w * h
        }
     """, """
        #[test]
        fn areas() { assert_eq!(area(3, 4), 12); }
     """, {"E0308"}),
    ("ref_to_local", """
        pub fn squares(n: u32) -> Vec<u32> {
            (1..=n).map(|i| i * i).collect()
        }
     """, """
        #[test]
        fn first_squares() { assert_eq!(squares(3), vec![1, 4, 9]); }
     """, {"E0106"}),
    ("ref_to_local", """
        pub struct Greeter { pub name: String }

        impl Greeter {
            pub fn greeting(&self) -> String {
                let mut s = format!("hello, {}", self.name);
                s.push('!');
                s
            }
        }
     """, """
        #[test]
        fn greets() { assert_eq!(Greeter { name: "ann".into() }.greeting(), "hello, ann!"); }
     """, {"E0515"}),
]


def test_every_mutation_has_a_case():
    assert {c[0] for c in CASES} == {m.name for m in MUTATIONS}


@pytest.mark.parametrize("name,program,tests,codes", CASES, ids=[f"{c[0]}-{sorted(c[3])[0]}" for c in CASES])
def test_mutation_yields_its_error(sandbox, tmp_path, name, program, tests, codes):
    mut = BY_NAME[name]
    src = koan("src_001", program, tests)
    assert any(m is mut for m, _ in mutants(src)), "the mutation does not apply"
    written = generate([src], sandbox, tmp_path, mutations=(mut,))
    assert len(written) == 1, "one koan per source and mutation"
    g = written[0]
    assert (g.source, g.mutation) == ("src_001", name)
    assert g.error in codes and g.error in mut.expected
    k = load_koan(g.path)
    assert k.family == mut.family and k.expected_error == g.error
    assert k.solution.strip() == src.solution.strip() and k.tests.strip() == src.tests.strip()
    r = sandbox.check(k.buggy, k.tests)
    assert r.outcome == "compile_error" and r.diagnostics and \
        [d.code for d in r.diagnostics if d.level == "error"][0] == g.error


def test_mutants_without_the_expected_error_are_dropped(sandbox, tmp_path):
    # an unused derive: dropping it compiles and passes; dropping the clone gives E0308, not a move error
    src = koan("src_002", """
        #[derive(Debug, Clone)]
        pub struct P { pub x: i32 }

        pub fn bumped(p: &P) -> P {
            let mut q = p.clone();
            q.x += 1;
            q
        }
    """, """
        #[test]
        fn bumps() { assert_eq!(bumped(&P { x: 1 }).x, 2); }
    """)
    lines: list[str] = []
    picky = Mutation("drop_mut_e0999", "borrow_checker", ("E0999",), BY_NAME["drop_mut"].apply, "x", "x")
    written = generate([src], sandbox, tmp_path, mutations=(BY_NAME["drop_clone"], picky), on_line=lines.append)
    assert written == [] and list(tmp_path.iterdir()) == []
    # and the derive: Debug is unused (its mutant passes), Clone is not (clone() on &P then gives E0308)
    written = generate([src], sandbox, tmp_path, mutations=(BY_NAME["drop_derive"],))
    assert written == []


def test_eval_and_generated_koans_are_never_sources(sandbox, tmp_path):
    program, tests = CASES[1][1], CASES[1][2]
    frozen = koan("src_003", program, tests, split="eval")
    reserved = [koan(f"{p}_{n:03d}", program, tests, family=f) for p, f in
                (("bc", "borrow_checker"), ("tb", "trait_bounds"), ("rh", "result_handling")) for n in (1, 7, 10)]
    generated = koan("gen_src_004_drop_mut_0123abcd", program, tests)
    never = [frozen, *reserved, generated]
    assert not any(is_source(k) for k in never)
    lines: list[str] = []
    assert generate(never, sandbox, tmp_path, on_line=lines.append) == []
    assert len([ln for ln in lines if "not a training source" in ln]) == len(never)
    # the same program under a training id, and ids past the frozen range, are sources
    assert is_source(koan("bc_011", program, tests, family="borrow_checker"))
    assert is_source(koan("lt_003", program, tests, family="lifetimes"))
    assert generate([koan("bc_011", program, tests, family="borrow_checker")], sandbox, tmp_path)


def test_programs_of_unusual_size_are_not_used(sandbox, tmp_path):
    src = koan("src_011", CASES[1][1], CASES[1][2])   # 9 lines of code
    assert mutations.generate([src], sandbox, tmp_path, lines=(10, 40)) == []
    assert mutations.generate([src], sandbox, tmp_path, lines=(8, 8)) == []
    assert mutations.generate([src], sandbox, tmp_path, lines=(9, 9), mutations=(BY_NAME["drop_mut"],))


def test_a_source_that_does_not_pass_is_skipped(sandbox, tmp_path):
    src = koan("src_005", CASES[1][1], "#[test]\nfn wrong() { assert_eq!(evens(5), vec![1]); }\n")
    lines: list[str] = []
    assert generate([src], sandbox, tmp_path, on_line=lines.append) == []
    assert any("does not pass" in ln for ln in lines)


def test_output_is_an_ordinary_training_koan_and_rerunning_adds_no_duplicate(sandbox, tmp_path):
    root = tmp_path / "koans"
    srcs = [koan(f"src_{i:03d}", c[1], c[2]) for i, c in ((6, CASES[0]), (7, CASES[1]), (8, CASES[6]))]
    first = generate(srcs, sandbox, root / "generated", limit=10)
    assert 3 <= len(first) <= 6, "per source: at most 2"
    files = sorted((root / "generated").iterdir())
    assert files == sorted(g.path for g in first)
    corpus = load_corpus(root)
    assert corpus.errors == []
    assert {k.id for k in corpus.train_set} == {p.stem for p in files} and corpus.eval_set == []
    for k in corpus.train_set:
        assert k.family in FAMILIES
        mut = next(g.mutation for g in first if g.path.stem == k.id)
        assert k.title == f"A small program ({BY_NAME[mut].label})"
        assert f"{mut} mutation of src_" in k.hint
    again = generate(srcs, sandbox, root / "generated", limit=10)
    assert again == []
    assert sorted((root / "generated").iterdir()) == files
    # more sources later: only the new one yields koans
    more = generate(srcs + [koan("src_009", CASES[4][1], CASES[4][2])], sandbox, root / "generated", limit=10)
    assert {g.source for g in more} == {"src_009"}


def test_spread_over_mutations_and_sources(sandbox, tmp_path):
    srcs = [koan(f"src_{i:03d}", c[1], c[2]) for i, c in enumerate(CASES, start=20)]
    written = generate(srcs, sandbox, tmp_path, limit=8, per_source=1)
    assert len(written) == 8
    assert len({g.mutation for g in written}) >= 7
    assert len({g.source for g in written}) == 8


def test_cli_generate_then_check(koan_dir, capsys):
    # the conftest corpus: bc_901 and bc_902 train, bc_900 frozen by the manifest
    assert cli.main(["koans", "generate", "--koans", str(koan_dir), "--count", "5"]) == 0
    out = capsys.readouterr().out
    gen = sorted((koan_dir / "generated").glob("*.toml"))
    assert gen and not any("bc_900" in p.name for p in gen)
    assert f"wrote {len(gen)} generated training koan(s) from 2 source(s)" in out
    corpus = load_corpus(koan_dir)
    assert all(corpus.koans[p.stem].split == "train" for p in gen)
    # move_into_call would give back exactly the sources' own buggy program: such a mutant is not a new koan
    buggy = {corpus.koans[i].buggy.strip() for i in ("bc_901", "bc_902")}
    assert not any(corpus.koans[p.stem].buggy.strip() in buggy for p in gen)
    assert cli.main(["koans", "check", "--koans", str(koan_dir), str(koan_dir / "generated")]) == 0
    assert "ok" in capsys.readouterr().out.splitlines()[-1]


def test_mask_blanks_comments_and_literals_only():
    code = 'let s = "a ) ? // no"; // x?.clone()\nlet c = \'(\'; /* ? */ f(x)?; r#"?"#;'
    m = mask(code)
    assert len(m) == len(code) and m.count("\n") == 1
    assert m.count("?") == 1 and "clone" not in m and "f(x)?" in m
    # nothing matches inside the literals and comments
    k = koan("src_010", 'pub fn f() -> Option<u8> { let s = "x?"; Some(s.len() as u8) } // y?', "")
    assert not any(m.name == "drop_question_mark" for m, _ in mutants(k))
