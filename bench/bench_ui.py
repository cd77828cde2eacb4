"""UI responsiveness: key press to screen update, p50 and p99, idle against the agent and the trainer both running;
and what the app costs the work beside it.

The app is built with build_app over a tmp state dir and the real koans, and driven with Textual's Pilot
(`app.run_test(size=(100, 32))`). Phases, with the same key presses (tabs 1/2/3, moving in the koan queue):
1. the idle app (the baseline);
2. with a day run streaming tokens (the default embedded model through llama.cpp, or `--backend fake`: a
   scripted backend streaming 4 characters every 10 ms) and the app's own trainer (a child process,
   training/process_trainer.py) training a tiny random llama;
3. nobody pressing keys: the day run is replaced by one on a fixed few koans (seeded generation: the same
   tokens every time), timed from its first token to its end, while the trainer goes on;
4. after the app has closed, the same fixed work with no app (the engine's day run, and the trainer in its own
   process, as `sleepy day` and `sleepy train` run them): the baseline of phase 3.

What is timed, per press: from posting the key to the app (`App.post_message`, as `App.simulate_key` does) to
the first screen update that shows its effect, caught with public hooks only: `call_after_refresh` (runs after
the screen has been refreshed) checks `Widget.is_on_screen` (the new tab's pane was in the last update) or the
queue's cursor row; so Textual's 60 fps update throttle is counted. `await pilot.press(key); await pilot.pause()`
is timed as well, for a few presses, but it is not the latency: Pilot waits for the *process* to look idle,
which never happens while the agent runs in the same process, and it also waits for animations.

Also reported: how long the key waited in the app's queue before being handled (run_test's message_hook), the
event loop's lag (a 5 ms sleep's overshoot), and any error the trainer or the run reported (then nothing is
recorded and the exit status is 1).
usage: python bench/bench_ui.py [--quick] [--backend embedded|fake] [--presses N] [--pilot-presses N] [--fixed-koans N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, record, table

GOAL_MS = 50.0          # p99 under load
GOAL_MAX_MS = 150.0     # the slowest press under load
GOAL_TAB_IDLE_MS = 30.0  # p99 of a tab switch, idle
GOAL_THROUGHPUT = 0.9   # the work beside the idle app against the same work with no app
ROUND = ("2", "3", "1", "down", "down", "up", "up")   # tabs, then the koan queue (net zero: the cursor comes back)
TAB_OF = {"1": "run", "2": "train", "3": "plots"}


# ---- the load: a trainer on a tiny model, a backend streaming tokens ------------------------------------------

def cache_dir() -> Path:
    env = os.environ.get("SLEEPY_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sleepy-tui"


def tiny_model_dir() -> Path:
    """tests/fixtures_training.py's random 2-layer llama over SmolLM2's tokenizer, built once into the cache (reading the
    tokenizer out of the GGUF takes 10-30 s)."""
    out = cache_dir() / "bench" / "tiny-llama-smollm2-tok"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_training import build_tiny_llama, save_tokenizer
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        build_tiny_llama(tmp / "model", save_tokenizer(tmp / "tok"), init_std=0.02)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp / "model", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def app_trainer():
    """The trainer the app uses: torch in a child process (MLX in process where torch is absent)."""
    from sleepy_tui.app.main import app_trainer_factory
    from sleepy_tui.config import Settings
    if importlib.util.find_spec("torch") is not None:
        return app_trainer_factory(Settings(train_backend="torch"))
    return app_trainer_factory(Settings(train_backend="mlx"))


def cli_trainer():
    """The trainer `sleepy train` uses (in process)."""
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import default_trainer_factory
    return default_trainer_factory(Settings(train_backend="torch" if importlib.util.find_spec("torch") else "mlx"))


class TinyModelTrainer:
    """The real trainer, on the tiny model, for more steps than the measurement lasts (it is stopped after)."""

    def __init__(self, inner, model_dir: Path, *, batch_size: int, max_seq_len: int):
        self.inner, self.name = inner, inner.name
        self.model_dir, self.batch_size, self.max_seq_len = model_dir, batch_size, max_seq_len

    def train(self, dataset, config, out_dir, *, on_event, stop=None, resume=True):
        config = dataclasses.replace(config, base_model=str(self.model_dir), steps=100_000, warmup_steps=1,
                                     checkpoint_every=10**9, batch_size=self.batch_size,
                                     max_seq_len=self.max_seq_len)
        return self.inner.train(dataset, config, out_dir, on_event=on_event, stop=stop, resume=resume)


def scripted_replies(koans) -> list[str]:
    """The day run's replies in koan order: the solution; every third koan first gets its buggy program back (a
    failed attempt: diagnostics and a diff in the transcript), then the solution (max_attempts=2)."""
    out = []
    for i, k in enumerate(koans):
        if i % 3 == 2:
            out.append(f"Let me fix the borrow here.\n\n```rust\n{k.buggy.strip()}\n```\n")
        out.append(f"The fix: borrow instead of moving.\n\n```rust\n{k.solution.strip()}\n```\n")
    return out


# ---- measuring ------------------------------------------------------------------------------------------------

class Probe:
    """Counts the messages the app handles and tells when a screen update shows a key's effect."""

    def __init__(self):
        self.app = None
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.ended: list[str] = []          # jobs that ended, with how
        self.key_handled: dict[int, float] = {}

    def hook(self, message) -> None:        # run_test(message_hook=...): every message any pump handles
        try:                                # a message that bubbles (screen, then app) is counted once
            if getattr(message, "_bench_counted", False):
                return
            message._bench_counted = True
        except AttributeError:
            pass
        name = type(message).__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        if name == "Key":
            self.key_handled.setdefault(id(message), time.perf_counter())
        elif name == "TrainError":
            self.errors.append(f"trainer: {message.event.message}")
        elif name == "Notice" and message.event.level == "error":
            self.errors.append(f"notice: {message.event.message}")
        elif name == "JobEnded":
            self.ended.append(f"{message.group}: {message.state.name}")
            if message.error:
                self.errors.append(f"{message.group} job failed: {message.error}")

    def attach(self, app) -> None:
        self.app = app

    def shown(self, done) -> "asyncio.Future[float]":
        """A future set to the time of the first screen refresh after which `done()` holds. The check runs in
        `call_after_refresh` (public: after the screen has been refreshed); if it doesn't hold yet, it looks again
        after the next refresh, or in 1 ms when nothing is left to refresh (so it never spins the event loop)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def check() -> None:
            if fut.done():
                return
            if done():
                fut.set_result(time.perf_counter())
            else:
                loop.call_later(0.001, lambda: fut.done() or self.app.call_after_refresh(check))
        self.app.call_after_refresh(check)
        return fut


class GcPauses:
    """Every garbage collection in this process: (start, seconds, generation), to tell its pauses from the rest."""

    def __init__(self):
        self.pauses: list[tuple[float, float, int]] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((self._t0, time.perf_counter() - self._t0, info["generation"]))

    def within(self, t0: float, t1: float) -> float:
        return sum(d for s, d, _ in self.pauses if t0 <= s <= t1)

    def summary(self, t0: float, t1: float) -> str:
        inside = [(d, g) for s, d, g in self.pauses if t0 <= s <= t1]
        full = [d for d, g in inside if g == 2]
        return (f"{len(inside)} collections, {len(full)} full; longest {ms(max((d for d, _ in inside), default=0))} "
                f"ms, full ones up to {ms(max(full, default=0))} ms")


GC = GcPauses()


class LoopLag:
    """The event loop's lag: how late a 5 ms sleep wakes up (GIL and busy-loop starvation show here)."""

    def __init__(self):
        self.samples: list[float] = []
        self._task = None

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            self.samples.append(time.perf_counter() - t0 - 0.005)

    def start(self) -> None:
        self.samples = []
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[float]:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        return self.samples


