"""Untrusted text and files, made safe to show and to read.

Model replies, compiler and test output, koan files and state files are data. `terminal_safe` turns every
character a terminal would act on into visible text (ESC shows as `\\x1b`, so an OSC 52 clipboard write, a
clear-screen or an alternate-screen switch prints as letters instead of happening); `SafeStream` applies it to
everything written to a stream. `read_regular_file` opens a file only if it is a regular file of bounded size,
so a FIFO never blocks the reader and `/dev/zero` never fills its memory.

No UI imports: the engine, the CLI and the app all use it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import TextIO

# C0 controls but \t and \n, DEL, C1 controls, and the bidi embeddings/overrides/isolates that reorder what a
# reader sees ("Trojan Source"). A lone CR would move the cursor back and let later text overwrite a line.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMES = {"\r": "\\r", "\x1b": "\\x1b"}


def _visible(m: re.Match) -> str:
    ch = m.group()
    o = ord(ch)
    return _NAMES.get(ch) or (f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}")


def terminal_safe(text: str) -> str:
    """`text` with every control character but newline and tab shown as an escape (`\\x1b`, `\\r`, `\\u202e`).

    A CR that ends a line (CRLF) is dropped rather than shown: it moves nothing that the newline would not."""
    if not isinstance(text, str):
        text = str(text)
    return _UNSAFE.sub(_visible, text.replace("\r\n", "\n"))


class SafeStream:
    """A text stream wrapper that writes `terminal_safe(s)` for every `write(s)`; everything else is delegated."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, s: str) -> int:
        self._stream.write(terminal_safe(s))
        return len(s)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


# ---- files ----------------------------------------------------------------------------------------------------

KOAN_MAX_BYTES = 1 << 20          # a koan or a candidate program: the corpus' largest is a few KB
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


class UnsafeFile(OSError):
    """The path is not a regular file, or it is larger than the reader accepts. `strerror` says which."""


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of `path`, if it is a regular file (symlinks followed) of at most `limit` bytes.

    Opened non-blocking, so a FIFO without a writer is refused at once instead of hanging the open or the read.
    Raises OSError: FileNotFoundError and the like as usual, IsADirectoryError for a folder, UnsafeFile for
    any other kind of file or one over `limit` (each with a one-line `strerror`)."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFDIR:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if kind != stat.S_IFREG:
            raise UnsafeFile(errno.EINVAL, f"{_KINDS.get(kind, 'not a file')}, not a regular file", str(path))
        too_big = UnsafeFile(errno.EFBIG, f"too large ({_size(st.st_size)}; at most {_size(limit)})", str(path))
        if st.st_size > limit:
            raise too_big
        parts, got = [], 0
        while got <= limit:                       # the file may grow while it is read: never past the limit
            block = os.read(fd, min(1 << 20, limit + 1 - got))
            if not block:
                break
            parts.append(block)
            got += len(block)
        if got > limit:
            raise too_big
        return b"".join(parts)
    finally:
        os.close(fd)
