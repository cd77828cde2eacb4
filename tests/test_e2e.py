"""End to end with everything real: the embedded model (llama.cpp), rustc, the store, the CLI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sleepy_tui.store import Store

SLEEPY = str(Path(sys.executable).parent / "sleepy")


@pytest.mark.slow
def test_embedded_model_attempts_a_real_koan(tmp_path):
    state = tmp_path / "state"
    r = subprocess.run([SLEEPY, "run", "--backend", "embedded", "--count", "1", "--max-attempts", "2",
                        "--max-tokens", "256", "--state", str(state)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\[1/1\] \S+ \.\.\. (PASS|FAIL) \(attempts: [12]", r.stdout, re.M), r.stdout
    eps = Store(state).episodes()
    assert 1 <= len(eps) <= 2
    for e in eps:
        assert e["backend"] == "embedded" and e["model"] and e["reply"] and e["tokens_out"] > 0
        assert e["outcome"] in ("pass", "compile_error", "test_failure", "timeout", "crashed", "no_code")
        assert e["generation_ms"] > 0
    if len(eps) == 2:  # the retry saw the compiler's verdict on the first attempt
        assert "Your previous attempt" in eps[1]["prompt"][-1]["content"] or eps[0]["outcome"] == "no_code"
