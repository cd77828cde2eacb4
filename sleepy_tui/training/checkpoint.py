"""A run folder's checkpoints, the same for every trainer.

    out_dir/checkpoints/step-000020/   what the trainer saves (adapter, optimizer, RNG, data order, log),
                                       its state file written last: a folder without it is incomplete
    out_dir/adapter/                   the final adapter

A checkpoint is written to a temporary folder and renamed into place (`atomic.write_folder`); the last
KEEP_LAST are kept whole. Of the older ones only the adapter stays (a few MB: the cycle's validation slice
chooses among them); without their state file they are no longer complete, so nothing resumes from them.
Resuming is allowed only into the same setup: the same dataset bytes and the same config,
apart from the fields in RESUME_FREE.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Callable

from ..atomic import remove_leftovers, write_folder
from .base import TrainConfig

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
KEEP_LAST = 2
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapters.safetensors")  # peft's, mlx's
# Config fields a resumed run may change without changing what it computes.
RESUME_FREE = ("checkpoint_every", "device")
_STEP = re.compile(r"^step-(\d{6})$")


def folder(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:06d}"


def complete(out_dir: Path, required: tuple[str, ...]) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run (every file of `required` present), oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP.match(p.name)
            if m and all((p / name).is_file() for name in required):
                found.append((int(m.group(1)), p))
    return sorted(found)


def save(out_dir: Path, step: int, fill: Callable[[Path], None], required: tuple[str, ...],
         keep: int = KEEP_LAST) -> Path:
    """Write checkpoint `step` with `fill(tmp_folder)`; then drop all but the newest `keep`."""
    final = write_folder(folder(out_dir, step), fill)
    for _, old in complete(out_dir, required)[:-keep]:
        # what marks it complete goes first, so that a crash halfway leaves an incomplete checkpoint, never a
        # complete one without its optimizer state
        for p in sorted(old.iterdir(), key=lambda p: p.name not in required):
            if p.name in ADAPTER_FILES:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return final


def saved_adapters(out_dir: Path) -> list[tuple[int, Path]]:
    """Every checkpoint's adapter (whole checkpoints and older ones reduced to their adapter), oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP.match(p.name)
            if m and (p / ADAPTER_FILES[0]).is_file() and any((p / f).is_file() for f in ADAPTER_FILES[1:]):
                found.append((int(m.group(1)), p))
    return sorted(found)


def prepare(out_dir: Path, resume: bool) -> None:
    """Make the run folder ready: without `resume`, earlier checkpoints and adapter go; leftovers of a crash
    (half-written temporary folders) go in any case."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
        shutil.rmtree(out_dir / ADAPTER, ignore_errors=True)
    remove_leftovers(out_dir)
    remove_leftovers(out_dir / CHECKPOINTS)


def resume_problems(saved: dict, config_now: dict, data_hash: str) -> list[str]:
    """Why the checkpoint state `saved` can't continue with this config and dataset (empty: it can)."""
    before = saved.get("config") or {}
    default = TrainConfig().to_dict()          # a setting newer than the checkpoint: it had the default
    diffs = [f"{k}: {before.get(k, default.get(k))!r} -> {v!r}" for k, v in config_now.items()
             if k not in RESUME_FREE and before.get(k, default.get(k)) != v]
    if saved.get("dataset_sha256") != data_hash:
        diffs.append("the dataset changed")
    return diffs


def refuse_resume(latest: Path, diffs: list[str]) -> ValueError:
    return ValueError(f"can't resume from {latest}: it was trained with a different setup ({'; '.join(diffs)}); "
                      "train with resume=False or into a new folder")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
