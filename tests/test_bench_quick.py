"""Every benchmark's --quick mode still runs (figures are not checked: benchmarks are not tests)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_quick(name: str, *extra: str) -> str:
    before = (BENCH.parent / "BENCHMARKS.md").read_text() if (BENCH.parent / "BENCHMARKS.md").exists() else None
    r = subprocess.run([sys.executable, str(BENCH / name), "--quick", *extra], capture_output=True, text=True,
                       timeout=600, cwd=BENCH)
    assert r.returncode == 0, r.stderr[-3000:]
    after = (BENCH.parent / "BENCHMARKS.md").read_text() if (BENCH.parent / "BENCHMARKS.md").exists() else None
    assert after == before  # --quick never records
    return r.stdout


def test_sandbox_bench_quick():
    out = run_quick("bench_sandbox.py")
    assert "vs bare rustc" in out and "checks/s" in out


def test_store_bench_quick():
    assert "Insert speed-up" in run_quick("bench_store.py")


@pytest.mark.slow
def test_agent_bench_quick():
    assert "Generation share" in run_quick("bench_agent.py")


@pytest.mark.slow
def test_training_bench_quick():
    assert "useful tok/s" in run_quick("bench_training.py", "--skip-mlx")


@pytest.mark.slow
def test_loss_focus_bench_quick():
    out = run_quick("bench_loss_focus.py")
    assert "held-out changed" in out and "| focus | 0.1 |" in out
