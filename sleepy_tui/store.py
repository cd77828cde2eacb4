"""All persistent state, behind one lock: tinydb files under state/, written atomically.

- `state/sleepy.json`: runs, cycles, adapters, corrections, flags (small tables).
- `state/episodes/<run_id>.json`: the episodes of one run (one tinydb file a run, so a flush rewrites one
  run's file, not the whole history).

Writes are cached (tinydb's CachingMiddleware) and flushed by `flush()`: the agent flushes after every koan.
Every file is written to a temp file, fsynced and renamed over the old one, so a crash leaves either the old
or the new file, never a torn one. Documents are written one a line, so a hand-damaged file can be recovered
line by line (the damaged original is kept as `*.corrupt-<time>`); so is one of the wrong shape (a list, a
table or record that is not an object). A state file that is not a regular file (a folder, a FIFO, a device) or
is implausibly large is refused with one line, never read.

Runs, cycles and adapters come back as the typed records of records.py, migrated from whatever shape they were
written in; a record that can't be read (no run_id, a newer schema) is skipped and a field of the wrong type read
as its default, each said once as a warning, so one damaged record never stops `sleepy report` or the app.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from tinydb import Query, TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.storages import Storage

from .atomic import write_text as atomic_write_text
from .episodes import Episode
from .records import AdapterRecord, CycleRecord, DatasetRecord, Record, RecordError, RunRecord
from .safe_text import read_regular_file

SCHEMA_VERSION = 1
STATE_FILE_MAX_BYTES = 256 << 20     # far above any real state file (episode output is capped per attempt)
_DOC_LINE = re.compile(r'^\s*"([^"]+)":\s*(\{.*\}),?\s*$')
_TABLE_LINE = re.compile(r'^\s*"([^"]+)":\s*\{\s*$')


def dump_tables(data: dict) -> str:
    """tinydb's {table: {doc_id: doc}} with one document a line."""
    out = ["{"]
    tables = list(data.items())
    for ti, (table, docs) in enumerate(tables):
        out.append(f"{json.dumps(table)}: {{")
        items = list(docs.items())
        for di, (doc_id, doc) in enumerate(items):
            comma = "," if di < len(items) - 1 else ""
            out.append(f"{json.dumps(str(doc_id))}: {json.dumps(doc, ensure_ascii=False)}{comma}")
        out.append("}" + ("," if ti < len(tables) - 1 else ""))
    out.append("}")
    return "\n".join(out) + "\n"


def recover_tables(text: str) -> dict:
    """Salvage every intact document line of a damaged file."""
    data: dict = {}
    table = "_default"
    for line in text.splitlines():
        m = _TABLE_LINE.match(line)
        if m:
            table = m.group(1)
            data.setdefault(table, {})
            continue
        m = _DOC_LINE.match(line)
        if m:
            try:
                data.setdefault(table, {})[m.group(1)] = json.loads(m.group(2))
            except (json.JSONDecodeError, RecursionError):
                continue
    good, _ = well_formed(data)
    return good


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def well_formed(data) -> tuple[dict, str]:
    """The part of `data` tinydb can use ({table: {integer doc id: object}}), and what was wrong with the rest
    ("" when nothing was)."""
    if not isinstance(data, dict):
        return {}, f"the top level is {_kind(data)}, not an object of tables"
    good: dict = {}
    problems: list[str] = []
    for name, table in data.items():
        if not isinstance(table, dict):
            problems.append(f"table {name!r} is {_kind(table)}")
            continue
        docs = {k: d for k, d in table.items() if k.isdigit() and isinstance(d, dict)}
        if len(docs) < len(table):
            problems.append(f"table {name!r} had {len(table) - len(docs)} malformed record(s)")
        good[name] = docs
    return good, "; ".join(problems)


class AtomicJSONStorage(Storage):
    """tinydb storage: atomic replace on write, line-wise recovery of a damaged file on read."""

    def __init__(self, path: str | Path, on_warning=None):
        self.path = Path(path)
        self.on_warning = on_warning or (lambda msg: None)

    def read(self):
        try:
            raw = read_regular_file(self.path, STATE_FILE_MAX_BYTES)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"{self.path}: can't be read as a state file: {e.strerror or e}; move it out of the "
                             "way (or give another --state)") from None
        text = raw.decode("utf-8", "replace")
        if not text.strip():
            return None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):   # RecursionError: nested thousands deep
            return self._recover(text, recover_tables(text), "")
        good, problem = well_formed(data)
        if problem:
            return self._recover(text, good if isinstance(data, dict) else recover_tables(text), problem)
        return data

    def _recover(self, text: str, data: dict, problem: str) -> dict:
        """Keep the damaged original beside the file, and the salvaged records in it."""
        backup = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        os.replace(self.path, backup)
        n = sum(len(t) for t in data.values())
        self.on_warning(f"{self.path}: damaged; recovered {n} record(s), original kept as {backup.name}"
                        + (f" ({problem})" if problem else ""))
        atomic_write_text(self.path, dump_tables(data))
        return data

    def write(self, data) -> None:
        atomic_write_text(self.path, dump_tables(data))

    def close(self) -> None:
        pass


