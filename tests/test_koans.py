
import pytest

from sleepy_tui.koans import KoanError, combine, load_corpus, load_koan, parse_koan
from tests.conftest import mini_koan, write_koan


def good(kid="bc_901", family="borrow_checker"):
    return mini_koan(kid, family)


def test_parses_all_fields(tmp_path):
    k = parse_koan(good(), tmp_path / "bc_901.toml")
    assert (k.id, k.family, k.expected_error) == ("bc_901", "borrow_checker", "E0382")
    assert "fn total(v: Vec<i32>)" in k.buggy and "fn total(v: &[i32])" in k.solution
    assert k.hint == "Borrow instead of moving."


@pytest.mark.parametrize("text, message", [
    ('id = "x"\nfamily = ', "invalid TOML"),
    (good().replace('expected_error = "E0382"\n', ""), "missing field(s) expected_error"),
    (good().replace('title =', 'flavour = "x"\ntitle ='), "unknown field(s) flavour"),
    (good().replace('family = "borrow_checker"', 'family = "astrology"'), "unknown family 'astrology'"),
    (good().replace('expected_error = "E0382"', "expected_error = 382"), "field expected_error must be a string"),
    (good().replace("#[test]", "#[tset]"), "tests has no #[test]"),
    (good().replace('title = "Report total and count of readings"', 'title = "  "'), "field title is empty"),
])
def test_malformed_koans_name_file_and_problem(tmp_path, text, message):
    path = tmp_path / "bc_901.toml"
    with pytest.raises(KoanError) as e:
        parse_koan(text, path)
    assert str(path) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_id_must_match_file_name(tmp_path):
    with pytest.raises(KoanError, match="does not match the file name"):
        parse_koan(good(), tmp_path / "other.toml")


def test_invalid_utf8_is_a_clear_error(tmp_path):
    p = tmp_path / "bc_901.toml"
    p.write_bytes(good().encode() + b"\xff\xfe")
    with pytest.raises(KoanError, match="not valid UTF-8"):
        load_koan(p)


def test_corpus_skips_bad_files_and_duplicates(tmp_path):
    root = tmp_path / "koans"
    write_koan(root, "bc_901")
    write_koan(root, "bc_902", text="not toml [")
    dup = write_koan(root, "bc_901", family="trait_bounds", text=good("bc_901", "trait_bounds"))
    corpus = load_corpus(root)
    assert list(corpus.koans) == ["bc_901"]
    assert any("invalid TOML" in e for e in corpus.errors)
    assert any("duplicate id 'bc_901'" in e and str(dup) in e for e in corpus.errors)
    with pytest.raises(KoanError):
        load_corpus(root, strict=True)


def test_manifest_decides_split_and_refuses_edits(koan_dir):
    corpus = load_corpus(koan_dir)
    assert [k.id for k in corpus.eval_set] == ["bc_900"]
    assert [k.id for k in corpus.train_set] == ["bc_901", "bc_902"]
    p = koan_dir / "borrow_checker" / "bc_900.toml"
    p.write_text(p.read_text().replace("to_uppercase", "to_lowercase"))
    corpus = load_corpus(koan_dir)
    assert "bc_900" not in corpus.koans
    assert any("frozen eval koan 'bc_900' was edited" in e for e in corpus.errors)
    with pytest.raises(KoanError, match="was edited"):
        load_corpus(koan_dir, strict=True)


def test_all_frozen_folder_counts_every_koan_as_eval(koan_dir):
    corpus = load_corpus(koan_dir, all_frozen=True)
    assert len(corpus.eval_set) == 3 and not corpus.train_set


def test_select_unknown_id(koan_dir):
    with pytest.raises(KoanError, match="unknown koan id"):
        load_corpus(koan_dir).select(ids=["nope"])


def test_combine_wraps_tests_in_cfg_test_module():
    src = combine("pub fn f() -> i32 { 1 }\n", "    #[test]\n    fn t() { assert_eq!(f(), 1); }\n")
    assert "#[cfg(test)]\nmod tests {\n    use super::*;" in src and src.index("fn f()") < src.index("mod tests")


# ---- the shipped corpus ----------------------------------------------------------------------------------------

def test_shipped_corpus_shape():
    corpus = load_corpus()
    assert corpus.errors == []
    assert len(corpus.eval_set) == 30
    fams = {f: sum(k.family == f for k in corpus.eval_set) for f in ("borrow_checker", "trait_bounds",
                                                                        "result_handling")}
    assert fams == {"borrow_checker": 10, "trait_bounds": 10, "result_handling": 10}
    assert len(corpus.train_set) >= 90
    assert {k.family for k in corpus.train_set} >= {"borrow_checker", "trait_bounds", "result_handling",
                                                    "lifetimes", "type_mismatch"}
    sizes = {k.id: len([l for l in k.buggy.splitlines() if l.strip()]) for k in corpus.koans.values()}
    assert all(6 <= n <= 42 for n in sizes.values()), {k: n for k, n in sizes.items() if not 6 <= n <= 42}
    # the target is 8 to 40 lines of code; a handful of training koans sit just outside it
    assert sum(not 8 <= n <= 40 for n in sizes.values()) <= 6


