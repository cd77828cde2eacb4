"""The one contract every model backend follows, and the registry that names them.

A backend streams a chat reply as text chunks. `chat()` drives `stream()` and returns the whole reply with
token counts, calling `on_text` for each chunk (the UI shows tokens as they come) and stopping early when
`cancel` is set.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
MAX_CHARS_PER_TOKEN = 16


class BackendUnavailable(RuntimeError):
    """The backend cannot serve: the message is one line saying what to run or install."""


@dataclass(frozen=True)
class GenOptions:
    temperature: float = 0.2
    seed: int | None = 0
    max_tokens: int = 768
    stop_after_code: bool = True   # stop streaming once a fenced code block is closed: the rest is chatter


@dataclass
class Chunk:
    """A piece of streamed text. Any chunk may carry the token counts so far (the latest wins, so a stream the
    caller stops early keeps them); the last chunk of a stream may carry the counts instead of text."""
    text: str = ""
    tokens_in: int | None = None
    tokens_out: int | None = None


@dataclass
class Reply:
    text: str
    tokens_in: int
    tokens_out: int
    ms: float
    cancelled: bool = False
    truncated: bool = False   # the stream went on past max_tokens and was cut


@dataclass
class Backend(ABC):
    """Subclasses set `name` and implement `stream`."""
    model: str
    adapter: str | None = None
    name: str = field(default="base", init=False)
    max_parallel = 1   # requests it serves at once (a server: many; an in-process model: one)

    @abstractmethod
    def stream(self, messages: list[Message], options: GenOptions) -> Iterator[Chunk]:
        """Yield the reply in chunks; raise BackendUnavailable with a one-line fix when it cannot serve."""

    def describe(self) -> str:
        return f"{self.name}:{self.model}" + (f"+{self.adapter}" if self.adapter else "")

    def close(self) -> None:  # noqa: B027 - optional for subclasses, a no-op by default
        """Release model memory / connections (optional)."""

    def chat(self, messages: list[Message], options: GenOptions | None = None, *,
             on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> Reply:
        options = options or GenOptions()
        t0 = time.perf_counter()
        parts: list[str] = []
        size = 0
        limit = options.max_tokens * MAX_CHARS_PER_TOKEN  # a server that ignores max_tokens can't flood us
        tokens_in = tokens_out = None
        cancelled = truncated = False
        gen = self.stream(messages, options)
        try:
            for chunk in gen:
                # Counts first: a backend may send them with every chunk, and the loop can stop at any chunk.
                if chunk.tokens_in is not None:
                    tokens_in = chunk.tokens_in
                if chunk.tokens_out is not None:
                    tokens_out = chunk.tokens_out
                if chunk.text:
                    parts.append(chunk.text)
                    size += len(chunk.text)
                    if on_text:
                        on_text(chunk.text)
                    if size > limit:
                        truncated = True
                        break
                    if options.stop_after_code and _closed_fence("".join(parts)):
                        break
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
        finally:
            close = getattr(gen, "close", None)
            if close:
                close()
        # Lone surrogates or NULs from a misbehaving server would break JSON and UTF-8 files downstream.
        text = "".join(parts).encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
        return Reply(
            text=text,
            tokens_in=tokens_in if tokens_in is not None else estimate_tokens(messages),
            tokens_out=tokens_out if tokens_out is not None else max(1, len(text) // 4) if text else 0,
            ms=round((time.perf_counter() - t0) * 1000, 1),
            cancelled=cancelled,
            truncated=truncated,
        )


def _closed_fence(text: str) -> bool:
    """True once an opening ``` fence has been closed by a second one at the start of a line."""
    first = text.find("```")
    return first >= 0 and text.find("\n```", first + 3) >= 0


def estimate_tokens(messages: list[Message]) -> int:
    """Rough count (4 characters a token) for backends that don't report usage."""
    return sum(len(m.get("content", "")) for m in messages) // 4


# ---- registry -----------------------------------------------------------------------------------------------

Factory = Callable[..., Backend]
_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def deco(factory: Factory) -> Factory:
        _REGISTRY[name] = factory
        return factory
    return deco


def registered() -> dict[str, Factory]:
    return dict(_REGISTRY)