def send_key(app, key: str):
    """A key press, as App.simulate_key posts it (with its character, as a terminal sends it)."""
    from textual import events
    event = events.Key(key, key if len(key) == 1 else None)
    app.post_message(event)
    return event


async def ensure_focus(pilot, probe: "Probe", table) -> None:
    """Focus the queue (switching tabs away hides it and moves the focus), untimed: wait for a refresh after it
    (the footer rebuilds its keys when the focus moves) and at least 0.1 s."""
    if pilot.app.focused is not table:
        table.focus()
        await asyncio.sleep(0.1)
        try:
            await asyncio.wait_for(probe.shown(lambda: True), 3)
        except asyncio.TimeoutError:
            pass


async def measure(pilot, probe: Probe, n: int, n_pilot: int, rng: random.Random) -> dict:
    """n presses timed key->screen update, then n_pilot timed as pilot.press + pilot.pause."""
    from textual.widgets import DataTable, TabbedContent
    app = pilot.app
    screen = app.main_screen
    tabs = screen.query_one(TabbedContent)
    table = screen.query_one("#queue-table", DataTable)
    if tabs.active != "run":
        await pilot.press("1")
    await ensure_focus(pilot, probe, table)
    lag = LoopLag()
    latencies, queued, timeouts, slow = [], [], 0, []
    by_kind: dict[str, list[float]] = {"tab": [], "queue": []}
    for i in range(-len(ROUND), n):  # one round first, untimed: the first showing of a tab builds its widgets
        key = ROUND[i % len(ROUND)]
        if i == 0:
            lag.start()
            before = dict(probe.counts)
            t_start = time.perf_counter()
        if key in TAB_OF:
            tab = TAB_OF[key]
            pane = screen.query_one(f"#{tab}")
            if tabs.active == tab:
                continue

            def done(tab=tab, pane=pane):
                return tabs.active == tab and pane.is_on_screen
        else:
            await ensure_focus(pilot, probe, table)
            target = table.cursor_row + (1 if key == "down" else -1)

            def done(target=target):
                return table.cursor_row == target
        probe.key_handled.clear()
        t0 = time.perf_counter()
        event = send_key(app, key)
        try:
            t1 = await asyncio.wait_for(probe.shown(done), 10)
        except asyncio.TimeoutError:
            timeouts += i >= 0
            continue
        if i >= 0:
            slow.append((t1 - t0, key, GC.within(t0, t1)))
            latencies.append(t1 - t0)
            by_kind["tab" if key in TAB_OF else "queue"].append(t1 - t0)
            if id(event) in probe.key_handled:
                queued.append(probe.key_handled[id(event)] - t0)
        await asyncio.sleep(rng.uniform(0.05, 0.15))  # typing pace; the next press lands at another moment
    pilot_times = []
    for i in range(n_pilot):
        key = ROUND[i % len(ROUND)]
        if key not in TAB_OF:
            await ensure_focus(pilot, probe, table)
        t0 = time.perf_counter()
        await pilot.press(key)
        await pilot.pause()
        pilot_times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    lags = await lag.stop()
    probe.key_handled.clear()
    counts = {k: probe.counts.get(k, 0) - before.get(k, 0) for k in ("TokenStreamed", "TrainStep")}
    return {"lat": latencies, "by_kind": by_kind, "queued": queued, "timeouts": timeouts, "pilot": pilot_times,
            "lag": lags, "wall": wall, "slow": sorted(slow, reverse=True)[:5],
            "gc": GC.summary(t_start, t_start + wall), **counts}


