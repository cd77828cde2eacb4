"""Records that outlive a process: runs, cycles, adapters and the datasets they were built on, as typed,
versioned dataclasses (like episodes). The store reads and writes them; nothing else sees their documents.

Each record type has a schema version, written with it (`schema`), and ordered migrations from every shape the
store has held. Documents written before records carried a version are dated by the fields they have (runs
gained `adapter_id`, then the retry fields; adapters gained `base_gguf`; cycles gained `regressions_allowed`).
Migrations run when a document is read, so opening an old store writes nothing (a reader never needs the
state lock); a migrated record reaches the disk in its new shape when it is next saved.

Reading never raises on a damaged document: a record without its key (a run without `run_id`), or written by a
newer sleepy, is refused with RecordError (the store skips it and warns once); a field of the wrong type is
read as its default, and the repair is reported in one line. Fields this version does not know are kept in
`extra` and written back, so an older sleepy does not drop a newer one's fields.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, ClassVar

Note = Callable[[str], None]


class RecordError(ValueError):
    """A document that can't be read as its record (one line: what is wrong with it)."""


def _kind(value) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _describe(value, hint) -> str:
    """What a value of the wrong type is, for the repair note (a list of numbers, not just "a list")."""
    args = typing.get_args(hint)
    if isinstance(value, list) and args and typing.get_origin(hint) is list:
        bad = next((v for v in value if not _conforms(v, args[0])), None)
        return f"a list holding {_kind(bad)}"
    return _kind(value)


def _conforms(value, hint) -> bool:
    """Whether a JSON value has the type a field is annotated with (int for float is fine, bool for int is not)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type) and issubclass(hint, Record):
        return isinstance(value, dict)
    if origin is list or hint is list:
        return isinstance(value, list) and (not args or all(_conforms(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict) and (not args or all(
            isinstance(k, str) and _conforms(v, args[1]) for k, v in value.items()))
    return isinstance(value, hint)


def _record_type(hint) -> type[Record] | None:
    """The record type a field holds (`DatasetRecord | None` -> DatasetRecord), if it holds one."""
    for h in (hint, *typing.get_args(hint)):
        if isinstance(h, type) and issubclass(h, Record):
            return h
    return None


class Record:
    """What every record type shares: reading a document (migrations, type checks, repairs) and writing one."""

    SCHEMA: ClassVar[int] = 1
    KEY: ClassVar[str | None] = None       # the field that names a record in its table (None: a part of another)
    LABEL: ClassVar[str] = "record"
    # version -> the step that turns a document of version - 1 into one of version (ordered, never edited)
    MIGRATIONS: ClassVar[dict[int, Callable[[dict], dict]]] = {}

    @classmethod
    def implied_version(cls, doc: dict) -> int:
        """The schema of a document written before records carried `schema` (dated by its fields)."""
        return cls.SCHEMA

    @classmethod
    def _hints(cls) -> dict:
        cached = cls.__dict__.get("_hints_cache")
        if cached is None:
            cached = {k: v for k, v in typing.get_type_hints(cls).items() if typing.get_origin(v) is not ClassVar}
            cls._hints_cache = cached
        return cached

    @classmethod
    def from_dict(cls, doc, on_repair: Note | None = None):
        """The record a stored document holds, migrated to the current schema.

        RecordError when it can't be one; `on_repair` is told, in one line, which fields had the wrong type
        and what they were read as (their defaults)."""
        record, repaired = cls._parse(doc)
        if repaired and on_repair:
            key = f" {getattr(record, cls.KEY)}" if cls.KEY else ""
            on_repair(f"{cls.LABEL}{key}: {'; '.join(repaired)}")
        return record

    @classmethod
    def checked(cls, doc):
        """The record a document the program itself built holds: a field of the wrong type is a bug here,
        refused with RecordError, never repaired."""
        record, repaired = cls._parse(doc)
        if repaired:
            raise RecordError(f"{cls.LABEL}: {'; '.join(repaired)}")
        return record

    @classmethod
    def _parse(cls, doc) -> tuple[Record, list[str]]:
        if not isinstance(doc, dict):
            raise RecordError(f"it is {_kind(doc)}, not an object")
        doc = copy.deepcopy(doc)          # the caller's document (the store's cache) is never changed
        version = doc.pop("schema", None)
        if version is None:
            version = cls.implied_version(doc)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RecordError(f"its schema is {version!r}, not a version number")
        if version > cls.SCHEMA:
            raise RecordError(f"written by a newer sleepy (schema {version}; this one reads up to {cls.SCHEMA})")
        for v in range(version + 1, cls.SCHEMA + 1):
            doc = cls.MIGRATIONS[v](doc)
        hints = cls._hints()
        key = cls.KEY
        if key is not None:
            value = doc.get(key)
            if value is None or value == "":
                raise RecordError(f"no {key}")
            if not _conforms(value, hints[key]):
                raise RecordError(f"its {key} is {_kind(value)}")
        values: dict = {}
        repaired: list[str] = []
        for f in fields(cls):
            if f.name == "extra" or f.name not in doc:
                continue
            value, hint = doc[f.name], hints[f.name]
            if value is None and not _conforms(None, hint):
                continue                              # JSON null where the field takes none: as if absent
            if not _conforms(value, hint):
                default = f.default_factory() if f.default is MISSING else f.default
                repaired.append(f"{f.name} was {_describe(value, hint)}, read as {default!r}")
                continue
            nested = _record_type(hint)
            if nested is not None and isinstance(value, dict):
                try:
                    value, notes = nested._parse(value)
                except RecordError as e:
                    repaired.append(f"{f.name} unreadable ({e}), read as None")
                    continue
                repaired += [f"{f.name}.{n}" for n in notes]
            elif hint is float and isinstance(value, int):
                value = float(value)
            values[f.name] = value
        cls._repair(values, repaired)
        names = {f.name for f in fields(cls)}
        if "extra" in names:
            values["extra"] = {k: v for k, v in doc.items() if k not in names}
        return cls(**values), repaired

    @classmethod
    def _repair(cls, values: dict, repaired: list[str]) -> None:
        """A record type's own checks beyond field types (drop what can't be used, name it in `repaired`)."""

    def to_dict(self) -> dict:
        out: dict = {"schema": self.SCHEMA}
        extra = getattr(self, "extra", {})
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Record) else copy.deepcopy(value)
        return {**copy.deepcopy(extra), **out}


# ---- datasets -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetRecord(Record):
    """A training dataset as recorded: the store's `latest_dataset`, and what an adapter or a cycle was built on
    (training.dataset.DatasetInfo.to_dict(); one shape so far)."""
    SCHEMA: ClassVar[int] = 1
    KEY: ClassVar[str | None] = "path"
    LABEL: ClassVar[str] = "dataset"

    path: str                                  # the .jsonl under state/datasets/
    hash: str = ""
    examples: int = 0
    by_provenance: dict[str, int] = field(default_factory=dict)   # own_pass | own_sample | reference | correction | replay
    dropped_leaks: int = 0
    dropped_duplicates: int = 0
    extra: dict = field(default_factory=dict)


# ---- runs -----------------------------------------------------------------------------------------------------

def _run_2(doc: dict) -> dict:
    """Runs recorded the adapter's id (bddc50d); before, only the file the backend loaded (`adapter`)."""
    return {"adapter_id": "", **doc}


