"""Atomic writes: a file or a folder is either its old self or its complete new self, never half of either.

Every file the project writes that outlives the process goes through here: a temporary sibling is written in
full (and fsynced), then renamed over the target. A crash leaves at most a `.tmp-*` sibling, which the next
writer of that folder removes (`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` for a writer that wants a file name (a library writing the file itself);
    once the block ends without an error it is fsynced and renamed over `path`, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o644)            # what a plain open() gives under the usual umask (mkstemp makes it 0600)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with writing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, default=str))


def write_folder(final: str | os.PathLike, fill: Callable[[Path], None], *,
                 keep: Callable[[Path], bool] | None = None) -> Path:
    """`fill(tmp)` writes a fresh temporary folder next to `final`, which then takes its place; an older folder
    of the same name is removed only once the new one is in. `keep(final)` true once `fill` is done (another
    process finished the same folder meanwhile): theirs stays, the new one is dropped. Returns `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        if keep is not None and keep(final):
            return final
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
