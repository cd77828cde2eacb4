"""The day loop: the model tries a koan, the compiler answers, the answer goes into the next prompt.

How sampling changes between attempts is the run's retry strategy (retry.py); an exact repeat of the broken
program or of an earlier attempt is caught before it costs a compile. Where the backend serves several
requests at once (a server), `settings.parallel` koans are in flight together.

Every attempt becomes an Episode. Bookkeeping (store writes and the flush after each koan) runs on a
writer thread, so the model's next generation never waits on the disk; a koan is reported finished
(KoanFinished) only after its episodes are durably on disk.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from . import events as ev
from .backends.base import Backend, BackendUnavailable
from .config import Settings
from .episodes import Episode, new_run_id
from .koans import Koan
from .prompts import build_messages, extract_code
from .records import RunRecord
from .retry import STRATEGIES, candidate_key
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
        self.strategy = STRATEGIES[settings.retry_strategy]

    # ---- one koan --------------------------------------------------------------------------------------------

    def solve(self, koan: Koan, *, run_id: str, cycle: int = 0, buggy: CheckResult | None = None,
              sample: int | None = None, repeat: int = 0) -> KoanResult:
        """Up to max_attempts attempts; stops at the first pass or when cancelled.

        `sample` (eval --samples): one independent first attempt, sampled with that sample's seed. `repeat`
        (eval --repeats): the index of a whole repeated run, which gets seeds of its own."""
        buggy = buggy or self.sandbox.check(koan.buggy, koan.tests)
        previous: str | None = None
        last: CheckResult | None = None
        last_sig: str | None = None
        repeat_of: int | None = None
        episodes: list[Episode] = []
        # every program checked for this koan, by its tokens: the broken one is "attempt 0"
        seen: dict[tuple, tuple[int, CheckResult]] = {candidate_key(koan.buggy): (0, buggy)}
        attempts = 1 if sample is not None else self.settings.max_attempts
        buggy_failure = buggy.output if buggy.outcome == "test_failure" else ""  # names the tests a behaviour bug fails
        for attempt in range(1, attempts + 1):
            if self.cancel.is_set():
                break
            if repeat_of is not None and self.strategy.restart_after_repeat:
                # The model copies the program it is shown; after a repeat, a fresh sample of the first prompt
                # (new seed, warmer) explores where showing the repeated program once more would not.
                messages = build_messages(koan, buggy_diagnostics=buggy.diagnostics, buggy_failure=buggy_failure)
            else:
                messages = build_messages(
                    koan, buggy_diagnostics=buggy.diagnostics, buggy_failure=buggy_failure, previous=previous,
                    previous_diagnostics=last.diagnostics if last else None,
                    previous_failure=(last.output if last and last.outcome != "compile_error" else ""),
                    previous_signature=last_sig, repeat_of=repeat_of)
            options = (self.strategy.sample_options(self.settings, koan.id, sample) if sample is not None
                       else self.strategy.options(self.settings, koan.id, attempt, repeat))
            reply = self.backend.chat(
                messages, options, cancel=self.cancel,
                on_text=lambda t, a=attempt: self.on_event(ev.TokenStreamed(koan.id, a, t)))
            if reply.cancelled:
                break
            code = extract_code(reply.text)
            repeat_of = None
            if not code:
                result = CheckResult("no_code", "no_code")
            else:
                key = candidate_key(code)
                if self.strategy.catch_repeats and key in seen:
                    repeat_of, result = seen[key]  # the same program: the same verdict, without a compile
                else:
                    result = self.sandbox.check(code, koan.tests)
                    seen.setdefault(key, (attempt, result))
            ep = Episode(
                run_id=run_id, koan_id=koan.id, family=koan.family, split=koan.split, cycle=cycle,
                attempt=attempt, backend=self.backend.name, model=self.backend.model,
                adapter=self.backend.adapter or "", prompt=messages, reply=reply.text, code=code,
                outcome=result.outcome, signature=result.signature,
                diagnostics=[d.to_dict() for d in result.diagnostics],
                output="" if result.outcome in ("pass", "compile_error") else result.output[-2000:],
                generation_ms=reply.ms,
                check_ms=0.0 if repeat_of is not None else round(result.compile_ms + result.run_ms, 1),
                tokens_in=reply.tokens_in, tokens_out=reply.tokens_out, repeat_of=repeat_of,
                temperature=options.temperature, seed=options.seed)
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
            run_meta: dict | None = None, sample: int | None = None, repeat: int = 0) -> RunResult:
        run_id = run_id or new_run_id(kind)
        split = kind if kind in ("eval", "validation") else "train"
        workers = max(1, min(self.settings.parallel, self.backend.max_parallel, len(koans) or 1))
        if workers < self.settings.parallel:
            self.on_event(ev.Notice("info", f"{self.backend.name} serves one request at a time here: "
                                            f"running {workers} koan(s) at once, not {self.settings.parallel}"))
        run = RunRecord(
            run_id=run_id, kind=kind, split=split, cycle=cycle, backend=self.backend.name,
            model=self.backend.model or "", adapter=self.backend.adapter or "", started=time.time(),
            finished=None, status="running", koan_ids=[k.id for k in koans],
            max_attempts=1 if sample is not None else self.settings.max_attempts,
            retry_strategy=self.strategy.to_dict(), seed=self.settings.seed,
            temperature=self.settings.temperature, max_tokens=self.settings.max_tokens,
            sample=sample, repeat=repeat, parallel=workers, **(run_meta or {}))
        self.store.save_run(run)
        self.on_event(ev.RunStarted(run_id, split, tuple(run.koan_ids), self.backend.describe(), kind))
        writer = _Writer(self.store, self.on_event)
        writer.start()
        results: dict[int, KoanResult] = {}
        errors: list[str] = []
        # The broken program's own diagnostics open each prompt; they are compiled ahead while the model works.
        prefetch = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="buggy-check")
        buggy = [prefetch.submit(self.sandbox.check, k.buggy, k.tests) for k in koans[:workers + 1]]
        lock = threading.Lock()
        next_index = iter(range(len(koans)))

        def work() -> None:
            while not self.cancel.is_set() and not errors:
                with lock:
                    i = next(next_index, None)
                    if i is None:
                        return
                    if i + workers + 1 < len(koans) and len(buggy) == i + workers + 1:
                        k = koans[i + workers + 1]
                        buggy.append(prefetch.submit(self.sandbox.check, k.buggy, k.tests))
                koan = koans[i]
                self.on_event(ev.KoanStarted(run_id, koan.id, i + 1, len(koans)))
                try:
                    res = self.solve(koan, run_id=run_id, cycle=cycle, buggy=buggy[i].result(), sample=sample,
                                     repeat=repeat)
                except BackendUnavailable as e:
                    errors.append(str(e))
                    return
                if not res.episodes:
                    return  # cancelled before the first attempt finished
                results[i] = res
                writer.q.put((res.episodes, ev.KoanFinished(run_id, koan.id, res.passed, res.attempts,
                                                            res.final_signature, i + 1, len(koans))))

        try:
            if workers == 1:
                work()
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="koan") as pool:
                    for f in [pool.submit(work) for _ in range(workers)]:
                        f.result()
        finally:
            error = errors[0] if errors else ""
            if error:
                self.on_event(ev.Notice("error", error))
            prefetch.shutdown(wait=True, cancel_futures=True)
            done = [results[i] for i in sorted(results)]
            try:
                writer.close()
            finally:
                cancelled = self.cancel.is_set()
                self.store.save_run(replace(run, finished=time.time(),
                                            status="failed" if error else "cancelled" if cancelled else "done",
                                            error=error, passed=sum(r.passed for r in done), total=len(done)))
        result = RunResult(run_id, done, cancelled=self.cancel.is_set(), error=error)
        self.on_event(ev.RunFinished(run_id, result.passed, len(done), result.cancelled))
        return result
