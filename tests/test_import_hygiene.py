"""The engine never imports the UI, and importing it stays cheap (no torch, no model libraries)."""

import subprocess
import sys

ENGINE = ["sleepy_tui.engine", "sleepy_tui.agent", "sleepy_tui.sandbox", "sleepy_tui.store", "sleepy_tui.metrics",
          "sleepy_tui.koans", "sleepy_tui.training.dataset", "sleepy_tui.report", "sleepy_tui.backends",
          "sleepy_tui.cli"]


def loaded_after(modules: list[str]) -> set[str]:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_engine_has_no_ui_imports():
    loaded = loaded_after(ENGINE)
    assert "textual" not in loaded and "click" not in loaded


def test_engine_import_loads_no_heavy_libraries():
    loaded = loaded_after(ENGINE)
    assert not loaded & {"torch", "transformers", "peft", "llama_cpp", "mlx", "mlx_lm", "matplotlib"}