async def fixed_work_in_app(app, probe: Probe, koans: list, timeout: float) -> dict:
    """The same fixed work as `without_app`, with nobody pressing keys: the day run so far is stopped, then a day
    run on `koans` (generation is seeded: the same tokens both times) while the trainer goes on. Timed from its
    first token to its end (the model's load left out), with the training steps made meanwhile."""
    app.stop_run()
    await wait_for(lambda: not app.run_busy, 120, probe)
    n = lambda k: probe.counts.get(k, 0)           # noqa: E731
    runs, tokens = n("RunFinished"), n("TokenStreamed")
    app.start_run(koans, "day", app.main_screen)
    if not await wait_for(lambda: n("TokenStreamed") > tokens, timeout, probe):
        probe.errors.append("the fixed day run streamed no token")
    before, t0 = dict(probe.counts), time.perf_counter()
    if not await wait_for(lambda: n("RunFinished") > runs, timeout, probe):
        probe.errors.append(f"the fixed day run did not end within {timeout:.0f} s")
    wall = time.perf_counter() - t0
    return {"wall": wall, **{k: probe.counts.get(k, 0) - before.get(k, 0) for k in ("TokenStreamed", "TrainStep")}}


def rate(d: dict, kind: str) -> float:
    return d[kind] / d["wall"] if d.get("wall") else float("nan")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(xs)


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


