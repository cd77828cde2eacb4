"""Every message the app's screens receive.

Workers run in threads and never touch widgets: they post one of these to a screen, and an `@on` handler
there changes the UI. Engine events cross unchanged, wrapped one message class per event type (`bridge`).
"""

from __future__ import annotations

from typing import Any

from textual.message import Message
from textual.worker import WorkerState

from .. import events as ev
from ..engine import AdapterRecord, CycleRecord, RunRecord
from .state import FailureItem, StateSnapshot


# ---- engine events, delivered on the UI thread ------------------------------------------------------------------

class EngineEvent(Message):
    """An agent or trainer event; `event` is the engine's own dataclass."""

    def __init__(self, event: ev.Event) -> None:
        super().__init__()
        self.event = event


class RunStarted(EngineEvent):
    event: ev.RunStarted


class KoanStarted(EngineEvent):
    event: ev.KoanStarted


class TokenStreamed(EngineEvent):
    event: ev.TokenStreamed


class AttemptChecked(EngineEvent):
    event: ev.AttemptChecked


class KoanFinished(EngineEvent):
    event: ev.KoanFinished


class RunFinished(EngineEvent):
    event: ev.RunFinished


class Notice(EngineEvent):
    event: ev.Notice


class TrainStarted(EngineEvent):
    event: ev.TrainStarted


class TrainStep(EngineEvent):
    event: ev.TrainStep


class CheckpointSaved(EngineEvent):
    event: ev.CheckpointSaved


class TrainDone(EngineEvent):
    event: ev.TrainDone


class TrainError(EngineEvent):
    event: ev.TrainError


_BRIDGE: dict[type, type[EngineEvent]] = {
    ev.RunStarted: RunStarted, ev.KoanStarted: KoanStarted, ev.TokenStreamed: TokenStreamed,
    ev.AttemptChecked: AttemptChecked, ev.KoanFinished: KoanFinished, ev.RunFinished: RunFinished,
    ev.Notice: Notice, ev.TrainStarted: TrainStarted, ev.TrainStep: TrainStep,
    ev.CheckpointSaved: CheckpointSaved, ev.TrainDone: TrainDone, ev.TrainError: TrainError,
}


def bridge(event: ev.Event) -> EngineEvent:
    return _BRIDGE.get(type(event), EngineEvent)(event)


# ---- what the app's workers found ---------------------------------------------------------------------------

class StateLoaded(Message):
    def __init__(self, snapshot: StateSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class JobEnded(Message):
    """A worker finished (success, error or cancelled); sent to the screen that started it."""

    def __init__(self, group: str, state: WorkerState, error: str = "") -> None:
        super().__init__()
        self.group, self.state, self.error = group, state, error

    @property
    def ok(self) -> bool:
        return self.state == WorkerState.SUCCESS


class DatasetReady(Message):
    def __init__(self, info: Any, resumed: bool) -> None:
        super().__init__()
        self.info, self.resumed = info, resumed


class AdapterSaved(Message):
    """engine.train() returned: the adapter's store record (not promoted)."""

    def __init__(self, meta: AdapterRecord) -> None:
        super().__init__()
        self.meta = meta


class CycleDone(Message):
    def __init__(self, record: CycleRecord) -> None:
        super().__init__()
        self.record = record


class KoanSelected(Message):
    """A koan was chosen in the queue: show its history."""

    def __init__(self, koan_id: str) -> None:
        super().__init__()
        self.koan_id = koan_id


class HistoryLoaded(Message):
    def __init__(self, koan_id: str, episodes: list[dict]) -> None:
        super().__init__()
        self.koan_id, self.episodes = koan_id, episodes


class FailuresLoaded(Message):
    def __init__(self, run: RunRecord | None, items: list[FailureItem]) -> None:
        super().__init__()
        self.run, self.items = run, items


class CorrectionChecked(Message):
    def __init__(self, koan_id: str, passed: bool, outcome: str, signature: str | None,
                 diagnostics: list[dict], output: str = "") -> None:
        super().__init__()
        self.koan_id, self.passed, self.outcome, self.signature = koan_id, passed, outcome, signature
        self.diagnostics, self.output = diagnostics, output


class KoanFlagged(Message):
    def __init__(self, koan_id: str) -> None:
        super().__init__()
        self.koan_id = koan_id


class ModelsLoaded(Message):
    """The model picker's rows (engine.ModelChoice), with their status read off the UI thread."""

    def __init__(self, choices: list) -> None:
        super().__init__()
        self.choices = choices