# The retry loop every run before the named strategies (9041968) ran: retry.STRATEGIES["fixed"] as it was then,
# copied so that a later change of that strategy does not rewrite what old runs did.
_OLD_RETRY_LOOP = {"name": "fixed", "temperatures": [], "seed_per_attempt": False, "catch_repeats": False,
                   "restart_after_repeat": False}


def _run_3(doc: dict) -> dict:
    """Runs recorded their retry strategy, sampling settings and parallelism (9041968); before, one koan at a
    time with the fixed loop, the sampling settings unrecorded."""
    return {"retry_strategy": dict(_OLD_RETRY_LOOP), "seed": None, "temperature": None, "max_tokens": None,
            "sample": None, "repeat": 0, "parallel": 1, **doc}


@dataclass(frozen=True)
class RunRecord(Record):
    """A day, eval or rerun: what ran, with which model and settings, and how it ended (agent.py writes it)."""
    SCHEMA: ClassVar[int] = 3
    KEY: ClassVar[str | None] = "run_id"
    LABEL: ClassVar[str] = "run"
    MIGRATIONS: ClassVar[dict] = {2: _run_2, 3: _run_3}

    run_id: str
    kind: str = "day"                          # day | eval | validation | rerun
    split: str = "train"                       # train | eval | validation
    cycle: int = 0
    backend: str = ""
    model: str = ""
    adapter: str = ""                          # the adapter file the backend loaded ("": none)
    adapter_id: str = ""                       # its store id ("": the base model, or a path given by --adapter)
    started: float = 0.0
    finished: float | None = None
    status: str = "done"                       # running | done | failed | cancelled | interrupted
    koan_ids: list[str] = field(default_factory=list)
    max_attempts: int | None = None
    retry_strategy: dict[str, Any] = field(default_factory=dict)   # retry.RetryStrategy.to_dict()
    seed: int | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    sample: int | None = None                  # one independent first attempt per koan (eval --samples)
    repeat: int = 0                            # the index of a repeated whole run
    parallel: int = 1
    error: str = ""
    passed: int | None = None                  # None: the run has not finished
    total: int | None = None                   # koans that finished (short of koan_ids: stopped or crashed)
    extra: dict = field(default_factory=dict)

    @classmethod
    def implied_version(cls, doc: dict) -> int:
        if "retry_strategy" in doc or "parallel" in doc:
            return 3
        return 2 if "adapter_id" in doc else 1

    @property
    def every_koan_finished(self) -> bool:
        """Every koan given finished (a run without `total` predates the count: taken as whole)."""
        return self.total is None or self.total == len(self.koan_ids)