async def wait_for(cond, timeout: float, probe: Probe) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if cond():
            return True
        if any("failed" in e for e in probe.errors) and not cond():
            return False
        await asyncio.sleep(0.05)
    return cond()


class Captured:
    """A backend factory that keeps the backend it made (to say which model ran)."""

    def __init__(self, inner):
        self.inner, self.backend = inner, None

    def __call__(self, settings, notice=None):
        self.backend = self.inner(settings, notice)
        return self.backend


def setup(args, state: Path):
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import default_backend_factory
    from sleepy_tui.koans import load_corpus

    train = load_corpus(ROOT / "koans").select(split="train")
    if args.backend == "fake":
        from sleepy_tui.backends.fake import ScriptedBackend
        backend = ScriptedBackend(scripted_replies(train), chunk_size=4, delay_s=0.01, cycle=True)
        settings = Settings(backend="fake", koans_dir=str(ROOT / "koans"), state_dir=str(state), max_attempts=2)
        factory = Captured(lambda _s, _notice=None: backend)
    else:
        settings = Settings(backend="embedded", koans_dir=str(ROOT / "koans"), state_dir=str(state))
        factory = Captured(default_backend_factory)
    return train, settings, factory


def add_fixes(engine, train) -> None:
    """Verified fixes, so that the trainer has a dataset without waiting for a day run."""
    for k in train[:16]:
        engine.store.add_correction({"correction_id": f"{k.id}-bench", "koan_id": k.id, "code": k.solution,
                                     "passed": True, "prompt": None, "time": 0})
    engine.store.flush()


def tiny(trainer, args) -> TinyModelTrainer:
    return TinyModelTrainer(trainer, tiny_model_dir(), batch_size=2 if args.quick else 4,
                            max_seq_len=512 if args.quick else 1024)


