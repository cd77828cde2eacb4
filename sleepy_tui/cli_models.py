"""`sleepy models list | pull NAME | rm NAME | setup`: the CLI side of sleepy_tui/models.py (a thin driver).

Progress goes to stderr: one line redrawn in place on a terminal, a line every few seconds otherwise (logs, CI).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from . import models


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


def _eta(s: float | None) -> str:
    if s is None:
        return "eta --"
    s = int(s)
    return f"eta {s // 60}m{s % 60:02d}s" if s >= 60 else f"eta {s}s"


class PullPrinter:
    """models.PullProgress -> a progress bar with bytes, rate and ETA on `stream`."""

    WIDTH = 24

    def __init__(self, name: str, stream=None, every_s: float = 5.0):
        self.name = name
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self.last_line = 0.0
        self.open = False           # a redrawn line is on screen

    def __call__(self, p: models.PullProgress) -> None:
        if p.message:
            self._end_line()
            print(f"{self.name}: {p.message}", file=self.stream, flush=True)
        if p.stage == "done":
            return
        frac = min(1.0, p.done / p.total) if p.total else 0.0
        bar = "#" * int(frac * self.WIDTH) + "." * (self.WIDTH - int(frac * self.WIDTH))
        what = {"check": "checking", "verify": "verifying"}.get(p.stage, f"part {p.part}/{p.parts}")
        rate = f"{p.rate / 1e6:5.1f} MB/s" if p.rate else "     MB/s"
        line = (f"{self.name} {what:>11} [{bar}] {frac:4.0%} {_mb(p.done):>9} / {_mb(p.total)}  {rate}  "
                f"{_eta(p.eta_s)}")
        if self.tty:
            self.stream.write("\r" + line.ljust(100)[:100])
            self.stream.flush()
            self.open = True
        elif time.monotonic() - self.last_line >= self.every_s:
            self.last_line = time.monotonic()
            print(line, file=self.stream, flush=True)

    def _end_line(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.open = False

    def close(self) -> None:
        self._end_line()


def _spec(name: str) -> models.ModelSpec:
    return models.get(name)


def cmd_list(args) -> int:
    t = models.table()
    default = models.default_name()
    print(f"{'':1} {'NAME':20} {'SIZE':>9}  {'STATUS':34} DESCRIPTION")
    for spec in t.models:
        st = models.status(spec, check=not args.no_verify)
        if st.ready:
            state = {"cache": "ready", "ollama": "ready (Ollama's copy)", "package": "ready (installed package)"}[st.where]
            state += "" if spec.pinned and not args.no_verify else (" (not checked)" if spec.pinned else "")
        else:
            state = st.problem
        size = _mb(st.size or spec.size) if (st.size or spec.size) else "-"
        mark = "*" if spec.name == default else " "
        print(f"{mark} {spec.name:20} {size:>9}  {state[:34]:34} {spec.description}")
        if not st.ready and st.path is not None:
            print(f"  {'':20} {st.path}: {st.problem}; `{models.pull_command(spec)}` pulls it again")
    print(f"(* the default embedded model; files in {models.locations.models_dir()})")
    return 0


def _pull_one(spec: models.ModelSpec) -> models.ModelStatus:
    printer = PullPrinter(spec.name)
    stop = threading.Event()
    t0 = time.monotonic()
    try:
        st = models.pull(spec, on_progress=printer, stop=stop)
    except KeyboardInterrupt:
        stop.set()
        printer.close()
        print(f"{spec.name}: interrupted; `{models.pull_command(spec)}` resumes", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        printer.close()
    print(f"{spec.name}: ready in {time.monotonic() - t0:.0f}s: {st.path}")
    return st


def cmd_pull(args) -> int:
    names = args.names or [models.default_name()]
    for name in names:
        _pull_one(_spec(name))
    return 0


def cmd_rm(args) -> int:
    for name in args.names:
        spec = _spec(name)
        removed = models.remove(spec)
        blob = models.ollama_blob(spec)
        if removed:
            print(f"{spec.name}: removed " + ", ".join(str(p) for p in removed))
        else:
            print(f"{spec.name}: nothing to remove")
        if blob is not None:
            print(f"{spec.name}: Ollama's copy stays ({blob}); `ollama rm {spec.ollama}` removes it")
    return 0


def cmd_setup(args, ollama_host: str) -> int:
    """`make run`'s step: the default model ready, unless a running Ollama serves it already."""
    spec = _spec(models.default_name())
    from .backends.ollama_backend import ollama_available
    ok, why = ollama_available(ollama_host, spec.ollama, timeout=1.5)
    if ok:
        print(f"{why}: nothing to pull (`{models.pull_command(spec)}` gets the embedded copy)")
        return 0
    st = models.status(spec)
    if st.ready:
        print(f"{spec.name}: ready ({st.path})")
        return 0
    _pull_one(spec)
    return 0


def add_parser(sub, common):
    """The `models` sub-command on the top-level `sub`parsers (returned, for the caller's set_defaults);
    `common` adds the shared flags to a parser."""
    p = sub.add_parser("models", help="the embedded models: list, pull, rm, setup")
    msub = p.add_subparsers(dest="models_command", required=True)
    pp = msub.add_parser("list", help="the table's models, whether present and verified")
    pp.add_argument("--no-verify", action="store_true", help="don't hash files not verified before")
    pp.set_defaults(models_func=cmd_list)
    pp = msub.add_parser("pull", help="download, assemble and verify a model (resumes an interrupted pull)")
    pp.add_argument("names", nargs="*", metavar="NAME", help="table model(s) (default: the default model)")
    pp.set_defaults(models_func=cmd_pull)
    pp = msub.add_parser("rm", help="delete a pulled model")
    pp.add_argument("names", nargs="+", metavar="NAME")
    pp.set_defaults(models_func=cmd_rm)
    pp = msub.add_parser("setup", help="make the default model ready unless Ollama serves it (make run)")
    common(pp)
    pp.add_argument("--ollama-host", dest="ollama_host", metavar="URL", default=argparse.SUPPRESS,
                    help="where Ollama answers (default: OLLAMA_HOST, else http://127.0.0.1:11434)")
    pp.set_defaults(models_func=None)
    return p


def run(args, settings_of) -> int:
    """Dispatch a parsed `models` command; `settings_of(args)` gives the Settings (for setup's Ollama host)."""
    if args.models_command == "setup":
        return cmd_setup(args, settings_of(args).ollama_host)
    return args.models_func(args)
