"""Heavy work yields the CPU to the UI: a lower scheduling priority for the calling thread.

On Linux the nice value belongs to a thread, and what a thread starts inherits it: llama.cpp's and torch's
thread pools (created from the thread that first runs the model), the sandbox's rustc and test binaries, the
agent's writer and prefetch threads. The app's workers call `lower_this_thread()` before they generate, check
or train, so the UI thread keeps its normal priority and gets the CPU first when a key is pressed; when nothing
else wants the CPU, a niced thread runs as fast as before.
"""

from __future__ import annotations

import os
import sys
import threading

BACKGROUND_NICE = 10


def lower_this_thread(by: int = BACKGROUND_NICE) -> int | None:
    """Raise the calling thread's nice value by `by` (at most 19); returns it, or None where a thread has no nice
    value of its own (not Linux: there it would slow the whole process, the UI included)."""
    if not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        target = min(19, os.getpriority(os.PRIO_PROCESS, tid) + by)
        os.setpriority(os.PRIO_PROCESS, tid, target)
        return target
    except OSError:
        return None


def this_thread_nice() -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
