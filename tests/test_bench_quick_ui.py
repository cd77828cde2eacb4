"""`bench/bench_ui.py --quick` runs: the app under Pilot, idle then with a streaming day run and the app's trainer,
then the same work with no app.

A smoke test: it checks that the benchmark finishes and prints its table, never a timing. --quick does not
append to BENCHMARKS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## UI responsiveness (key press to screen update)"


def recorded() -> int:
    """How many results of this benchmark BENCHMARKS.md holds (other benchmarks may append meanwhile)."""
    bench = ROOT / "BENCHMARKS.md"
    return bench.read_text().count(TITLE) if bench.exists() else 0


def test_bench_ui_quick_runs_and_prints_its_table():
    before = recorded()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_ui.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert TITLE in proc.stdout
    assert "| idle (baseline) |" in proc.stdout and "| agent + trainer running |" in proc.stdout
    assert "TokenStreamed messages" in proc.stdout and "Goals: p99 under load" in proc.stdout
    assert "| training steps /s meanwhile |" in proc.stdout and "garbage collections inside them" in proc.stdout
    assert recorded() == before, "--quick must not record into BENCHMARKS.md"
