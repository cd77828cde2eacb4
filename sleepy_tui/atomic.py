"""Atomic writes: a file or a folder is either its old self or its complete new self, never half of either.

Every file the project writes that outlives the process goes through here: a temporary sibling is written in
full (and fsynced), then renamed over the target. A crash leaves at most a `.tmp-*` sibling, which the next
writer of that folder removes (`remove_leftovers`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

TMP_PREFIX = ".tmp-"


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, default=str))


def write_folder(final: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """`fill(tmp)` writes a fresh temporary folder next to `final`, which then takes its place; an older folder
    of the same name is removed only once the new one is in. Returns `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        old = None
        if final.exists():
            old = final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def remove_leftovers(folder: str | os.PathLike) -> None:
    """Remove the temporary files and folders an interrupted writer left in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for junk in folder.glob(f"{TMP_PREFIX}*"):
        if junk.is_dir() and not junk.is_symlink():
            shutil.rmtree(junk, ignore_errors=True)
        else:
            junk.unlink(missing_ok=True)
