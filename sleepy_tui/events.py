"""What the agent and the trainer report while they work.

The engine calls an `EventSink` (any callable taking one event). The CLI prints events, the app posts them
as messages to the UI thread. Events are small frozen dataclasses; `kind` names them for logs and JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

EventSink = Callable[["Event"], None]


def ignore(_event: "Event") -> None:
    """A sink that drops everything."""


@dataclass(frozen=True)
class Event:
    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


# ---- agent (day / eval) -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunStarted(Event):
    run_id: str
    split: str
    koan_ids: tuple[str, ...]
    backend: str
    run_kind: str = "day"   # day | eval


@dataclass(frozen=True)
class KoanStarted(Event):
    run_id: str
    koan_id: str
    index: int      # 1-based position in the run
    total: int


@dataclass(frozen=True)
class TokenStreamed(Event):
    koan_id: str
    attempt: int
    text: str


@dataclass(frozen=True)
class AttemptChecked(Event):
    koan_id: str
    attempt: int
    outcome: str
    signature: str | None
    code: str
    diagnostics: tuple[dict, ...] = ()
    episode_id: str = ""


@dataclass(frozen=True)
class KoanFinished(Event):
    run_id: str
    koan_id: str
    passed: bool
    attempts: int
    final_signature: str | None
    index: int = 0
    total: int = 0


@dataclass(frozen=True)
class RunFinished(Event):
    run_id: str
    passed: int
    total: int
    cancelled: bool = False
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Notice(Event):
    """Something a person should read (backend chosen, koan skipped, ...)."""
    level: str      # info | warning | error
    message: str


# ---- trainer (sleep) --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainStarted(Event):
    run_dir: str
    total_steps: int
    examples: int
    resumed_from: int = 0
    load_s: float = 0.0         # the phase before the first step: base model load (and a first de-quantization)
    load_detail: str = ""


@dataclass(frozen=True)
class TrainStep(Event):
    step: int
    total_steps: int
    loss: float
    learning_rate: float
    tokens_per_s: float
    eta_s: float                # from measured step times (a call's first, warm-up step left out)
    seconds: float = 0.0        # this step's wall time


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int
    path: str


@dataclass(frozen=True)
class TrainDone(Event):
    adapter_dir: str
    steps: int
    initial_loss: float | None
    final_loss: float | None
    stopped: bool = False   # stopped on request before total_steps


@dataclass(frozen=True)
class TrainError(Event):
    message: str


def from_dict(doc: dict) -> Event:
    """The event a `to_dict()` document describes (as a trainer process prints it); ValueError if none."""
    if not isinstance(doc, dict):
        raise ValueError("an event is a JSON object")
    cls = _kinds().get(doc.get("kind"))
    if cls is None:
        raise ValueError(f"unknown event kind {doc.get('kind')!r}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items() if k in names})
    except TypeError as e:
        raise ValueError(f"a {cls.__name__} event without its fields ({e})") from None


def _kinds() -> dict[str, type[Event]]:
    out, todo = {}, list(Event.__subclasses__())
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo += cls.__subclasses__()
    return out