async def run(args, state: Path) -> tuple[dict, dict, dict, dict]:
    from sleepy_tui.app.main import build_app

    train, settings, factory = setup(args, state)
    inner = app_trainer()
    trainer = tiny(inner, args)
    info = {"trainer": f"{inner.name} ({type(inner).__name__})", "backend": args.backend, "koans": len(train)}
    app = build_app(settings, trainer_factory=lambda _s: trainer, backend_factory=factory)
    add_fixes(app.engine, train)
    probe = Probe()
    rng = random.Random(0)
    try:
        async with app.run_test(size=(100, 32), message_hook=probe.hook) as pilot:
            probe.attach(app)
            await app.workers.wait_for_complete()
            await pilot.pause()
            idle = await measure(pilot, probe, args.presses, args.pilot_presses, rng)

            await pilot.press("t")  # the trainer, then the agent (d also brings the Run tab back)
            await pilot.press("d")
            t0 = time.perf_counter()
            streaming = await wait_for(lambda: probe.counts.get("TokenStreamed", 0) > 0, args.start_timeout, probe)
            training = await wait_for(lambda: probe.counts.get("TrainStep", 0) > 0, args.start_timeout, probe)
            info["start_s"] = time.perf_counter() - t0
            if not streaming:
                probe.errors.append(f"the agent streamed no token within {args.start_timeout:.0f} s")
            if not training:
                probe.errors.append(f"the trainer made no step within {args.start_timeout:.0f} s")
            info["trainer_nice"] = getattr(inner, "child_nice", None)
            ended_before = len(probe.ended)
            loaded = await measure(pilot, probe, args.presses, args.pilot_presses, rng)
            info["ended_while_measuring"] = probe.ended[ended_before:]
            # koans the day run above did not reach (its episodes would change their prompts)
            app_idle = await fixed_work_in_app(app, probe, train[-args.fixed_koans:], args.start_timeout * 4)
            app.stop_jobs()
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(app.workers.wait_for_complete(), 120)
            except asyncio.TimeoutError:
                probe.errors.append("the run or the trainer did not stop within 120 s")
            info["stop_s"] = time.perf_counter() - t0
            await pilot.pause()
    finally:
        app.engine.close()
    info["quiet_gc"] = list(app.collector.durations)
    info["quiet_gc_freed"] = list(app.collector.freed)
    info["model"] = factory.backend.describe() if factory.backend is not None else "?"
    info["errors"] = probe.errors
    return idle, loaded, app_idle, info


