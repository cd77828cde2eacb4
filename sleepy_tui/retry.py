"""Retry strategies: how sampling changes from one attempt to the next, as data.

A strategy is named in the settings (`retry_strategy`) and recorded on every run, so an eval says which
strategy produced it and two strategies can be compared on the same koans. Seeds are derived from the
settings' seed, the koan, the attempt and the sample: the same settings give the same episodes.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from .backends.base import GenOptions
from .rust_lexer import tokenize


@dataclass(frozen=True)
class RetryStrategy:
    name: str
    description: str
    temperatures: tuple[float, ...] = ()   # attempt i samples at temperatures[i-1] (the last repeats); () = settings
    seed_per_attempt: bool = True          # a fresh seed per attempt; False: the settings' seed every time
    catch_repeats: bool = True             # a candidate equal to the broken program or an earlier one is not
                                           # compiled again, and the next prompt says so
    sample_temperature: float = 0.8        # independent first attempts (`sleepy eval --samples K`)
    restart_after_repeat: bool = False     # after a repeat, ask afresh (the first attempt's prompt, a new seed and
                                           # temperature) instead of showing the repeated program once more

    def options(self, settings, koan_id: str, attempt: int, repeat: int = 0) -> GenOptions:
        """Sampling for one attempt of one koan (attempt is 1-based; `repeat` numbers repeated whole runs, each
        with seeds of its own)."""
        if repeat and not self.seed_per_attempt:
            seed = derive_seed(settings.seed, "sample", repeat)
        elif self.seed_per_attempt:
            seed = derive_seed(settings.seed, koan_id, attempt, repeat)
        else:
            seed = settings.seed
        temperature = settings.temperature
        if self.temperatures:
            temperature = self.temperatures[min(attempt, len(self.temperatures)) - 1]
        return GenOptions(temperature=temperature, seed=seed, max_tokens=settings.max_tokens)

    def sample_options(self, settings, koan_id: str, sample: int) -> GenOptions:
        """One of K independent first attempts: warm sampling, a seed per sample."""
        return GenOptions(temperature=self.sample_temperature, seed=derive_seed(settings.seed, koan_id, "k", sample),
                          max_tokens=settings.max_tokens)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["temperatures"] = list(self.temperatures)
        return d


STRATEGIES: dict[str, RetryStrategy] = {s.name: s for s in (
    RetryStrategy("fixed", "the loop before 2026-12-02: the settings' temperature and seed on every attempt, "
                  "repeats compiled again", temperatures=(), seed_per_attempt=False, catch_repeats=False),
    RetryStrategy("explore", "greedy first, then warmer (0.7 .. 1.0), a seed per attempt; an exact repeat is "
                  "caught before compiling, and the attempt after it is a fresh sample of the first prompt",
                  temperatures=(0.0, 0.7, 0.8, 0.9, 1.0), restart_after_repeat=True),
)}
DEFAULT_STRATEGY = "explore"


def derive_seed(seed: int, *parts) -> int:
    h = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def candidate_key(code: str) -> tuple[str, ...]:
    """What makes two programs the same program: their tokens (whitespace and comments do not count)."""
    return tuple(t.text for t in tokenize(code))
