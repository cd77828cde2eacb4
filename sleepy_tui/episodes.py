"""An episode is one attempt of the model at one koan: what it saw, what it wrote, what the compiler said."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, fields


def new_run_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class Episode:
    run_id: str
    koan_id: str
    family: str
    split: str                 # train | eval | validation
    cycle: int
    attempt: int               # 1-based
    backend: str
    model: str
    adapter: str
    prompt: list[dict]         # the chat messages sent
    reply: str
    code: str                  # extracted candidate ("" when the reply had none)
    outcome: str               # pass | compile_error | test_failure | timeout | crashed | no_code
    signature: str | None      # None on pass
    diagnostics: list[dict] = field(default_factory=list)
    output: str = ""           # the test binary's output (capped), for test failures, timeouts and crashes
    generation_ms: float = 0.0
    check_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    repeat_of: int | None = None   # the candidate was this attempt's program again (0: the broken program): not
                                   # compiled twice, its verdict reused
    temperature: float | None = None
    seed: int | None = None
    time: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return f"{self.run_id}:{self.koan_id}:{self.attempt}"

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    def to_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Episode":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