def without_app(args, state: Path, start_timeout: float) -> dict:
    """The same fixed work with no app: the trainer in a process of its own at the nice value it starts with (as
    `sleepy train` in another terminal), and once it steps, the engine's day run on the same koans (as
    `sleepy day`), timed from its first token to its end, with the training steps made meanwhile."""
    import threading

    from sleepy_tui.engine import Engine

    train, settings, factory = setup(args, state)
    inner = app_trainer()
    engine = Engine(settings, backend_factory=factory, trainer_factory=lambda _s: tiny(inner, args))
    add_fixes(engine, train)
    counts = {"TokenStreamed": 0, "TrainStep": 0}
    errors: list[str] = []
    stop = threading.Event()
    first_token: list[tuple[float, dict]] = []

    def sink(e) -> None:
        if e.kind in counts:
            counts[e.kind] += 1
            if e.kind == "TokenStreamed" and not first_token:
                first_token.append((time.perf_counter(), dict(counts)))

    def sleep() -> None:
        try:
            engine.train(engine.build_dataset(), cycle=1, on_event=sink, stop=stop, fresh=True)
        except Exception as e:      # noqa: BLE001 - reported, the measurement is then void
            errors.append(f"train: {e}")

    trainer = threading.Thread(target=sleep)
    trainer.start()
    t_end = time.monotonic() + start_timeout
    while not counts["TrainStep"] and time.monotonic() < t_end and not errors:
        time.sleep(0.05)
    try:
        engine.run_agent(train[-args.fixed_koans:], kind="day", on_event=sink)
    except Exception as e:          # noqa: BLE001
        errors.append(f"day: {e}")
    t1 = time.perf_counter()
    stop.set()
    trainer.join(300)
    engine.close()
    if not first_token:
        return {"wall": float("nan"), "TokenStreamed": 0, "TrainStep": 0, "errors": errors + ["no token"]}
    t0, before = first_token[0]
    return {"wall": t1 - t0, **{k: counts[k] - before[k] for k in counts}, "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backend", choices=("embedded", "fake"), default=None,
                    help="what streams the tokens (default: embedded; --quick: fake)")
    ap.add_argument("--presses", type=int, default=None, help="key presses timed key->screen update per phase")
    ap.add_argument("--pilot-presses", type=int, default=None, help="key presses timed as pilot.press+pause")
    ap.add_argument("--fixed-koans", type=int, default=None,
                    help="koans of the fixed day run timed with the app idle and with no app")
    ap.add_argument("--start-timeout", type=float, default=300.0,
                    help="seconds to wait for the first token and the first training step")
    args = ap.parse_args()
    args.backend = args.backend or ("fake" if args.quick else "embedded")
    args.presses = args.presses or (14 if args.quick else 210)
    args.pilot_presses = args.pilot_presses if args.pilot_presses is not None else (1 if args.quick else 14)
    args.fixed_koans = args.fixed_koans or (3 if args.quick else 2)
    import gc
    gc.callbacks.append(GC)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as state:
        idle, loaded, app_idle, info = asyncio.run(run(args, Path(state)))
        alone = without_app(args, Path(state) / "no-app", args.start_timeout)
    load1 = os.getloadavg()
    info["errors"] += [f"no app: {e}" for e in alone["errors"]]

    def row(name, d):
        return [name, len(d["lat"]), ms(pct(d["lat"], 50)), ms(pct(d["lat"], 99)), ms(max(d["lat"], default=0)),
                ms(pct(d["queued"], 50)), ms(pct(d["queued"], 99)), ms(pct(d["lag"], 99)),
                ms(statistics.median(d["pilot"])) if d["pilot"] else "-"]
    p50_i, p99_i = pct(idle["lat"], 50), pct(idle["lat"], 99)
    p50_l, p99_l, max_l = pct(loaded["lat"], 50), pct(loaded["lat"], 99), max(loaded["lat"], default=float("nan"))
    tab_idle = pct(idle["by_kind"]["tab"], 99)
    rows = [row("idle (baseline)", idle), row("agent + trainer running", loaded),
            ["loaded / idle", "", f"{p50_l / p50_i:.2f}x", f"{p99_l / p99_i:.2f}x", "", "", "", "", ""]]
    headers = ["phase", "presses", "p50 ms", "p99 ms", "max ms", "key queued p50 ms", "key queued p99 ms",
               "loop lag p99 ms", "pilot.press+pause median ms"]
    backend = (f"embedded {info['model']}" if args.backend == "embedded"
               else "fake: ScriptedBackend, 4 chars every 10 ms")
    nice = f", nice {info['trainer_nice']}" if info.get("trainer_nice") is not None else ""

    def verdict(value, goal, what):
        return f"{what} {value:.1f} ms, goal <= {goal:.0f}: " + ("met" if value <= goal else "missed")
    same_tokens = app_idle["TokenStreamed"] == alone["TokenStreamed"]
    day_ratio = alone["wall"] / app_idle["wall"] if app_idle["wall"] else float("nan")
    step_ratio = rate(app_idle, "TrainStep") / rate(alone, "TrainStep") if rate(alone, "TrainStep") else float("nan")
    through = [["the fixed day run: seconds from its first token to its end", "-", f"{app_idle['wall']:.1f}",
                f"{alone['wall']:.1f}", f"{day_ratio:.2f}x", "met" if day_ratio >= GOAL_THROUGHPUT else "missed"],
               ["  its tokens (the same when generation is the same)", f"{loaded['TokenStreamed']}",
                f"{app_idle['TokenStreamed']}", f"{alone['TokenStreamed']}", "", ""],
               ["training steps /s meanwhile", f"{rate(loaded, 'TrainStep'):.2f}", f"{rate(app_idle, 'TrainStep'):.2f}",
                f"{rate(alone, 'TrainStep'):.2f}", f"{step_ratio:.2f}x",
                "met" if step_ratio >= GOAL_THROUGHPUT else "missed"]]
    body = (f"Key press to the first screen update showing its effect (tabs 1/2/3, moving in the koan queue), "
            f"Textual Pilot, `run_test(size=(100, 32))`, real koans ({info['koans']} training). Load: a day run "
            f"({backend}) and the app's trainer, {info['trainer']}{nice}, on a tiny random llama (both going "
            f"{info.get('start_s', 0):.0f} s after d and t; stopped in {info.get('stop_s', 0):.0f} s after). "
            f"During the loaded measurement ({loaded['wall']:.1f} s): {loaded['TokenStreamed']} TokenStreamed "
            f"messages, {loaded['TrainStep']} training steps (idle phase: {idle['TokenStreamed']} and "
            f"{idle['TrainStep']}). Timeouts (no update within 10 s): idle {idle['timeouts']}, loaded "
            f"{loaded['timeouts']}.\n\n"
            + table(headers, rows)
            + "\n\nBy kind of key press (ms):\n\n"
            + table(["key presses", "idle p50", "idle p99", "loaded p50", "loaded p99", "loaded p99 / idle p99"],
                    [[f"{name} ({len(loaded['by_kind'][kind])})", ms(pct(idle["by_kind"][kind], 50)),
                      ms(pct(idle["by_kind"][kind], 99)), ms(pct(loaded["by_kind"][kind], 50)),
                      ms(pct(loaded["by_kind"][kind], 99)),
                      f"{pct(loaded['by_kind'][kind], 99) / pct(idle['by_kind'][kind], 99):.2f}x"]
                     for kind, name in (("tab", "switch tab: 1/2/3"), ("queue", "koan queue: up/down"))])
            + "\n\nThe slowest presses (ms, and the garbage collections inside them): "
            + "; ".join(f"{name}: " + ", ".join(f"{k} {ms(t)} (gc {ms(g)})" for t, k, g in d["slow"])
                        for name, d in (("idle", idle), ("loaded", loaded)))
            + f". Garbage collection while measuring: idle {idle['gc']}; loaded {loaded['gc']}. Full collections "
              f"the app ran itself between bursts of typing (priority.QuietCollector), the whole run: "
              f"{len(info['quiet_gc'])} (ms, objects freed: "
              f"{', '.join(f'{ms(d)}/{n}' for d, n in zip(info['quiet_gc'], info['quiet_gc_freed']))})."
            + f"\n\nThe work beside the app. The same fixed work twice: a day run on {args.fixed_koans} training "
              f"koan(s) (seeded generation) while the trainer trains, once in the app with nobody pressing keys, "
              f"once with no app (the engine's day run and the trainer's own process, as `sleepy day` and "
              f"`sleepy train` run them); the day run timed from its first token to its end (the model load left "
              f"out). The first column is the loaded measurement above ({loaded['wall']:.0f} s of key presses):"
              f"\n\n"
            + table(["work", "app, keys pressed", "app idle", "no app", "app idle / no app",
                     f"goal >= {GOAL_THROUGHPUT}x"], through)
            + ("" if same_tokens else "\n\nThe two fixed runs streamed different numbers of tokens: the "
               "comparison is not like for like.")
            + f"\n\nLoad average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, at end "
              f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}, on {os.cpu_count()} cores.\n"
              f"\"pilot.press+pause\" is Pilot's own press and pause: it waits for the whole process to look idle "
              f"(up to 1 s per wait), so it is not the latency under load.\n"
              f"Goals: {verdict(p99_l * 1000, GOAL_MS, 'p99 under load')}; "
              f"{verdict(max_l * 1000, GOAL_MAX_MS, 'max under load')}; "
              f"{verdict(tab_idle * 1000, GOAL_TAB_IDLE_MS, 'idle tab switch p99')}.")
    if info["errors"] or info.get("ended_while_measuring"):
        body += "\n\nPROBLEMS (the load was not what it should be):\n" + "\n".join(
            f"- {e}" for e in info["errors"] + [f"job ended while measuring: {e}" for e in
                                               info.get("ended_while_measuring", [])])
    bad = bool(info["errors"]) or not loaded["lat"] or loaded["TokenStreamed"] == 0 or loaded["TrainStep"] == 0
    record("UI responsiveness (key press to screen update)",
           " ".join(["python", "bench/bench_ui.py"] + sys.argv[1:]), body, args.quick or bad)
    if bad:
        print("not recorded: the agent or the trainer did not run through the measurement (see PROBLEMS)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
