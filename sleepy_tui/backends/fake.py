"""The test double: a backend that plays back queued replies, streamed in small chunks.

It records what it was asked (`calls`, `options`) so tests can assert on the prompts the agent built.
A queued item that is an exception instance is raised instead of replied (e.g. BackendUnavailable).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Iterator

from .base import Backend, BackendUnavailable, Chunk, GenOptions, Message, estimate_tokens, register

DEMO_REPLY = "```rust\n// the fake backend has no scripted replies: it always answers this\n```\n"


class ScriptExhausted(AssertionError):
    """The test asked for more replies than it queued."""


@register("fake")
class ScriptedBackend(Backend):
    name = "fake"
    max_parallel = 64
    __eq__ = object.__eq__      # identity, not the dataclass field comparison of Backend
    __hash__ = object.__hash__

    def __init__(self, replies: list[str | BaseException], chunk_size: int = 8, delay_s: float = 0.0, *,
                 cycle: bool = False, model: str = "scripted", adapter: str | None = None):
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.model, self.adapter = model, adapter
        self.replies = list(replies)
        self.chunk_size, self.delay_s, self.cycle = chunk_size, delay_s, cycle
        self.calls: list[list[Message]] = []
        self.options: list[GenOptions] = []
        self._next = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "ScriptedBackend":
        """`--backend fake --model replies.json` plays that JSON list of strings; no model: one canned reply."""
        if settings.model:
            path = Path(settings.model)
            try:
                replies = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise BackendUnavailable(f"fake backend: --model must be a JSON list of replies ({path}: {e})") \
                    from None
            if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
                raise BackendUnavailable(f"fake backend: {path} must hold a JSON list of strings")
            return cls(replies, model=str(path), adapter=settings.adapter or None)
        return cls([DEMO_REPLY], cycle=True, adapter=settings.adapter or None)

    @property
    def remaining(self) -> int:
        return len(self.replies) - self._next

    def _take(self) -> str | BaseException:
        with self._lock:
            if self._next >= len(self.replies):
                if not (self.cycle and self.replies):
                    raise ScriptExhausted(f"ScriptedBackend ran out of replies after {self._next} call(s)")
                self._next = 0
            item = self.replies[self._next]
            self._next += 1
            return item

    def stream(self, messages: list[Message], options: GenOptions) -> Iterator[Chunk]:
        self.calls.append(copy.deepcopy(list(messages)))
        self.options.append(options)
        item = self._take()
        if isinstance(item, BaseException):
            raise item
        text = item
        for i in range(0, len(text), self.chunk_size):
            if self.delay_s:
                time.sleep(self.delay_s)
            yield Chunk(text[i:i + self.chunk_size])
        yield Chunk(tokens_in=estimate_tokens(messages), tokens_out=max(1, len(text) // 4) if text else 0)
