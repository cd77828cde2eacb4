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