# ---- cycles ---------------------------------------------------------------------------------------------------

def _facts_2(doc: dict) -> dict:
    """The gate compared the validation slice too; before, it was not measured."""
    return {"validation_before": None, "validation_after": None, "validation_regressions": [], **doc}


def _facts_3(doc: dict) -> dict:
    """The gate judged repeated eval runs and kept its paired tests; before, one run each and no test."""
    return {"runs_before": 1, "runs_after": 1, "p_value": None, "diff_ci": [], **doc}


@dataclass(frozen=True)
class GateFacts(Record):
    """What the gate compared: the frozen pass rate before and after, the koans that regressed and gained, and
    the validation slice's pass rate before and after."""
    SCHEMA: ClassVar[int] = 3
    LABEL: ClassVar[str] = "gate facts"
    MIGRATIONS: ClassVar[dict] = {2: _facts_2, 3: _facts_3}

    @classmethod
    def implied_version(cls, doc: dict) -> int:
        if "runs_after" in doc:
            return 3
        return 2 if "validation_after" in doc else 1

    pass_rate_before: float | None = None
    pass_rate_after: float | None = None
    regressions: list[str] = field(default_factory=list)
    gains: list[str] = field(default_factory=list)
    regressions_allowed: int | None = None     # None: recorded before the gate had a tolerance count
    # the validation slice (training koans never trained on), base and candidate; None: not measured
    validation_before: float | None = None
    validation_after: float | None = None
    validation_regressions: list[str] = field(default_factory=list)
    # the eval runs judged on each side (`eval_repeats`), McNemar's exact p over the koans that flipped and a
    # bootstrap 95% interval of the pass-rate difference; None / []: recorded before the gate kept them
    runs_before: int = 1
    runs_after: int = 1
    p_value: float | None = None
    diff_ci: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _cycle_2(doc: dict) -> dict:
    """Cycles recorded how many regressions the gate allowed (c888dc0); before, the count was not kept."""
    return {"regressions_allowed": None, **doc}


def _cycle_3(doc: dict) -> dict:
    """Cycles recorded the validation slice's runs and pass rates, and every run of a day continued after a stop;
    before, there was no validation slice and a day was one run."""
    return {"day_run_ids": [doc["day_run_id"]] if doc.get("day_run_id") else [], "validation_before_run_id": "",
            "validation_run_id": "", "validation_before": None, "validation_after": None,
            "validation_by_step": {}, "validation_regressions": [], **doc}


def _cycle_4(doc: dict) -> dict:
    """Cycles recorded every eval run the gate judged (`eval_repeats`), its paired tests and the day's expert
    iteration runs; before, one run of each side, no test and no such runs."""
    return {"eval_run_ids": [doc["eval_run_id"]] if doc.get("eval_run_id") else [],
            "baseline_eval_run_ids": [doc["baseline_eval_run_id"]] if doc.get("baseline_eval_run_id") else [],
            "day_sample_run_ids": [], "runs_before": 1, "runs_after": 1, "p_value": None, "diff_ci": [], **doc}


