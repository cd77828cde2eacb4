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


def test_the_drivers_reach_the_core_only_through_the_engine():
    """cli.py, cli_models.py and app/ import neither the store, nor the sandbox, nor the trainers: the engine is
    their one door (its public methods, and the error types and records it re-exports)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "sleepy_tui"
    drivers = [root / "cli.py", root / "cli_models.py", *sorted((root / "app").rglob("*.py"))]
    forbidden = ("store", "sandbox", "jail", "screen", "training", "mutations", "agent", "report")
    found = []
    for path in drivers:
        package = ["sleepy_tui", *path.relative_to(root).parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                name = ".".join(base + ([node.module] if node.module else []))
                names = [name] + [f"{name}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for n in names:
                parts = n.split(".")
                if parts[0] == "sleepy_tui" and len(parts) > 1 and parts[1] in forbidden:
                    found.append(f"{path.relative_to(root)}:{node.lineno} imports {n}")
    assert found == []
