"""Shared by the benchmark scripts: the machine line and appending results to BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def machine() -> str:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    mem = ""
    try:
        kb = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores{mem}, {cpu}; "
            f"Python {platform.python_version()}; {rustc}")


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def record(title: str, command: str, body: str, quick: bool) -> None:
    """Print the result; append it to BENCHMARKS.md unless this is a --quick (smoke) run."""
    text = (f"\n## {title}\n\n- date: {time.strftime('%Y-%m-%d %H:%M')}\n- machine: {machine()}\n"
            f"- command: `{command}`\n\n{body}\n")
    print(text)
    if not quick:
        path = ROOT / "BENCHMARKS.md"
        if not path.exists():
            path.write_text("# Benchmarks\n\nEvery figure is a ratio against a baseline measured in the same run, on the "
                            "machine named. Scripts live in `bench/`; `--quick` runs are smoke tests and are not recorded.\n")
        with open(path, "a") as f:
            f.write(text)