@dataclass(frozen=True)
class CycleRecord(Record):
    """One cycle (day -> sleep -> eval -> gate), or cycle 0: the baseline eval (engine.py writes it)."""
    SCHEMA: ClassVar[int] = 4
    KEY: ClassVar[str | None] = "cycle"
    LABEL: ClassVar[str] = "cycle"
    MIGRATIONS: ClassVar[dict] = {2: _cycle_2, 3: _cycle_3, 4: _cycle_4}

    cycle: int
    eval_run_id: str = ""
    adapter_id: str | None = None              # None: the base model (cycle 0)
    promoted: bool = False
    reason: str = ""
    time: float = 0.0
    day_run_id: str = ""                       # the day's last run
    day_run_ids: list[str] = field(default_factory=list)   # all of its runs (a day continued after a stop)
    day_sample_run_ids: list[str] = field(default_factory=list)   # expert iteration's runs (day_samples)
    baseline_eval_run_id: str = ""
    dataset: DatasetRecord | None = None
    train: dict[str, Any] = field(default_factory=dict)          # steps, initial_loss, final_loss, duration_s
    pass_rate_before: float | None = None
    pass_rate_after: float | None = None
    regressions: list[str] = field(default_factory=list)
    gains: list[str] = field(default_factory=list)
    regressions_allowed: int | None = None
    validation_before_run_id: str = ""         # the validation slice, run by the base and by the candidate
    validation_run_id: str = ""
    validation_before: float | None = None
    validation_after: float | None = None
    validation_regressions: list[str] = field(default_factory=list)
    validation_by_step: dict[str, float] = field(default_factory=dict)   # the checkpoints it chose among
    eval_run_ids: list[str] = field(default_factory=list)            # every eval run judged (eval_repeats)
    baseline_eval_run_ids: list[str] = field(default_factory=list)
    runs_before: int = 1
    runs_after: int = 1
    p_value: float | None = None               # McNemar's exact p over the koans that flipped
    diff_ci: list[float] = field(default_factory=list)   # bootstrap 95% interval of the pass-rate difference
    extra: dict = field(default_factory=dict)

    @classmethod
    def implied_version(cls, doc: dict) -> int:
        if "eval_run_ids" in doc:
            return 4
        if "validation_run_id" in doc:
            return 3
        return 2 if "regressions_allowed" in doc else 1


# ---- adapters -------------------------------------------------------------------------------------------------

def _adapter_2(doc: dict) -> dict:
    """Adapters recorded the GGUF their base came from and its Ollama twin (8e7eee5); before, only a name
    (`SmolLM2-135M-Instruct (embedded GGUF)` for the trainers' default)."""
    return {"base_gguf": "", "ollama_base": "", **doc}


@dataclass(frozen=True)
class AdapterRecord(Record):
    """A trained adapter: what it was trained on and how, where its files are, how it scored, whether it is
    promoted (training/adapters.py mirrors it as the folder's meta.json)."""
    SCHEMA: ClassVar[int] = 2
    KEY: ClassVar[str | None] = "adapter_id"
    LABEL: ClassVar[str] = "adapter"
    MIGRATIONS: ClassVar[dict] = {2: _adapter_2}

    adapter_id: str
    cycle: int = 0
    trainer: str = ""                          # torch | mlx
    created: float = 0.0
    base_model: str = ""                       # a table model name or a path (what the record shows)
    base_gguf: str = ""
    ollama_base: str = ""
    dataset: DatasetRecord | None = None
    config: dict[str, Any] = field(default_factory=dict)   # the trainer's TrainConfig.to_dict(): its own keys
    steps: int = 0
    stopped: bool = False
    initial_loss: float | None = None
    final_loss: float | None = None
    loss_curve: list[dict] = field(default_factory=list)   # [{"step": 1, "loss": 2.3}, ...]
    duration_s: float | None = None
    promoted: bool = False
    gguf: str = ""                             # the llama.cpp LoRA (torch trainer)
    peft_dir: str = ""
    mlx_dir: str = ""
    eval_run_id: str | None = None             # the frozen eval of this adapter (None: not evaluated)
    eval: GateFacts | None = None              # the gate's comparison for it
    promoted_reason: str = ""
    promoted_at: float | None = None
    rolled_back_at: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def implied_version(cls, doc: dict) -> int:
        return 2 if "base_gguf" in doc or "ollama_base" in doc else 1

    @classmethod
    def _repair(cls, values: dict, repaired: list[str]) -> None:
        curve = values.get("loss_curve", [])
        good = [p for p in curve if _conforms(p.get("step"), int) and _conforms(p.get("loss"), float)]
        if len(good) < len(curve):
            repaired.append(f"loss_curve: {len(curve) - len(good)} point(s) without a step and a loss left out")
            values["loss_curve"] = good
