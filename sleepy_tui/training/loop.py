"""The training loop every trainer shares: steps, stop requests, checkpoints, the loss log, events, stats.

A trainer brings a `Run` (its model, optimizer and data order in memory) that can take one optimizer step and
save itself; `train_loop` does the rest, the same way for torch and mlx:

    loss.jsonl        one {"step", "loss", "lr", "tokens_per_s"[, "changed_loss", "changed_tokens"]} a line;
                      rewritten from the checkpoint's log on resume, so it never holds steps the weights don't
    checkpoints/      every `checkpoint_every` steps, at the last step (a later resume then finds the run
                      finished) and on a stop request (see checkpoint.py)
    adapter/          the final adapter
    train_stats.json  tokens, seconds, tokens/s, peak RSS of this call (plus what the trainer adds)

A stop request is honoured between steps (and, where the trainer supports it, between micro-batches: its
`train_step` raises StepAborted with the step undone); the run then saves a checkpoint and returns with
`stopped`, and resuming ends with the same weights as an unbroken run.

Under data parallelism every process runs the loop; `ranks` says which one writes and lets them agree on a stop.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
from pathlib import Path
from typing import Callable, Protocol

from .. import events as ev
from ..atomic import write_folder, write_json
from . import checkpoint
from .base import TrainConfig, TrainingUnavailable, TrainResult

STATS_FILE = "train_stats.json"
LOSS_FILE = "loss.jsonl"
_SUMMED = ("useful_tokens", "processed_tokens", "reply_tokens")


class StepAborted(Exception):
    """A stop request arrived inside a step; the step was undone."""


class Run(Protocol):
    step: int                 # optimizer updates done
    log: list[dict]           # one record a step: step, loss, lr, tokens_per_s, seconds (+ token counts)
    required: tuple[str, ...]     # the files of a complete checkpoint folder

    def train_step(self, stop: threading.Event | None) -> dict: ...

    def snapshot(self): ...                        # every process calls it (gathers what ranks hold)

    def write_checkpoint(self, folder: Path, snapshot) -> None: ...

    def write_adapter(self, folder: Path) -> None: ...


class Single:
    """One process: it writes, and its own stop flag is the decision."""
    main = True

    def barrier(self) -> None:
        pass

    def any(self, flag: bool) -> bool:
        return flag


def reported(on_event: ev.EventSink, problem: Callable[[], str | None], body: Callable[[], TrainResult]) -> TrainResult:
    """`body()` if `problem()` finds nothing wrong; any failure goes out as one TrainError event (the message
    alone for TrainingUnavailable, else with its type) and is raised again."""
    try:
        why = problem()
        if why:
            raise TrainingUnavailable(why)
        return body()
    except Exception as e:  # noqa: BLE001 - reported, then raised again
        on_event(ev.TrainError(str(e) if isinstance(e, TrainingUnavailable) else f"{type(e).__name__}: {e}"))
        raise


def eta_seconds(seconds: list[float], remaining: int) -> float:
    """Remaining time from measured step times: the mean of the last 10, leaving out this call's first step
    (kernel warm-up and caches make it slow) once there are others."""
    steady = seconds[1:] if len(seconds) > 1 else seconds
    recent = steady[-10:]
    return sum(recent) / len(recent) * remaining if recent else 0.0


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def loss_record(rec: dict) -> dict:
    """The loss.jsonl line of a step; `changed_loss` (the tokens of the fix, not the program it copies) and
    `changed_tokens` where the trainer measures them."""
    out = {k: rec[k] for k in ("step", "loss", "lr", "tokens_per_s")}
    out.update((k, rec[k]) for k in ("changed_loss", "changed_tokens") if k in rec)
    return out


def train_loop(run: Run, config: TrainConfig, out_dir: Path, *, emit: ev.EventSink, stop: threading.Event | None,
               resumed_from: Path | None, examples: int, load_s: float = 0.0, load_detail: str = "",
               describe: str = "", ranks=None, extra_stats: Callable[[], dict] | None = None) -> TrainResult:
    """Train `run` up to config.steps (see the module docstring); `resumed_from` is the checkpoint it was
    restored from, if any; `describe`, a line on where and how it trains, goes out right after TrainStarted."""
    ranks = ranks or Single()
    out_dir = Path(out_dir)
    if ranks.main:                 # what the checkpoint knows, no more
        with open(out_dir / LOSS_FILE, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(loss_record(r)) + "\n" for r in run.log)
    stats = {"steps": 0, "useful_tokens": 0, "processed_tokens": 0, "reply_tokens": 0, "train_s": 0.0,
             "load_s": round(load_s, 3)}

    def save_checkpoint() -> Path:
        snap = run.snapshot()
        final = checkpoint.folder(out_dir, run.step)
        if ranks.main:
            checkpoint.save(out_dir, run.step, lambda tmp: run.write_checkpoint(tmp, snap), run.required)
            emit(ev.CheckpointSaved(step=run.step, path=str(final)))
        ranks.barrier()
        return final

    def finish(adapter_dir: Path, stopped: bool) -> TrainResult:
        if ranks.main:
            processed, train_s = stats["processed_tokens"], stats["train_s"]
            write_json(out_dir / STATS_FILE, {
                **stats, "padding_share": 1 - stats["useful_tokens"] / processed if processed else None,
                "tokens_per_s": stats["useful_tokens"] / train_s if train_s else None,
                "peak_rss_mib": peak_rss_mib(), "stopped": stopped, **(extra_stats() if extra_stats else {})})
        losses = [r["loss"] for r in run.log]
        emit(ev.TrainDone(adapter_dir=str(adapter_dir), steps=run.step, stopped=stopped,
                          initial_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None))
        return TrainResult(adapter_dir=adapter_dir, steps=run.step, losses=losses, stopped=stopped)

    emit(ev.TrainStarted(run_dir=str(out_dir), total_steps=config.steps, examples=examples,
                         resumed_from=run.step, load_s=load_s, load_detail=load_detail))
    if describe:
        emit(ev.Notice("info", describe))
    last_ckpt = resumed_from            # a checkpoint of the current step, if there is one
    seconds: list[float] = []
    while run.step < config.steps:
        if ranks.any(stop is not None and stop.is_set()):
            return finish(last_ckpt or save_checkpoint(), stopped=True)
        try:
            rec = run.train_step(stop)
        except StepAborted:
            return finish(last_ckpt or save_checkpoint(), stopped=True)
        last_ckpt = None
        seconds.append(rec["seconds"])
        for k in _SUMMED:
            stats[k] += int(rec.get(k, 0))
        stats["train_s"] += rec["seconds"]
        stats["steps"] += 1
        if ranks.main:
            with open(out_dir / LOSS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(loss_record(rec)) + "\n")
        emit(ev.TrainStep(step=run.step, total_steps=config.steps, loss=rec["loss"], learning_rate=rec["lr"],
                          tokens_per_s=rec["tokens_per_s"], eta_s=eta_seconds(seconds, config.steps - run.step),
                          seconds=rec["seconds"]))
        periodic = config.checkpoint_every > 0 and run.step % config.checkpoint_every == 0
        if periodic or run.step == config.steps:
            last_ckpt = save_checkpoint()
    final = out_dir / checkpoint.ADAPTER
    if ranks.main:
        write_folder(final, run.write_adapter)
    ranks.barrier()
    return finish(final, stopped=False)
