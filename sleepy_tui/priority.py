"""Heavy work yields the CPU to the UI: a lower scheduling priority for the calling thread.

On Linux the nice value belongs to a thread, and what a thread starts inherits it: llama.cpp's and torch's
thread pools (created from the thread that first runs the model), the sandbox's rustc and test binaries, the
agent's writer and prefetch threads. The app's workers call `lower_this_thread()` before they generate, check
or train, so the UI thread keeps its normal priority and gets the CPU first when a key is pressed; when nothing
else wants the CPU, a niced thread runs as fast as before. The UI thread's own long pause was the garbage
collector: QuietCollector moves full collections to the moments between bursts of typing.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

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


class QuietCollector:
    """Full garbage collections where the user won't feel them: between bursts of typing, not on a key press.

    A full collection walks every tracked object. In the app it took 200-900 ms (bench_ui), most of it walking
    what is alive and stays alive: the loaded model's tokenizer and template, the transcript, the widgets. Python
    starts one whenever the heap has grown by a quarter, so under load it landed on every tenth key press or so
    and made all of the slowest. Here Python's automatic collections stop at the middle generation (a few ms);
    a full one runs from `tick()` (the app calls it twice a second) once no key has been pressed for `quiet_s`
    and the last was `every_s` ago. What survives it is frozen (gc.freeze): later collections walk only what was
    made since, so they stay short. Frozen objects that become cyclic garbage later (a closed screen's widgets)
    wait for the one whole-heap collection every `thaw_every_s`, which also runs at a quiet moment.

    With no quiet moment for `at_most_s` (someone typing on and on), it freezes what is new without collecting:
    that costs microseconds, where a collection right after a model load walked 268k new objects in 696 ms on a
    key press. The garbage among what it froze waits for the next whole-heap collection. With no quiet moment
    for `collect_at_most_s`, a full collection runs anyway, so memory stays bounded."""

    NEVER = 1 << 30      # the oldest generation's threshold: Python's own full collections never start

    def __init__(self, *, quiet_s: float = 0.5, every_s: float = 2.0, at_most_s: float = 30.0,
                 collect_at_most_s: float = 300.0, thaw_every_s: float = 600.0, clock=time.monotonic) -> None:
        self.quiet_s, self.every_s, self.at_most_s, self.clock = quiet_s, every_s, at_most_s, clock
        self.collect_at_most_s, self.thaw_every_s = collect_at_most_s, thaw_every_s
        self.last_key = self.last_full = self.last_thaw = self.last_freeze = clock()
        self.freezes = 0                     # freezes without a collection (no quiet moment for at_most_s)
        self.durations: list[float] = []     # of the full collections it ran, in seconds
        self.freed: list[int] = []           # how many unreachable objects each found
        self._saved: tuple[int, int, int] | None = None

    def start(self) -> None:
        if self._saved is None:
            self._saved = gc.get_threshold()
            gc.set_threshold(self._saved[0], self._saved[1], self.NEVER)
            gc.collect()
            gc.freeze()
        self.last_full = self.last_thaw = self.last_freeze = self.clock()

    def stop(self) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None
            gc.unfreeze()                    # the process goes on with Python's own collector

    def key_pressed(self) -> None:
        self.last_key = self.clock()

    def loaded(self) -> None:
        """A big allocation has just ended (a run's first token: its model is loaded). Freeze what is there now, for
        free, so that no collection on a key press walks it; its garbage waits for the next whole-heap one."""
        if self._saved is None:
            return
        gc.freeze()
        self.last_freeze = self.clock()
        self.freezes += 1

    def tick(self) -> bool:
        """Run a full collection if now is a good moment; True if it did."""
        now = self.clock()
        quiet = now - self.last_key >= self.quiet_s and now - self.last_full >= self.every_s
        if self._saved is None:
            return False
        if not quiet and now - self.last_full < self.collect_at_most_s:
            if now - max(self.last_full, self.last_freeze) >= self.at_most_s:
                gc.freeze()                  # out of the next collection's way, for free; no garbage freed
                self.last_freeze = now
                self.freezes += 1
            return False
        t0 = time.perf_counter()
        if quiet and now - self.last_thaw >= self.thaw_every_s:
            gc.unfreeze()                    # the whole heap, this once
            self.last_thaw = now
        self.freed.append(gc.collect())
        gc.freeze()
        self.durations.append(time.perf_counter() - t0)
        self.last_full = self.clock()
        return True
