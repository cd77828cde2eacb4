"""Where things live on disk. Every path the engine uses is derived here.

`SLEEPY_HOME` redirects the project root (koans/ and state/) and `SLEEPY_STATE_DIR` only the state,
so tests and users can work on a copy without touching the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    env = os.environ.get("SLEEPY_HOME")
    return Path(env).resolve() if env else PACKAGE_DIR.parent


def koans_dir() -> Path:
    return project_root() / "koans"


def state_dir() -> Path:
    env = os.environ.get("SLEEPY_STATE_DIR")
    return Path(env).resolve() if env else project_root() / "state"


def frozen_manifest(koans: Path | None = None) -> Path:
    return (koans or koans_dir()) / "frozen_eval.toml"


def cache_dir() -> Path:
    """$SLEEPY_CACHE_DIR, else $XDG_CACHE_HOME/sleepy-tui, else ~/.cache/sleepy-tui: what can be rebuilt or
    re-downloaded (pulled models, de-quantized trainer bases)."""
    env = os.environ.get("SLEEPY_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sleepy-tui"


def models_dir() -> Path:
    """Where `sleepy models pull` puts model files: $SLEEPY_MODELS_DIR, else <cache_dir>/gguf."""
    env = os.environ.get("SLEEPY_MODELS_DIR")
    return Path(env).expanduser() if env else cache_dir() / "gguf"
