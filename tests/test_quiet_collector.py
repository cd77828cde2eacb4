"""QuietCollector (priority.py): Python's own full garbage collections stop while it runs; a full one runs once
nobody has typed for a while; with no pause, a free freeze every `at_most_s` and a collection after
`collect_at_most_s`; stop() gives the thresholds back."""

from __future__ import annotations

import gc

from sleepy_tui.priority import QuietCollector


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_full_collections_wait_for_a_pause_in_typing_and_never_wait_forever():
    clock, before = Clock(), gc.get_threshold()
    c = QuietCollector(quiet_s=1.0, every_s=10.0, at_most_s=60.0, collect_at_most_s=300.0, clock=clock)
    assert not c.tick()                                  # not started: it leaves the collector alone
    c.start()
    try:
        assert gc.get_threshold() == (before[0], before[1], QuietCollector.NEVER)
        assert gc.get_freeze_count() > 0
        clock.now += 5
        assert not c.tick()                              # quiet, but a full collection ran 5 s ago (start)
        clock.now += 6
        c.key_pressed()
        clock.now += 0.5
        assert not c.tick()                              # someone is typing
        clock.now += 0.6
        assert c.tick() and len(c.durations) == 1        # 1.1 s without a key, 12 s since the last
        last = clock.now
        frozen_at = []
        for _ in range(1000):                            # a key every half second, on and on
            clock.now += 0.5
            c.key_pressed()
            before_freezes = c.freezes
            if c.tick():
                break
            if c.freezes > before_freezes:
                frozen_at.append(clock.now - last)
        # every 60 s a free freeze instead of a collection; after 300 s a full collection, typing or not
        assert [round(t) for t in frozen_at] == [60, 120, 180, 240] and len(c.durations) == 2
        assert 300 <= clock.now - last < 300.5
    finally:
        c.stop()
    assert gc.get_threshold() == before
    assert not c.tick()


def test_a_full_collection_frees_what_python_no_longer_collects_by_itself():
    c = QuietCollector(quiet_s=0, every_s=0, clock=Clock())
    c.start()
    try:
        class Node:
            pass
        gc.collect()
        for _ in range(1000):                            # reference cycles: only the collector frees them
            a, b = Node(), Node()
            a.other, b.other = b, a
        del a, b
        assert c.tick()
        assert not any(isinstance(o, Node) for o in gc.get_objects())
    finally:
        c.stop()


def test_what_survives_is_frozen_and_the_whole_heap_is_walked_now_and_then():
    import weakref
    clock, before = Clock(), gc.get_threshold()
    c = QuietCollector(quiet_s=0, every_s=0, thaw_every_s=600, clock=clock)
    c.start()
    try:
        class Node:
            pass
        kept = [Node() for _ in range(100)]
        for a, b in zip(kept, kept[1:]):
            a.next, b.prev = b, a                                   # a chain of reference cycles
        alive = weakref.ref(kept[0])
        frozen = gc.get_freeze_count()
        clock.now += 1
        assert c.tick() and gc.get_freeze_count() >= frozen + 100   # alive: out of later collections' way
        del kept, a, b                                              # garbage now, in cycles, but frozen
        clock.now += 1
        assert c.tick() and alive() is not None                     # a short collection doesn't walk it
        clock.now += 600
        assert c.tick() and alive() is None                         # the whole-heap one, every 10 minutes
    finally:
        c.stop()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_loaded_model_is_frozen_at_once_so_no_key_press_walks_it():
    clock = Clock()
    c = QuietCollector(clock=clock)
    c.loaded()                                           # not started: nothing
    assert c.freezes == 0
    c.start()
    try:
        model = [[i] for i in range(50_000)]             # what a model load leaves: many new tracked objects
        before = gc.get_freeze_count()
        clock.now += 1
        c.loaded()
        assert gc.get_freeze_count() >= before + 50_000 and c.freezes == 1 and c.last_freeze == clock.now
        assert not c.durations                           # frozen, not collected
        del model
    finally:
        c.stop()
