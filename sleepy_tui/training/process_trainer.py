"""The torch trainer in a process of its own (the app's trainer): an out-of-memory kill or a crash of the
trainer can't take the app down, and the app's UI thread never shares an interpreter with torch.

The child is `python -m sleepy_tui.training.torch_trainer`, which prints its events as JSON lines; they come
back here as the same event objects. Stop is SIGTERM: the trainer finishes its step, writes a checkpoint and
ends, so `resume` continues exactly as in process. The child starts from the calling thread, so it inherits that
thread's nice value (priority.py: the app's workers lower theirs); it is told to end if that thread goes away.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .. import events as ev
from .base import TrainConfig, TrainResult
from .loop import LOSS_FILE

MODULE = "sleepy_tui.training.torch_trainer"    # imported by name in the child, never here (no torch import)
PARENT_ENV = "SLEEPY_TRAINER_PARENT"             # the parent's pid, for the child's --die-with-parent
STOP_GRACE_S = 600           # a step of a large model on a CPU can take minutes; then it is killed


class TrainerCrashed(RuntimeError):
    """The trainer process ended without finishing or stopping (killed, out of memory, an error)."""


def config_flags(config: TrainConfig) -> list[str]:
    """TrainConfig as the trainer's command-line flags (its CLI makes one flag a field)."""
    out: list[str] = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        out += [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]
    return out


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


class ProcessTrainer:
    name = "torch"

    def __init__(self, *, cache_dir: Path | None = None, threads: int = 0, python: str = sys.executable):
        self.cache_dir, self.threads, self.python = cache_dir, threads, python
        self.pid: int | None = None          # the last child's, for a look from outside (tests, `ps`)
        self.child_nice: int | None = None   # its nice value when it started

    def train(self, dataset: Path, config: TrainConfig, out_dir: Path, *, on_event: ev.EventSink,
              stop: threading.Event | None = None, resume: bool = True) -> TrainResult:
        stop = stop or threading.Event()
        argv = [self.python, "-m", MODULE, str(dataset), str(out_dir), "--die-with-parent", *config_flags(config)]
        if not resume:
            argv.append("--no-resume")
        if self.threads:
            argv += ["--threads", str(self.threads)]
        if self.cache_dir:
            argv += ["--cache-dir", str(self.cache_dir)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                    encoding="utf-8", errors="replace", env=env)
            self.pid = proc.pid
            try:
                self.child_nice = os.getpriority(os.PRIO_PROCESS, proc.pid)
            except OSError:
                self.child_nice = None
            ended = threading.Event()
            watcher = threading.Thread(target=self._stop_on_request, args=(proc, stop, ended), daemon=True,
                                       name="trainer-stop")
            watcher.start()
            done = error = None
            try:
                for line in proc.stdout:
                    try:
                        event = ev.from_dict(json.loads(line))
                    except ValueError:                 # not an event: a library's print; stderr has the rest
                        continue
                    if isinstance(event, ev.TrainDone):
                        done = event
                    elif isinstance(event, ev.TrainError):
                        error = event
                    on_event(event)
                rc = proc.wait()
            except BaseException:                      # our side failed (a sink raised, a cancel): end the child
                self._end(proc)
                raise
            finally:
                ended.set()
                watcher.join(timeout=5)
            if done is not None and rc in (0, 3):
                return TrainResult(adapter_dir=Path(done.adapter_dir), steps=done.steps,
                                   losses=_losses(Path(out_dir)), stopped=done.stopped)
            if error is not None:
                raise TrainerCrashed(error.message)
            err.seek(0)
            tail = [line.strip() for line in err.read().splitlines() if line.strip()][-1:]
            how = f"was killed ({_signal_name(rc)}{': out of memory?' if rc == -9 else ''})" if rc < 0 \
                else f"exited with status {rc}"
            message = f"the trainer process {how}" + (f": {tail[0][:300]}" if tail else "") + \
                "; `sleepy train --resume` continues from the last checkpoint"
            on_event(ev.TrainError(message))
            raise TrainerCrashed(message)

    @staticmethod
    def _stop_on_request(proc: subprocess.Popen, stop: threading.Event, ended: threading.Event) -> None:
        while not ended.is_set():
            if stop.wait(0.2):
                ProcessTrainer._end(proc)
                return

    @staticmethod
    def _end(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)           # the trainer checkpoints at the end of this step
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _losses(out_dir: Path) -> list[float]:
    """Every step's loss, from the run's loss log (a resumed run's earlier steps included, as in process)."""
    try:
        rows = [json.loads(line) for line in (out_dir / LOSS_FILE).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    return [float(r["loss"]) for r in rows if isinstance(r, dict) and "loss" in r]
