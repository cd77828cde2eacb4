"""One line for a person, with the fix, for each way a worker can fail. The app shows it and keeps running."""

from __future__ import annotations


def explain(exc: BaseException | None) -> str:
    from ..engine import (AdapterError, BackendUnavailable, ConfigError, EngineError, KoanError, SandboxError,
                          TrainerCrashed, TrainingUnavailable)

    if exc is None:
        return "unknown error"
    if isinstance(exc, BackendUnavailable):
        return f"Model backend unavailable: {exc}"
    if isinstance(exc, TrainingUnavailable):
        return f"Training unavailable: {exc}"
    if isinstance(exc, TrainerCrashed):
        return f"Training failed: {exc}"
    if isinstance(exc, SandboxError):
        return f"Cannot check Rust code: {exc}"
    if isinstance(exc, KoanError):
        return f"Bad koan: {exc}. Fix the file (`sleepy koans check` lists every problem)."
    if isinstance(exc, ConfigError):
        return "Settings: " + "; ".join(str(exc).splitlines())
    if isinstance(exc, AdapterError):
        return f"Adapter: {exc}. Roll back with `sleepy adapters rollback` or pick another backend."
    if isinstance(exc, ImportError):
        return (f"A package this needs is missing ({exc.name or exc}): install the project with its extras "
                "(`pip install -e '.[dev]'`), or pick another backend / trainer.")
    if isinstance(exc, (EngineError, ValueError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