def test_a_day_queue_takes_the_families_in_turn():
    corpus = load_corpus()
    families = sorted({k.family for k in corpus.train_set})
    first = corpus.day_queue(len(families))
    assert [k.family for k in first] == families               # one of each family before any second
    assert all(k.split == "train" for k in corpus.day_queue())
    assert sorted(k.id for k in corpus.day_queue()) == sorted(k.id for k in corpus.train_set)
    bc = corpus.day_queue(3, family="borrow_checker")
    assert [k.id for k in bc] == [k.id for k in corpus.select(split="train", family="borrow_checker")[:3]]


def test_no_near_copies_between_eval_and_train():
    import difflib
    corpus = load_corpus()
    train = corpus.train_set
    for e in corpus.eval_set:
        for t in train:
            if t.family != e.family:
                continue
            ratio = difflib.SequenceMatcher(None, e.buggy, t.buggy, autojunk=False).quick_ratio()
            if ratio > 0.8:
                ratio = difflib.SequenceMatcher(None, e.buggy, t.buggy, autojunk=False).ratio()
            assert ratio < 0.8, f"{e.id} and {t.id} are near-copies ({ratio:.2f})"


# ---- behaviour-bug koans and user folders ---------------------------------------------------------------------

BEHAVIOUR_KOAN = '''\
id = "{id}"
family = "{family}"
title = "Count the even numbers"
expected_error = "test_failure"
buggy = \'\'\'
pub fn evens(v: &[i32]) -> usize {{
    v.iter().filter(|x| *x % 2 == {rest}).count()
}}
\'\'\'
solution = \'\'\'
pub fn evens(v: &[i32]) -> usize {{
    v.iter().filter(|x| *x % 2 == 0).count()
}}
\'\'\'
tests = \'\'\'
    #[test]
    fn counts_evens() {{
        assert_eq!(evens(&[1, 2, 4, 6]), 3);
    }}
\'\'\'
'''


def behaviour_koan(kid="tf_901", family="borrow_checker", rest="1"):
    return BEHAVIOUR_KOAN.format(id=kid, family=family, rest=rest)


def test_a_behaviour_bug_koan_is_its_own_kind(tmp_path):
    k = parse_koan(behaviour_koan(), tmp_path / "tf_901.toml")
    assert k.expected_error == "test_failure" and k.kind == "test_failure"
    assert parse_koan(good(), tmp_path / "bc_901.toml").kind == "compile_error"


def test_a_user_folder_takes_any_family_the_project_folder_only_its_five(tmp_path):
    user = tmp_path / "mine"
    write_koan(user, "tf_901", family="03_if", text=behaviour_koan(family="03_if"))
    corpus = load_corpus(user)
    assert corpus.errors == [] and corpus.families == ["03_if"]
    assert [k.id for k in corpus.select(family="03_if")] == ["tf_901"]
    with pytest.raises(KoanError, match="unknown family 'borrow_checker' \\(this folder's: 03_if\\)"):
        corpus.select(family="borrow_checker")
    with pytest.raises(KoanError, match="unknown family '03_if'"):
        parse_koan(behaviour_koan(family="03_if"), tmp_path / "tf_901.toml")    # the project's default: the five


def test_a_family_must_be_a_plain_name(tmp_path):
    user = tmp_path / "mine"
    write_koan(user, "tf_901", family="x", text=behaviour_koan(family="a b/../c"))
    assert any("is not a plain name" in e for e in load_corpus(user).errors)


def test_koans_check_holds_behaviour_bugs_to_their_rule(sandbox, tmp_path):
    from sleepy_tui.validate import koan_problems
    fair = parse_koan(behaviour_koan(), tmp_path / "tf_901.toml")
    assert koan_problems(sandbox, fair) == []
    passes = parse_koan(behaviour_koan(rest="0"), tmp_path / "tf_901.toml")     # the "bug" is the fix
    assert koan_problems(sandbox, passes) == [f"{passes.path}: buggy program does not fail a test "
                                              "(outcome pass: every test passed)"]
    broken = parse_koan(behaviour_koan(rest='"1"'), tmp_path / "tf_901.toml")   # does not compile at all
    [problem] = koan_problems(sandbox, broken)
    assert "buggy program does not compile (E0308" in problem and "expected_error is test_failure" in problem


def test_the_shipped_behaviour_bug_koans_cover_every_family_and_stay_out_of_the_frozen_set():
    corpus = load_corpus()
    behaviour = [k for k in corpus.koans.values() if k.kind == "test_failure"]
    assert len(behaviour) >= 40 and all(k.split != "eval" for k in behaviour)
    assert {k.family for k in behaviour} == {"borrow_checker", "trait_bounds", "result_handling", "lifetimes",
                                             "type_mismatch"}
    assert all(k.id.startswith("tf_") for k in behaviour)
