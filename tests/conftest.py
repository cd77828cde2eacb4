"""Shared fixtures. Every test gets its own state folder: no test reads or writes the checkout's state/."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

MINI_KOAN = '''\
id = "{id}"
family = "{family}"
title = "Report total and count of readings"
expected_error = "E0382"
hint = "Borrow instead of moving."
buggy = \'\'\'
pub fn total(v: Vec<i32>) -> i32 {{
    v.iter().sum()
}}

pub fn report() -> (i32, usize) {{
    let readings = vec![1, 2, {n}];
    let t = total(readings);
    (t, readings.len())
}}
\'\'\'
solution = \'\'\'
pub fn total(v: &[i32]) -> i32 {{
    v.iter().sum()
}}

pub fn report() -> (i32, usize) {{
    let readings = vec![1, 2, {n}];
    let t = total(&readings);
    (t, readings.len())
}}
\'\'\'
tests = \'\'\'
    #[test]
    fn reports_total_and_count() {{
        assert_eq!(report(), ({total}, 3));
    }}
\'\'\'
'''


def mini_koan(kid: str, family: str = "borrow_checker") -> str:
    """A valid koan; the program differs by id so that no two mini koans are copies."""
    n = 3 + sum(map(ord, kid)) % 997
    return MINI_KOAN.format(id=kid, family=family, n=n, total=3 + n)


def write_koan(root: Path, kid: str, family: str = "borrow_checker", text: str | None = None) -> Path:
    path = root / family / f"{kid}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else mini_koan(kid, family))
    return path


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("SLEEPY_STATE_DIR", str(state))
    monkeypatch.delenv("SLEEPY_HOME", raising=False)
    monkeypatch.delenv("SLEEPY_CONFIG", raising=False)
    # The embedded model of the tests is the small one shipped in a package (fast, always there), not the
    # table's default (1 GB, pulled): a test that means another model names it.
    monkeypatch.setenv("SLEEPY_EMBEDDED_MODEL", "smollm2-135m")
    return state


@pytest.fixture
def koan_dir(tmp_path) -> Path:
    """A tiny corpus: two training koans and one frozen eval koan with its manifest."""
    from sleepy_tui.koans import load_corpus, write_manifest
    root = tmp_path / "koans"
    write_koan(root, "bc_901")
    write_koan(root, "bc_902")
    write_koan(root, "bc_900")
    corpus = load_corpus(root)
    write_manifest(root / "frozen_eval.toml", [corpus.koans["bc_900"]])
    return root


@pytest.fixture(scope="session")
def sandbox():
    from sleepy_tui.sandbox import Limits, Sandbox
    sb = Sandbox(Limits(run_timeout_s=3.0, compile_timeout_s=60.0, memory_mb=512))
    yield sb
    sb.close()


def dedent(s: str) -> str:
    return textwrap.dedent(s).strip("\n") + "\n"