def _open_db(path: Path, on_warning) -> TinyDB:
    db = TinyDB(path, storage=CachingMiddleware(lambda p: AtomicJSONStorage(p, on_warning)))
    db.storage.WRITE_CACHE_SIZE = 10**9  # we flush explicitly
    return db


class StateError(RuntimeError):
    """The state folder can't be used (one line, for the user)."""


class StateBusy(StateError):
    """Another process writes this state folder."""


class Store:
    """Thread-safe facade over the state folder. One instance per process and state dir."""

    def __init__(self, state_dir: Path, on_warning=None):
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "episodes").mkdir(exist_ok=True)
        except OSError as e:
            raise StateError(f"{self.dir}: can't be the state folder: {e.strerror} (give --state a folder)") from None
        self.warnings: list[str] = []

        def warn(msg: str) -> None:
            if msg in self.warnings:         # a damaged record is read on every refresh: said once
                return
            self.warnings.append(msg)
            if on_warning:
                on_warning(msg)

        self._warn = warn
        self._lock = threading.RLock()
        self._meta = _open_db(self.dir / "sleepy.json", warn)
        self._episode_dbs: dict[str, TinyDB] = {}
        self._lock_fd: int | None = None
        self._migrate()

    # ---- plumbing ------------------------------------------------------------------------------------------

    def _claim(self) -> None:
        """Before the first write: hold state/.lock (flock, released on close or when the process dies, even by
        kill -9). A second writing process is refused with the pid of the first; readers never take it."""
        if self._lock_fd is not None:
            return
        import fcntl
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateBusy(f"{self.dir} is in use by pid {holder} (another sleepy): let it finish, or give this "
                            "one another --state") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        # What this process read before it held the lock may be stale (another sleepy wrote since): start the
        # writing from the disk, so that the first write can't put old records back over newer ones.
        for db in (self._meta, *self._episode_dbs.values()):
            if not db.storage._cache_modified_count:
                db.storage.cache = None
                for name in db.tables():
                    db.table(name).clear_cache()        # tinydb's per-table query caches
        self._close_orphaned_runs()

    def _close_orphaned_runs(self) -> None:
        """Runs still marked running when this process takes the lock were left by a process that died (a live
        one would hold the lock): mark them interrupted; their finished koans stay on disk."""
        runs = self._meta.table("runs")
        orphans = runs.search(Query().status == "running")
        if not orphans:
            return
        runs.update({"status": "interrupted", "error": "the process ended before the run finished"},
                    doc_ids=[r.doc_id for r in orphans])
        self._meta.storage.flush()
        self._warn(f"{len(orphans)} run(s) left unfinished by an earlier process marked interrupted: "
                   + ", ".join(str(r.get("run_id", f"record {r.doc_id}")) for r in orphans))

    def _migrate(self) -> None:
        with self._lock:
            info = self._meta.table("schema")
            current = (info.get(doc_id=1) or {}).get("version", 0)
            if current != SCHEMA_VERSION:
                self._claim()
            for version in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](self)
            if current != SCHEMA_VERSION:
                info.upsert({"version": SCHEMA_VERSION}, Query().version.exists() | ~Query().version.exists())
                self._meta.storage.flush()

    def _episodes_db(self, run_id: str) -> TinyDB:
        db = self._episode_dbs.get(run_id)
        if db is None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
            db = _open_db(self.dir / "episodes" / f"{safe}.json", self._warn)
            self._episode_dbs[run_id] = db
        return db

    def flush(self) -> None:
        with self._lock:
            if self._lock_fd is None and (self._meta.storage._cache_modified_count or any(
                    db.storage._cache_modified_count for db in self._episode_dbs.values())):
                self._claim()
            self._meta.storage.flush()
            for db in self._episode_dbs.values():
                db.storage.flush()

    def close(self) -> None:
        with self._lock:
            self.flush()
            for db in self._episode_dbs.values():
                db.close()
            self._meta.close()
            self._episode_dbs.clear()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # ---- episodes ------------------------------------------------------------------------------------------

    def add_episode(self, ep: Episode | dict) -> None:
        doc = ep.to_dict() if isinstance(ep, Episode) else dict(ep)
        with self._lock:
            self._claim()
            self._episodes_db(doc["run_id"]).table("episodes").insert(doc)

    def add_episodes(self, eps: list[Episode | dict]) -> None:
        docs = [e.to_dict() if isinstance(e, Episode) else dict(e) for e in eps]
        with self._lock:
            self._claim()
            by_run: dict[str, list[dict]] = {}
            for d in docs:
                by_run.setdefault(d["run_id"], []).append(d)
            for run_id, ds in by_run.items():
                self._episodes_db(run_id).table("episodes").insert_multiple(ds)

    def run_ids_on_disk(self) -> list[str]:
        return sorted(p.stem for p in (self.dir / "episodes").glob("*.json"))

    def episodes(self, run_id: str | None = None) -> list[dict]:
        """Episodes of one run, or of every run (ordered by run, then insertion)."""
        with self._lock:
            runs = [run_id] if run_id else sorted(set(self.run_ids_on_disk()) | set(self._episode_dbs))
            out: list[dict] = []
            for r in runs:
                out.extend(self._episodes_db(r).table("episodes").all())
            return [dict(d) for d in out]

    # ---- runs, cycles, adapters, corrections, flags ----------------------------------------------------------

    def _upsert(self, table: str, key: str, doc: dict) -> None:
        with self._lock:
            self._claim()
            self._meta.table(table).upsert(doc, Query()[key] == doc[key])
            self._meta.storage.flush()

    def _all(self, table: str) -> list[dict]:
        with self._lock:
            return [dict(d) for d in self._meta.table(table).all()]

    def _save(self, table: str, cls: type[Record], record: Record | dict) -> None:
        """Write a record (or a document of its shape, checked: a field of the wrong type is refused)."""
        self._upsert(table, cls.KEY, (record if isinstance(record, cls) else cls.checked(record)).to_dict())

    def _records(self, table: str, cls: type[Record], cond=None) -> list:
        """The table's records that can be read (the rest skipped, each said once)."""
        with self._lock:
            docs = self._meta.table(table).search(cond) if cond is not None else self._meta.table(table).all()
            docs = [(d.doc_id, dict(d)) for d in docs]
        where = self.dir / "sleepy.json"
        out = []
        for doc_id, doc in docs:
            try:
                out.append(cls.from_dict(doc, on_repair=lambda note: self._warn(f"{where}: {note}")))
            except RecordError as e:
                self._warn(f"{where}: {cls.LABEL} record {doc_id} skipped: {e}")
        return out

    def save_run(self, run: RunRecord | dict) -> None:
        self._save("runs", RunRecord, run)

    def runs(self) -> list[RunRecord]:
        return sorted(self._records("runs", RunRecord), key=lambda r: r.started)

    def run(self, run_id: str) -> RunRecord | None:
        return next(iter(self._records("runs", RunRecord, Query().run_id == run_id)), None)

    def save_cycle(self, cycle: CycleRecord | dict) -> None:
        self._save("cycles", CycleRecord, cycle)

    def cycles(self) -> list[CycleRecord]:
        return sorted(self._records("cycles", CycleRecord), key=lambda c: c.cycle)

    def save_adapter(self, adapter: AdapterRecord | dict) -> None:
        self._save("adapters", AdapterRecord, adapter)

    def adapters(self) -> list[AdapterRecord]:
        return sorted(self._records("adapters", AdapterRecord), key=lambda a: a.created)

    def latest_dataset(self) -> DatasetRecord | None:
        """The dataset the last training was built on (None: none yet, or its record can't be read)."""
        doc = self.get_value("latest_dataset")
        if doc is None:
            return None
        where = self.dir / "sleepy.json"
        try:
            return DatasetRecord.from_dict(doc, on_repair=lambda note: self._warn(f"{where}: latest {note}"))
        except RecordError as e:
            self._warn(f"{where}: the latest dataset's record skipped: {e}")
            return None

    def add_correction(self, correction: dict) -> None:
        self._upsert("corrections", "correction_id", correction)

    def corrections(self) -> list[dict]:
        return self._all("corrections")

    def flag_koan(self, koan_id: str, reason: str) -> None:
        self._upsert("flags", "koan_id", {"koan_id": koan_id, "reason": reason, "time": time.time()})

    def flags(self) -> list[dict]:
        return self._all("flags")

    def get_value(self, key: str, default=None):
        with self._lock:
            doc = self._meta.table("values").get(Query().key == key)
            return doc["value"] if doc else default

    def set_value(self, key: str, value) -> None:
        self._upsert("values", "key", {"key": key, "value": value})


def _migration_1(store: Store) -> None:
    """Initial schema: nothing to convert."""


MIGRATIONS = {1: _migration_1}
