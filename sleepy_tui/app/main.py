"""`sleepy` with no arguments: build the engine with the real backends and trainers, and run the app."""

from __future__ import annotations

from ..config import Settings
from ..engine import Engine, default_backend_factory, default_trainer_factory
from .app import SleepyApp


def app_trainer_factory(settings: Settings):
    """The app trains torch adapters in a child process (training/process_trainer.py): a crash or an
    out-of-memory kill of the trainer can't take the app down; MLX trains in process."""
    if settings.train_backend == "torch":
        from ..engine import ProcessTrainer
        return ProcessTrainer()
    return default_trainer_factory(settings)


def build_app(settings: Settings, *, backend_factory=default_backend_factory,
              trainer_factory=app_trainer_factory) -> SleepyApp:
    """The app over a fresh engine; tests pass a scripted backend and a fake trainer."""
    return SleepyApp(Engine(settings, backend_factory=backend_factory, trainer_factory=trainer_factory))


def run_app(settings: Settings) -> int:
    app = build_app(settings)
    try:
        app.run()
    finally:
        app.engine.close()  # flushes the store: no finished episode is lost
    return app.return_code or 0
