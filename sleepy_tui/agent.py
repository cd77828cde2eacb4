"""The day loop: the model tries a koan, the compiler answers, the answer goes into the next prompt.

Every attempt becomes an Episode. Bookkeeping (store writes and the flush after each koan) runs on a
writer thread, so the model's next generation never waits on the disk; a koan is reported finished
(KoanFinished) only after its episodes are durably on disk.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import events as ev
from .backends.base import Backend, BackendUnavailable, GenOptions
from .config import Settings
from .episodes import Episode, new_run_id
from .koans import Koan
from .prompts import build_messages, extract_code
from .sandbox import CheckResult, Sandbox
from .store import Store


@dataclass
class KoanResult:
    koan_id: str
    family: str
    passed: bool
    attempts: int
    final_signature: str | None
    episodes: list[Episode] = field(default_factory=list)


@dataclass
class RunResult:
    run_id: str
    results: list[KoanResult]
    cancelled: bool = False
    error: str = ""

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)


class _Writer(threading.Thread):
    """Stores episodes and flushes off the generation path; announces koans once they are durable."""

    def __init__(self, store: Store, on_event: ev.EventSink):
        super().__init__(name="episode-writer", daemon=True)
        self.store, self.on_event = store, on_event
        self.q: queue.Queue = queue.Queue()
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            try:
                episodes, finished = item
                self.store.add_episodes(episodes)
                self.store.flush()
                if finished is not None:
                    self.on_event(finished)
            except BaseException as e:  # reported by close(); the run stops
                self.error = e

    def close(self) -> None:
        self.q.put(None)
        self.join()
        if self.error:
            raise self.error


class Agent:
    def __init__(self, backend: Backend, sandbox: Sandbox, store: Store, settings: Settings, *,
                 on_event: ev.EventSink = ev.ignore, cancel: threading.Event | None = None):
        self.backend, self.sandbox, self.store, self.settings = backend, sandbox, store, settings
        self.on_event = on_event
        self.cancel = cancel or threading.Event()
        self.options = GenOptions(temperature=settings.temperature, seed=settings.seed,
                                  max_tokens=settings.max_tokens)

    # ---- one koan --------------------------------------------------------------------------------------------

    def solve(self, koan: Koan, *, run_id: str, cycle: int = 0, buggy: CheckResult | None = None) -> KoanResult:
        """Up to max_attempts attempts; stops at the first pass or when cancelled."""
        buggy = buggy or self.sandbox.check(koan.buggy, koan.tests)
        previous: str | None = None
        last: CheckResult | None = None
        last_sig: str | None = None
        episodes: list[Episode] = []
        for attempt in range(1, self.settings.max_attempts + 1):
            if self.cancel.is_set():
                break
            messages = build_messages(
                koan, buggy_diagnostics=buggy.diagnostics, previous=previous,
                previous_diagnostics=last.diagnostics if last else None,
                previous_failure=(last.output if last and last.outcome != "compile_error" else ""),
                previous_signature=last_sig)
            reply = self.backend.chat(
                messages, self.options, cancel=self.cancel,
                on_text=lambda t, a=attempt: self.on_event(ev.TokenStreamed(koan.id, a, t)))
            if reply.cancelled:
                break
            code = extract_code(reply.text)
            if code:
                result = self.sandbox.check(code, koan.tests)
            else:
                result = CheckResult("no_code", "no_code")
            ep = Episode(
                run_id=run_id, koan_id=koan.id, family=koan.family, split=koan.split, cycle=cycle,
                attempt=attempt, backend=self.backend.name, model=self.backend.model,
                adapter=self.backend.adapter or "", prompt=messages, reply=reply.text, code=code,
                outcome=result.outcome, signature=result.signature,
                diagnostics=[d.to_dict() for d in result.diagnostics],
                output="" if result.outcome in ("pass", "compile_error") else result.output[-2000:],
                generation_ms=reply.ms, check_ms=round(result.compile_ms + result.run_ms, 1),
                tokens_in=reply.tokens_in, tokens_out=reply.tokens_out)
            episodes.append(ep)
            self.on_event(ev.AttemptChecked(koan.id, attempt, result.outcome, result.signature, code,
                                            tuple(d.to_dict() for d in result.diagnostics), ep.id))
            if result.passed:
                break
            previous = code or None
            last, last_sig = result, result.signature
        passed = bool(episodes) and episodes[-1].passed
        return KoanResult(koan.id, koan.family, passed, len(episodes),
                          None if passed else (episodes[-1].signature if episodes else None), episodes)

    # ---- a run ---------------------------------------------------------------------------------------------

    def run(self, koans: list[Koan], *, kind: str = "day", cycle: int = 0, run_id: str | None = None,
            run_meta: dict | None = None) -> RunResult:
        run_id = run_id or new_run_id(kind)
        split = "eval" if kind == "eval" else "train"
        run = {"run_id": run_id, "kind": kind, "split": split, "cycle": cycle, "backend": self.backend.name,
               "model": self.backend.model, "adapter": self.backend.adapter or "", "started": time.time(),
               "finished": None, "status": "running", "koan_ids": [k.id for k in koans],
               "max_attempts": self.settings.max_attempts, **(run_meta or {})}
        self.store.save_run(run)
        self.on_event(ev.RunStarted(run_id, split, tuple(run["koan_ids"]), self.backend.describe(), kind))
        writer = _Writer(self.store, self.on_event)
        writer.start()
        results: list[KoanResult] = []
        error = ""
        # The broken program's own diagnostics open each prompt; the next koan's are compiled while the
        # model works on this one.
        prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buggy-check")
        pending = prefetch.submit(self.sandbox.check, koans[0].buggy, koans[0].tests) if koans else None
        try:
            for i, koan in enumerate(koans, 1):
                if self.cancel.is_set():
                    break
                self.on_event(ev.KoanStarted(run_id, koan.id, i, len(koans)))
                buggy = pending.result()
                if i < len(koans):
                    pending = prefetch.submit(self.sandbox.check, koans[i].buggy, koans[i].tests)
                res = self.solve(koan, run_id=run_id, cycle=cycle, buggy=buggy)
                if not res.episodes:
                    break  # cancelled before the first attempt finished
                results.append(res)
                writer.q.put((res.episodes, ev.KoanFinished(run_id, koan.id, res.passed, res.attempts,
                                                            res.final_signature, i, len(koans))))
        except BackendUnavailable as e:
            error = str(e)
            self.on_event(ev.Notice("error", error))
        finally:
            prefetch.shutdown(wait=True, cancel_futures=True)
            try:
                writer.close()
            finally:
                cancelled = self.cancel.is_set()
                run.update(finished=time.time(),
                           status="failed" if error else "cancelled" if cancelled else "done",
                           error=error, passed=sum(r.passed for r in results), total=len(results))
                self.store.save_run(run)
        result = RunResult(run_id, results, cancelled=self.cancel.is_set(), error=error)
        self.on_event(ev.RunFinished(run_id, result.passed, len(results), result.cancelled))
        return result
