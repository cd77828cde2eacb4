"""The `sleepy` command: a thin driver of the engine. `sleepy` alone opens the app."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from . import events as ev
from .config import ConfigError, Settings, load_settings
from .koans import KoanError, families_for, load_corpus, load_koan, write_manifest
from .locations import frozen_manifest
from .safe_text import KOAN_MAX_BYTES, SafeStream, read_regular_file

if TYPE_CHECKING:
    from .engine import AdapterRecord


class CliError(Exception):
    """A one-line, user-facing error: printed without a traceback, exit status 2."""


def _settings(args) -> Settings:
    from dataclasses import fields
    cli = {f.name: getattr(args, f.name, None) for f in fields(Settings) if f.metadata.get("group")}
    if getattr(args, "koans", None):
        cli["koans_dir"] = str(Path(args.koans).resolve())
    if getattr(args, "state", None):
        cli["state_dir"] = str(Path(args.state).resolve())
    return load_settings(cli)


def _corpus(args, settings: Settings, *, eval_folder: bool = False):
    corpus = load_corpus(settings.koans_path, all_frozen=eval_folder and bool(getattr(args, "koans", None)))
    for line in corpus.errors:
        print(f"warning: {line}", file=sys.stderr)
    return corpus


# ---- koans -------------------------------------------------------------------------------------------------------

def cmd_koans_list(args) -> int:
    s = _settings(args)
    corpus = _corpus(args, s)
    koans = corpus.select(split=args.split, family=args.family)
    for k in koans:
        print(f"{k.id:10} {k.split:5} {k.family:16} {k.expected_error:12} {k.title}")
    print(f"{len(koans)} koans")
    return 0


def cmd_koans_show(args) -> int:
    s = _settings(args)
    k = _corpus(args, s).select(ids=[args.id])[0]
    print(f"{k.id} ({k.family}, {k.split} split): {k.title}\nexpected error: {k.expected_error}")
    if k.hint:
        print(f"hint: {k.hint}")
    print("\n--- buggy ---\n" + k.buggy.strip())
    if args.solution:
        print("\n--- solution ---\n" + k.solution.strip())
        import difflib
        diff = difflib.unified_diff(k.buggy.strip().splitlines(), k.solution.strip().splitlines(), "buggy",
                                    "solution", lineterm="", n=1)
        print("\n--- diff ---\n" + "\n".join(diff))
    return 0


def cmd_koans_check(args) -> int:
    from .validate import corpus_problems
    s = _settings(args)
    problems: list[str] = []
    if args.paths:
        koans = []
        for p in map(Path, args.paths):
            files = sorted(p.rglob("*.toml")) if p.is_dir() else [p]
            for f in files:
                if f.name == "frozen_eval.toml":
                    continue
                try:
                    koans.append(load_koan(f, families_for(f.parent)))   # a user's folder: any family
                except KoanError as e:
                    problems.append(str(e))
        manifest_errors = [e for e in load_corpus(s.koans_path).errors if "frozen" in e]
        problems += manifest_errors
    else:
        corpus = load_corpus(s.koans_path)
        problems += corpus.errors
        koans = list(corpus.koans.values())
    engine = _engine(args)
    try:
        problems += corpus_problems(engine.sandbox, sorted(koans, key=lambda k: k.id))
        flagged = engine.flagged()
    finally:
        engine.close()
    for p in problems:
        print(p)
    for kid, reason in sorted(flagged.items()):
        print(f"flagged in the review (days skip it): {kid}: {reason}")
    print(f"checked {len(koans)} koans: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def cmd_koans_freeze(args) -> int:
    s = _settings(args)
    corpus = load_corpus(s.koans_path, strict=False)
    # the frozen set as the manifest names it: an edited frozen koan is re-frozen, never dropped from it
    everything = {**corpus.koans, **corpus.edited}
    ids = args.ids or list(corpus.frozen_ids) or [k.id for k in corpus.eval_set]
    unknown = [i for i in ids if i not in everything]
    if unknown:
        raise CliError(f"unknown koan id(s): {', '.join(unknown)}")
    koans = [everything[i] for i in ids]
    path = frozen_manifest(s.koans_path)
    write_manifest(path, koans)
    print(f"froze {len(koans)} koans into {path}")
    return 0


def cmd_verify(args) -> int:
    s = _settings(args)
    k = _corpus(args, s).select(ids=[args.koan])[0]
    try:
        code = read_regular_file(args.file, KOAN_MAX_BYTES).decode("utf-8")   # never a FIFO or /dev/zero
    except UnicodeDecodeError as e:
        raise CliError(f"{args.file}: cannot read: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise CliError(f"{args.file}: cannot read: {e.strerror or e}") from None
    engine = _engine(args)
    try:
        r = engine.verify(code, k)   # with the settings' sandbox limits
    finally:
        engine.close()
    if r.passed:
        print(f"PASS {k.id}: {r.tests_passed} test(s) passed")
        return 0
    print(f"FAIL {k.id}: {r.outcome} ({r.signature})")
    for d in r.diagnostics:
        if d.level == "error":
            print(d.rendered)
    if r.output and r.outcome != "compile_error":
        print(r.output[-2000:])
    return 1


def cmd_koans_generate(args) -> int:
    from collections import Counter
    s = _settings(args)
    corpus = _corpus(args, s)
    out = s.koans_path / "generated"
    engine = _engine(args)
    try:
        written, sources = engine.generate_koans(out, limit=args.count, family=args.family, corpus=corpus)
    finally:
        engine.close()
    if not sources:
        raise CliError("no training koans to derive from" + (f" in family {args.family}" if args.family else ""))
    by_kind = Counter(g.mutation for g in written).most_common()
    detail = f" ({', '.join(f'{n} {c}' for n, c in by_kind)})" if written else ""
    print(f"wrote {len(written)} generated training koan(s) from {sources} source(s) to {out}{detail}")
    return 0


def cmd_koans_import(args) -> int:
    out = Path(args.out or f"{args.source}-koans")
    engine = _engine(args)
    try:
        report = engine.import_rustlings(Path(args.path), out)
    finally:
        engine.close()
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.kinds.items())) or "none"
    print(f"wrote {len(report.written)} koan(s) to {out} ({kinds}); skipped {len(report.skipped)} exercise(s)")
    if report.written:
        print(f"check: sleepy koans check {out}; eval: sleepy eval --cycle 0 --koans {out}")
    return 0 if report.written else 1


# ---- sleep -------------------------------------------------------------------------------------------------------

class _TrainPrinter:
    def __init__(self):
        self.last = 0.0

    def __call__(self, e: ev.Event) -> None:
        import time
        if isinstance(e, ev.TrainStarted):
            note = f", resumed from step {e.resumed_from}" if e.resumed_from else ""
            print(f"training {e.examples} examples for {e.total_steps} steps{note} -> {e.run_dir}", flush=True)
            if e.load_s:
                print(f"  {e.load_detail or 'loaded the base model'} in {e.load_s:.0f}s; the first step warms up "
                      "(slower than the rest, left out of the ETA)", flush=True)
        elif isinstance(e, ev.TrainStep):
            now = time.time()
            if now - self.last > 2 or e.step == e.total_steps or e.step == 1:
                self.last = now
                print(f"  step {e.step}/{e.total_steps} loss {e.loss:.4f} lr {e.learning_rate:.2e} "
                      f"{e.tokens_per_s:.0f} tok/s {e.seconds:.1f}s/step eta {e.eta_s:.0f}s", flush=True)
        elif isinstance(e, ev.CheckpointSaved):
            print(f"  checkpoint at step {e.step}", flush=True)
        elif isinstance(e, ev.TrainDone):
            print(f"done: {e.steps} steps, loss {e.initial_loss} -> {e.final_loss}"
                  + (" (stopped; resume with --resume)" if e.stopped else ""), flush=True)
        elif isinstance(e, ev.TrainError):
            print(f"training failed: {e.message}", file=sys.stderr)
        elif isinstance(e, ev.Notice):
            print(f"{e.level}: {e.message}", file=sys.stderr)
        else:
            _Printer()(e)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _engine(args):
    from .engine import Engine
    return Engine(_settings(args), on_warning=_warn)


def cmd_train(args) -> int:
    import json
    engine = _engine(args)
    if args.resume:
        info = engine.latest_dataset()
        if info is None:
            raise CliError("nothing to resume: no dataset has been built yet")
        if not engine.training_interrupted():
            raise CliError("nothing to resume: the last training finished (`sleepy adapters list`); "
                           "`sleepy train` starts a new one")
    else:
        try:
            info = engine.build_dataset()
        except ValueError as e:
            raise CliError(str(e)) from None
    print(f"dataset {info.path}: {info.examples} examples {json.dumps(info.by_provenance)}")
    stop = threading.Event()
    try:
        meta = engine.train(info, cycle=engine.current_cycle() + 1, on_event=_TrainPrinter(), stop=stop,
                            resume=args.resume, fresh=not args.resume)
    except KeyboardInterrupt:
        stop.set()
        raise
    except (OSError, ValueError, RuntimeError) as e:   # already printed as "training failed: ..." by the printer
        hint = ("; fix that, then `sleepy train --resume` continues from the last checkpoint"
                if engine.training_interrupted() else "")
        raise CliError(f"training failed: {e}{hint}") from None
    print(f"adapter {meta.adapter_id} saved (not promoted: `sleepy cycle` gates it, "
          f"or `sleepy adapters promote {meta.adapter_id}`)")
    return 0


def cmd_cycle(args) -> int:
    from .engine import EngineError
    engine = _engine(args)
    cancel = threading.Event()
    printer, tprinter = _Printer(getattr(args, "stream", False)), _TrainPrinter()

    def on_event(e):
        (tprinter if e.kind.startswith(("Train", "Checkpoint")) or isinstance(e, ev.Notice) else printer)(e)

    for _ in range(args.cycles):
        try:
            rec = engine.cycle(day_count=args.count, on_event=on_event, cancel=cancel)
        except EngineError as e:
            raise CliError(str(e)) from None
        except KeyboardInterrupt:
            cancel.set()
            raise
        except (OSError, ValueError, RuntimeError) as e:   # a trainer or a model that failed: one line, not a traceback
            from .engine import USER_ERRORS
            if isinstance(e, USER_ERRORS):
                raise
            first = str(e).splitlines()[0] if str(e) else "no message"
            raise CliError(f"the cycle failed ({type(e).__name__}: {first}); what finished is stored "
                           "(`sleepy status`), a stopped training resumes with `sleepy train --resume`") from None
        print(cycle_line(rec))
    return 0


def cycle_line(rec) -> str:
    """What `sleepy cycle` prints when a cycle ends: the verdict, the pass rates, the koans that moved and the
    paired test."""
    verdict = "PROMOTED" if rec.promoted else "REJECTED"
    line = (f"cycle {rec.cycle}: {verdict} ({rec.reason}); frozen pass rate "
            f"{rec.pass_rate_before or 0:.1%} -> {rec.pass_rate_after or 0:.1%}; "
            f"regressions: {', '.join(rec.regressions) or 'none'}; gains: {', '.join(rec.gains) or 'none'}")
    if rec.p_value is not None:
        line += f"; McNemar p = {rec.p_value:.2f}"
    if len(rec.diff_ci) == 2:
        line += f", 95% interval of the difference [{rec.diff_ci[0]:+.1%}, {rec.diff_ci[1]:+.1%}]"
    if max(rec.runs_before, rec.runs_after) > 1:
        line += f" ({rec.runs_before} and {rec.runs_after} eval runs)"
    return line


def cmd_adapters(args) -> int:
    from .engine import AdapterError
    engine = _engine(args)
    try:
        if args.adapters_command == "promote":
            engine.promote(args.id)
            print(f"{args.id} is now the current adapter")
        elif args.adapters_command == "rollback":
            prev = engine.rollback()
            print(f"current adapter: {prev or 'none (base model)'}")
        else:
            cur = engine.current_adapter_id()
            rows = engine.adapters()
            if not rows:
                print("no adapters yet: `sleepy train` or `sleepy cycle` makes one")
            for a in rows:
                g = a.eval
                score = (f"{g.pass_rate_before:.0%}->{g.pass_rate_after:.0%}"
                         if g and g.pass_rate_before is not None and g.pass_rate_after is not None else "not evaluated")
                mark = "*" if a.adapter_id == cur else " "
                print(f"{mark} {a.adapter_id:24} cycle {a.cycle} {a.trainer:5} steps {a.steps} "
                      f"loss {a.initial_loss or 0:.3f}->{a.final_loss or 0:.3f} "
                      f"examples {a.dataset.examples if a.dataset else '-'} eval {score}")
    except AdapterError as e:
        raise CliError(str(e)) from None
    return 0


def cmd_export(args) -> int:
    engine = _engine(args)
    rows = [a for a in engine.adapters() if a.cycle == args.cycle and a.gguf]
    if not rows:
        raise CliError(f"no GGUF adapter for cycle {args.cycle} (see `sleepy adapters list`)")
    meta = rows[-1]
    out = Path(args.out or engine.adapter_dir(meta.adapter_id))
    out.mkdir(parents=True, exist_ok=True)
    model, note = _ollama_base(meta, args.base)
    modelfile = out / "Modelfile"
    modelfile.write_text(f"FROM {model}\nADAPTER {Path(meta.gguf).resolve()}\n")
    name = args.name or f"sleepy-cycle{args.cycle}"
    print(f"wrote {modelfile}\nnote: {note}\nrun: ollama create {name} -f {modelfile}")
    return 0


def _ollama_base(meta: AdapterRecord, given: str | None) -> tuple[str, str]:
    """(the Modelfile's FROM, a note): --base, else the Ollama twin of the table model the adapter was trained
    on (records before the table named SmolLM2 as "SmolLM2-135M-Instruct (embedded GGUF)")."""
    from .models import table
    trained_on = meta.base_model
    spec = table().find(meta.ollama_base) or table().find(trained_on.split(" (")[0])
    if given:
        same = spec is not None and table().find(given) is spec
        return given, (f"the adapter was trained on {trained_on}" +
                       ("" if same else "; FROM must be that same base model"))
    if spec is None:
        raise CliError(f"the adapter was trained on {trained_on or 'an unknown base'}, which has no Ollama model "
                       "in the table: pass --base OLLAMA_MODEL (the same weights)")
    return spec.ollama, f"the adapter was trained on {spec.name}; FROM {spec.ollama}: {spec.ollama_note}"


# ---- the agent -------------------------------------------------------------------------------------------------

class _Printer:
    """Prints agent events as the run goes: one line per koan, tokens with --stream."""

    def __init__(self, stream: bool = False):
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, e: ev.Event) -> None:
        with self.lock:
            if isinstance(e, ev.TokenStreamed) and self.stream:
                sys.stdout.write(e.text)
                sys.stdout.flush()
            elif isinstance(e, ev.AttemptChecked) and self.stream:
                print(f"\n  -> attempt {e.attempt}: {e.outcome} {e.signature or ''}")
            elif isinstance(e, ev.KoanFinished):
                verdict = "PASS" if e.passed else "FAIL"
                why = f"attempts: {e.attempts}" if e.passed else f"attempts: {e.attempts}, {e.final_signature}"
                print(f"[{e.index}/{e.total}] {e.koan_id} ... {verdict} ({why})", flush=True)
            elif isinstance(e, ev.Notice):
                print(f"{e.level}: {e.message}", file=sys.stderr)
            elif isinstance(e, ev.RunStarted):
                print(f"{e.run_kind}: {len(e.koan_ids)} koans with {e.backend}", file=sys.stderr)


def _print_summary(engine, run_id: str) -> None:
    m = engine.run_metrics(run_id)
    med = f"{m.median_steps_to_green:g}" if m.median_steps_to_green else "-"
    rep = f"{m.repeat_error_rate:.0%}" if m.repeat_error_rate is not None else "-"
    print(f"\nrun {run_id}: {m.passed}/{m.total} passed ({m.pass_rate:.1%}), median steps to green {med}, "
          f"repeat error rate {rep}")
    for fam, v in m.per_family.items():
        print(f"  {fam:16} {v['passed']}/{v['total']}")
    if m.final_signature_counts:
        print("  failures: " + ", ".join(f"{s} x{n}" for s, n in list(m.final_signature_counts.items())[:6]))


def _agent_run(args, koans, *, kind: str, cycle: int | None, sample: int | None = None, repeat: int = 0) -> int:
    _run_once(args, koans, kind=kind, cycle=cycle, sample=sample, repeat=repeat)
    return 0


def _run_once(args, koans, *, kind: str, cycle: int | None, sample: int | None = None, repeat: int = 0) -> str:
    """One run through the engine, its summary printed; returns its run id."""
    engine = _engine(args)
    cancel = threading.Event()
    try:
        result = engine.run_agent(koans, kind=kind, cycle=cycle, on_event=_Printer(getattr(args, "stream", False)),
                                  cancel=cancel, sample=sample, repeat=repeat)
        _print_summary(engine, result.run_id)   # while the store is still open
    except KeyboardInterrupt:
        cancel.set()
        raise
    except Exception as e:
        from .engine import USER_ERRORS
        if isinstance(e, USER_ERRORS):   # main() prints these as they are
            raise
        raise CliError(f"the run crashed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'});"
                       " it is stored as failed") from e
    finally:
        engine.close()
    if result.error:
        raise CliError(result.error)
    return result.run_id


def cmd_run(args) -> int:
    s = _settings(args)
    corpus = _corpus(args, s)
    if args.koan:
        koans = corpus.select(ids=args.koan)
        frozen = [k.id for k in koans if k.split == "eval"]
        if frozen:
            raise CliError(f"{', '.join(frozen)} belong(s) to the frozen eval set; use `sleepy eval` for those")
        if args.count:
            koans = koans[: args.count]
    else:
        engine = _engine(args)
        try:
            koans = engine.day_koans(args.count, family=args.family, corpus=corpus)
        finally:
            engine.close()
    if not koans:
        raise CliError("no koans match")
    return _agent_run(args, koans, kind="day", cycle=args.cycle)


def cmd_eval(args) -> int:
    s = _settings(args)
    if args.validation:
        return _eval_validation(args, s)
    if args.cycle is None:
        raise CliError("eval: --cycle N is required (the cycle the eval is recorded under; 0 for the base model)")
    corpus = _corpus(args, s, eval_folder=True)
    engine = _engine(args)
    try:
        koans = engine.eval_koans(args.koan, family=args.family, corpus=corpus)
    finally:
        engine.close()
    if not koans and (args.koan or args.family):
        raise CliError("no frozen koans match")
    if not koans:
        raise CliError("the frozen eval set is empty (is koans/frozen_eval.toml present?)")
    rc = 0
    if args.samples:
        return _eval_samples(args, s, koans)
    for r in range(args.repeats):
        rc = _agent_run(args, koans, kind="eval", cycle=args.cycle, repeat=r) or rc
    if args.repeats > 1:
        engine = _engine(args)
        try:
            row = next(r for r in engine.cycle_table() if r.cycle == args.cycle)
        finally:
            engine.close()
        print(f"\ncycle {args.cycle}: pass rate over {len(row.pass_rates)} runs: mean {row.pass_rate_mean:.1%}, "
              f"spread (sd) {row.pass_rate_spread:.1%}; runs: " + ", ".join(f"{p:.0%}" for p in row.pass_rates))
    return rc


def _eval_validation(args, s: Settings) -> int:
    """The validation slice with the current model (the promoted adapter, or --adapter, or the base)."""
    if args.samples or args.koan or args.family or args.repeats != 1:
        raise CliError("eval --validation runs the whole slice once: no --samples, --koan, --family or --repeats")
    _corpus(args, s)
    engine = _engine(args)
    cancel = threading.Event()
    try:
        adapter = None if s.adapter else engine.current_adapter()
        run_id = engine.validation_run(adapter, cycle=args.cycle, cancel=cancel,
                                       on_event=_Printer(getattr(args, "stream", False)))
        if not run_id:
            raise CliError("this koan folder has no validation slice (it takes 1 in 8 training koans from "
                           "folders of at least 40)")
        _print_summary(engine, run_id)
    except KeyboardInterrupt:
        cancel.set()
        raise
    finally:
        engine.close()
    return 0


def _eval_samples(args, s: Settings, koans) -> int:
    """K independent first attempts per koan: pass@1 and pass@K with their spread."""
    from .retry import STRATEGIES
    run_ids = [_run_once(args, koans, kind="eval", cycle=args.cycle, sample=k) for k in range(args.samples)]
    engine = _engine(args)
    try:
        p = engine.pass_at_k(run_ids)
    finally:
        engine.close()
    print(f"\ncycle {args.cycle}, {p.k} independent first attempts per koan ({s.retry_strategy} strategy, "
          f"temperature {STRATEGIES[s.retry_strategy].sample_temperature}): pass@1 {p.pass_at_1:.1%} "
          f"(spread {p.spread:.1%}), pass@{p.k} {p.pass_at_k:.1%}")
    for kid, share in p.per_koan.items():
        print(f"  {kid:10} {share:.0%}")
    return 0


def cmd_status(args) -> int:
    engine = _engine(args)
    try:
        _print_status(engine)
    finally:
        engine.close()
    return 0


def _print_status(engine) -> None:
    rows = engine.cycle_table()
    if rows:
        print("cycle  pass rate        passed  median steps  repeat err  regressions  adapter")
        for r in rows:
            m = r.metrics
            spread = f" ±{r.pass_rate_spread:.1%}" if len(r.pass_rates) > 1 else ""
            med = f"{m.median_steps_to_green:g}" if m.median_steps_to_green else "-"
            rep = r.repeat_error_rate_across if r.repeat_error_rate_across is not None else m.repeat_error_rate
            rep_s = f"{rep:.0%}" if rep is not None else "-"
            regs = ", ".join(r.regressions) if r.regressions else ("-" if r.cycle == rows[0].cycle else "none")
            print(f"{r.cycle:>5}  {r.pass_rate_mean:6.1%}{spread:9}  {m.passed:>3}/{m.total:<3} {med:>12}  "
                  f"{rep_s:>10}  {regs:11}  {r.adapter or 'base'}")
    else:
        print("no eval yet: run `sleepy eval --cycle 0` for a baseline")
    runs = engine.runs(kind="day")
    if runs:
        last = runs[-1]
        m = engine.run_metrics(last.run_id)
        print(f"\nlatest day run {last.run_id} ({last.status}): {m.passed}/{m.total} passed "
              f"({m.pass_rate:.1%}) with {last.backend}:{last.model}")


def cmd_report(args) -> int:
    engine = _engine(args)
    out = Path(args.out) if args.out else engine.settings.state_path / "report"
    try:
        path = engine.report(out)
    finally:
        engine.close()
    print(f"wrote {path} and its plots")
    return 0


# ---- models (the table of embedded models: sleepy_tui/models.py) ------------------------------------------------

def cmd_models(args) -> int:
    from . import cli_models
    from .models import ModelError
    try:
        return cli_models.run(args, _settings)
    except ModelError as e:
        raise CliError(str(e)) from None


def _models_parser(sub) -> None:
    from . import cli_models
    cli_models.add_parser(sub, _common).set_defaults(func=cmd_models)


# ---- wiring --------------------------------------------------------------------------------------------------------

def _setting_flags(p: argparse.ArgumentParser, group: str, top: bool = False) -> None:
    """The flags of one group of settings, made from Settings itself (config.py): the name, type, metavar and
    help are written once there, so no setting is missing from a command that needs it."""
    from dataclasses import fields

    from .config import Settings
    types = {"int": int, "float": float}
    for f in fields(Settings):
        meta = f.metadata
        if meta.get("group") != group:
            continue
        kw = {"dest": f.name, "help": meta["help"], "type": types.get(f.type, str)}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if not top:
            kw["default"] = argparse.SUPPRESS  # sub-commands keep what was given before them
        p.add_argument(meta.get("flag") or "--" + f.name.replace("_", "-"), **kw)


def _model_flags(p: argparse.ArgumentParser, top: bool = False) -> None:
    _setting_flags(p, "model", top)
    if not top:
        p.add_argument("--stream", action="store_true", help="print the model's output as it streams")


def _common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # Sub-commands must not reset what was given before them (`sleepy --state X run`): SUPPRESS their default.
    default = None if top else argparse.SUPPRESS
    p.add_argument("--koans", metavar="DIR", default=default,
                   help="a folder of koan files instead of the project's corpus")
    p.add_argument("--state", metavar="DIR", default=default, help="state folder (default: ./state)")


_FAMILY_HELP = "a family of the koan folder (the project's: borrow_checker, trait_bounds, ...)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sleepy", description="A small local code model learns Rust from its "
                                     "own mistakes. With no command, opens the app.")
    _common(parser, top=True)
    _model_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command")

    koans = sub.add_parser("koans", help="list, show, check and freeze koans")
    ksub = koans.add_subparsers(dest="koans_command", required=True)
    p = ksub.add_parser("list", help="list koans")
    _common(p)
    p.add_argument("--family", metavar="FAMILY", help=_FAMILY_HELP)
    p.add_argument("--split", choices=("eval", "validation", "train"))
    p.set_defaults(func=cmd_koans_list)
    p = ksub.add_parser("show", help="show a koan")
    _common(p)
    p.add_argument("id")
    p.add_argument("--solution", action="store_true", help="also show the reference fix")
    p.set_defaults(func=cmd_koans_show)
    p = ksub.add_parser("check", help="validate koans: buggy fails as expected, solution passes")
    _common(p)
    p.add_argument("paths", nargs="*", help="koan files or folders (default: the whole corpus)")
    p.set_defaults(func=cmd_koans_check)
    p = ksub.add_parser("freeze", help="(re)write koans/frozen_eval.toml: only on purpose")
    _common(p)
    p.add_argument("ids", nargs="*", help="koan ids of the frozen eval set (default: the current set)")
    p.set_defaults(func=cmd_koans_freeze)

    p = ksub.add_parser("generate", help="derive new training koans by bug-introducing mutations")
    _common(p)
    p.add_argument("--count", type=int, default=40, help="at most this many koans")
    p.add_argument("--family", metavar="FAMILY", help="only from this family's training koans")
    p.set_defaults(func=cmd_koans_generate)

    p = ksub.add_parser("import", help="convert a local checkout of an exercise set into a koan folder")
    _common(p)
    p.add_argument("source", choices=("rustlings",), help="the exercise set")
    p.add_argument("path", help="the checkout (exercises/, solutions/, info.toml)")
    p.add_argument("--out", metavar="DIR", help="the koan folder to write (default: ./rustlings-koans)")
    p.set_defaults(func=cmd_koans_import)

    p = sub.add_parser("verify", help="check a candidate fix for a koan")
    _common(p)
    p.add_argument("file")
    p.add_argument("--koan", required=True)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("run", help="the day: the model fixes training koans")
    _common(p)
    _model_flags(p)
    p.add_argument("--family", metavar="FAMILY", help=_FAMILY_HELP)
    p.add_argument("--count", type=int)
    p.add_argument("--koan", action="append", help="a koan id (repeatable)")
    p.add_argument("--cycle", type=int, help="cycle number to record (default: the current one)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="evaluate on the frozen eval set")
    _common(p)
    _model_flags(p)
    p.add_argument("--cycle", type=int, help="the cycle to record the eval under (required but with --validation)")
    p.add_argument("--validation", action="store_true",
                   help="the validation slice (training koans never trained on) instead of the frozen set, with "
                        "validation_attempts per koan (default 1); a finished run of the same model is reused")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--samples", type=int, metavar="K", help="K independent first attempts per koan: pass@1, pass@K")
    p.add_argument("--family", metavar="FAMILY", help=_FAMILY_HELP)
    p.add_argument("--koan", action="append", metavar="ID",
                   help="only this frozen koan (repeatable): a quick check, never the gate's baseline")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="sleep: train a LoRA adapter on the verified fixes so far")
    _common(p)
    _model_flags(p)
    _setting_flags(p, "train")
    p.add_argument("--resume", action="store_true", help="continue the last stopped or crashed training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cycle", help="day -> sleep -> eval -> gate")
    _common(p)
    _model_flags(p)
    _setting_flags(p, "train")
    p.add_argument("--count", type=int, help="training koans in the day (default: all)")
    p.add_argument("--cycles", type=int, default=1)
    p.set_defaults(func=cmd_cycle)

    p = sub.add_parser("adapters", help="list, promote or roll back adapters")
    _common(p)
    asub = p.add_subparsers(dest="adapters_command")
    _common(asub.add_parser("list"))
    pp = asub.add_parser("promote")
    _common(pp)
    pp.add_argument("id")
    _common(asub.add_parser("rollback"))
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser("export", help="export an adapter for another runtime")
    _common(p)
    esub = p.add_subparsers(dest="export_target", required=True)
    pp = esub.add_parser("ollama", help="write an Ollama Modelfile (FROM base, ADAPTER gguf)")
    _common(pp)
    pp.add_argument("--cycle", type=int, required=True)
    pp.add_argument("--base", help="the Ollama model the adapter applies to")
    pp.add_argument("--name", help="name for `ollama create`")
    pp.add_argument("--out", help="folder for the Modelfile")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write the results page (Markdown + PNG plots)")
    _common(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default: state/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("status", help="cycles table and the latest run")
    _common(p)
    p.set_defaults(func=cmd_status)
    _models_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # What this prints quotes koan files, model tokens, rustc and test output, state files and what was typed:
    # all of it goes out through terminal_safe, so none of it can drive the terminal (the app writes to the real
    # streams itself).
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(streams[0]), SafeStream(streams[1])
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        parser.error("--repeats must be >= 1")
    if getattr(args, "samples", None) is not None and args.samples < 1:
        parser.error("--samples must be >= 1")
    if getattr(args, "count", None) is not None and args.count < 1:
        parser.error("--count must be >= 1")
    if getattr(args, "cycles", 1) < 1:
        parser.error("--cycles must be >= 1")
    try:
        if args.command is None:
            from .app.main import run_app
            return run_app(_settings(args))
        return args.func(args)
    except (CliError, ConfigError, KoanError) as e:
        for line in str(e).splitlines():
            print(f"sleepy: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sleepy: interrupted; finished koans are saved", file=sys.stderr)
        return 130
    except Exception as e:  # the last net: a known failure type prints one line
        from .engine import USER_ERRORS
        if isinstance(e, USER_ERRORS):  # StateBusy too
            print(f"sleepy: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
