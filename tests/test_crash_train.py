"""kill -9 `sleepy train` at random moments: the state always loads, nothing is half-written, and
`sleepy train --resume` continues from the last complete checkpoint and ends with the same adapter as an
unbroken run.

The base is a tiny random llama (tests/fixtures_training.py); the dataset is built by `sleepy train` itself from
episodes seeded into a temporary state. Starting a fresh Python that imports torch, transformers and peft takes
5 to 15 s on a busy 2-core machine, so the CLI runs in processes forked from one "zygote" that has done those
imports (and nothing else: no torch op has run in it, so its children start clean). Each child runs
`sleepy_tui.cli.main(argv)`, exactly what the `sleepy` console script runs, and is killed with SIGKILL.

The CLI does not expose `checkpoint_every` (TrainConfig's default is 20; Settings has no such field), so unless
Settings grows one (then SLEEPY_CHECKPOINT_EVERY is used) the zygote makes TrainConfig.from_settings default it
to CHECKPOINT_EVERY. The checkpoints the CLI prints are asserted, so the test knows which one it got.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from sleepy_tui.config import Settings
from sleepy_tui.store import Store
from tests.conftest import write_koan

from fixtures_training import PAIRS, SYSTEM, build_tiny_llama, cached_tokenizer

REPO = Path(__file__).resolve().parents[1]
STEPS = 12
CHECKPOINT_EVERY = 2
TRIALS = 20
SETTINGS_HAS_CHECKPOINT_EVERY = "checkpoint_every" in {f.name for f in fields(Settings)}

pytestmark = pytest.mark.slow          # a tiny model is built and torch imported: about 20 s before the first test

ZYGOTE = r'''
import json, os, signal, sys, traceback
os.environ["OMP_NUM_THREADS"] = "1"; os.environ["MKL_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
import numpy, torch, transformers, peft, safetensors.torch, gguf          # the slow imports, once
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
import sleepy_tui.cli, sleepy_tui.engine, sleepy_tui.training.torch_trainer, sleepy_tui.training.gguf_export
from sleepy_tui.training.base import TrainConfig

every = os.environ.get("ZYGOTE_CHECKPOINT_EVERY")
if every:
    _orig = TrainConfig.from_settings.__func__
    TrainConfig.from_settings = classmethod(
        lambda cls, s, **o: _orig(cls, s, **{"checkpoint_every": int(every), **o}))

def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:                                   # the child: the CLI, output to a log file
        code = 1
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            if req.get("die_at"):                  # SIGKILL itself when this function is called
                mod, name = req["die_at"].rsplit(":", 1)
                setattr(__import__(mod, fromlist=[name]), name, die)
            code = sleepy_tui.cli.main(req["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code or 0)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    print(json.dumps({"rc": rc}), flush=True)
'''


@dataclass
class Ran:
    rc: int              # -9: killed
    out: str             # what the CLI printed (stdout and stderr)
    seconds: float
    lines: dict[str, float] = field(default_factory=dict)   # line -> seconds after the start it appeared


class Zygote:
    """A Python with torch & co. imported that forks one CLI process at a time on request."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=REPO, env=env)
        assert self._read() == {"ready": True}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote died (rc {self.proc.wait()})")
        return json.loads(line)

    def run(self, argv: list[str], log: Path, *, kill_after: float | None = None, after_line: str = "",
            die_at: str = "", timeout: float = 300) -> Ran:
        """Run the CLI, noting when each line matching `after_line` first appears. With `kill_after`, SIGKILL it
        that many seconds after it starts, or after the first such line (not at all if it ends before one)."""
        log.write_text("")
        t0 = time.monotonic()
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "die_at": die_at}) + "\n")
        self.proc.stdin.flush()
        pid = self._read()["pid"]
        seen: dict[str, float] = {}
        if after_line:
            marker = re.compile(after_line, re.M)
            while not select.select([self.proc.stdout], [], [], 0.005)[0]:   # until it ends
                for m in marker.finditer(log.read_text(errors="replace")):
                    seen.setdefault(m.group(0), time.monotonic() - t0)
                if seen and kill_after is not None:
                    break
                assert time.monotonic() - t0 < timeout, f"{argv}: ran {timeout}s"
        if kill_after is not None and (seen or not after_line):
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:   # it finished first
                pass
        rc = self._read()["rc"]
        seconds = time.monotonic() - t0
        assert seconds < timeout, f"{argv}: ran {seconds:.0f}s"
        return Ran(rc, log.read_text(errors="replace"), seconds, seen)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- fixtures --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory, pytestconfig):
    """(tiny model dir, koans dir, seed state dir): the state holds one day run of passing episodes."""
    root = tmp_path_factory.mktemp("crash_train")
    model = build_tiny_llama(root / "model", cached_tokenizer(pytestconfig, root / "tokenizer"))
    koans = root / "koans"
    for i in range(len(PAIRS)):
        write_koan(koans, f"bc_{930 + i}")
    state = root / "seed_state"
    store = Store(state)
    eps = []
    for i, (buggy, fixed) in enumerate(PAIRS):
        prompt = [{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": f"Fix this program:\n```rust\n{buggy}\n```"}]
        eps.append({"run_id": "day-seed", "koan_id": f"bc_{930 + i}", "family": "borrow_checker", "split": "train",
                    "cycle": 1, "attempt": 1, "outcome": "pass", "signature": None, "prompt": prompt,
                    "reply": f"```rust\n{fixed}\n```", "code": fixed})
    store.add_episodes(eps)
    store.save_run({"run_id": "day-seed", "kind": "day", "split": "train", "cycle": 1, "status": "done",
                    "started": 1.0, "koan_ids": [e["koan_id"] for e in eps]})
    store.close()
    return model, koans, state


@pytest.fixture(scope="module")
def zygote(setup, tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLEEPY_")}
    env["SLEEPY_STATE_DIR"] = str(tmp_path_factory.mktemp("unused_state"))   # --state is always given
    if SETTINGS_HAS_CHECKPOINT_EVERY:
        env["SLEEPY_CHECKPOINT_EVERY"] = str(CHECKPOINT_EVERY)
    else:
        env["ZYGOTE_CHECKPOINT_EVERY"] = str(CHECKPOINT_EVERY)
    z = Zygote(env)
    yield z
    z.close()


def train_argv(setup, state: Path, resume: bool = False) -> list[str]:
    model, koans, _ = setup
    return ["train", "--backend", "transformers", "--model", str(model), "--koans", str(koans), "--state", str(state),
            "--steps", str(STEPS), "--batch-size", "2", "--learning-rate", "0.02"] + (["--resume"] if resume else [])


def fresh_state(setup, path: Path) -> Path:
    shutil.copytree(setup[2], path)
    return path


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    import torch
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def saved_adapter(log: str) -> str:
    m = re.search(r"^adapter (\S+) saved", log, re.M)
    assert m, log[-3000:]
    return m.group(1)


def inspect_state(state: Path) -> dict:
    """Everything under `state` is whole: the store loads without recovery, every JSON record parses, every
    complete checkpoint and adapter loads. Returns what a resume should continue: {"adapter_id", "step"}."""
    import torch
    from safetensors.torch import load_file

    from sleepy_tui.training.torch_trainer import STATE_FILE, checkpoints
    warnings: list[str] = []
    store = Store(state, on_warning=warnings.append)
    try:
        assert warnings == [], f"state needed recovery: {warnings}"
        for f in [state / "sleepy.json", *sorted((state / "episodes").glob("*.json"))]:
            json.loads(f.read_text())                                       # strict parse, not recovery
        assert len(store.episodes()) == len(PAIRS)
        for f in sorted(state.glob("datasets/*.jsonl")):
            assert all(json.loads(line)["messages"] for line in f.read_text().splitlines())
        records = {a.adapter_id: a for a in store.adapters()}
        for a in records.values():                                        # a record exists only once whole
            assert a.steps == STEPS and not a.stopped and Path(a.gguf).is_file(), a
            assert json.loads((state / "adapters" / a.adapter_id / "meta.json").read_text())["steps"] == STEPS
            weights(Path(a.peft_dir))
        for d in sorted(state.glob("adapters/*")):
            for step, folder in checkpoints(d):
                load_file(str(folder / "adapter_model.safetensors"))
                assert torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)["step"] == step
            if (d / "adapter").is_dir():
                weights(d / "adapter")
        training = store.get_value("training_adapter_id")
        found = checkpoints(state / "adapters" / training) if training else []
        return {"adapter_id": training, "step": found[-1][0] if found else 0, "records": records}
    finally:
        store.close()


def no_leftovers(adapter: Path) -> None:
    junk = [p for p in adapter.rglob(".tmp-*")]
    assert not junk, junk


# ---- the tests -------------------------------------------------------------------------------------------------------

TRAINING = r"^training \d+ examples"       # the CLI's line once the model is loaded and training starts
MILESTONES = rf"{TRAINING}|^  checkpoint at step \d+"


@pytest.fixture(scope="module")
def unbroken(setup, zygote, tmp_path_factory):
    """One `sleepy train` run to the end: the reference adapter, and when training started and ended."""
    root = tmp_path_factory.mktemp("unbroken")
    state = fresh_state(setup, root / "state")
    ran = zygote.run(train_argv(setup, state), root / "log.txt", after_line=MILESTONES)
    assert ran.rc == 0 and len(ran.lines) == 1 + STEPS // CHECKPOINT_EVERY, (ran.lines, ran.out[-3000:])
    ckpts = [int(s) for s in re.findall(r"checkpoint at step (\d+)", ran.out)]
    assert ckpts == list(range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY)), ran.out[-3000:]
    aid = saved_adapter(ran.out)
    info = inspect_state(state)
    assert set(info["records"]) == {aid} and info["adapter_id"] is None
    return weights(state / "adapters" / aid / "adapter"), ran


def test_unbroken_cli_run(unbroken):
    ran = unbroken[1]
    print(f"\nunbroken `sleepy train` ({STEPS} steps, tiny llama) in a forked CLI process: {ran.seconds:.1f}s; "
          + ", ".join(f"{line.strip()!r} at {t:.2f}s" for line, t in ran.lines.items()))
    assert ran.seconds < 120


def resume(zygote, setup, state: Path, log: Path) -> Ran:
    ran = zygote.run(train_argv(setup, state, resume=True), log)
    if ran.rc == 2 and "nothing to resume" in ran.out:      # killed before the dataset was recorded: start over
        ran = zygote.run(train_argv(setup, state), log)
    return ran


def finish_and_compare(zygote, setup, state: Path, tmp: Path, reference: dict, before: dict) -> int:
    """Resume after a kill; check it continued from the last checkpoint and matches the unbroken adapter.
    Returns the step it resumed from."""
    ran = resume(zygote, setup, state, tmp / "resume.txt")
    assert ran.rc == 0, ran.out[-3000:]
    m = re.search(r"resumed from step (\d+)", ran.out)
    resumed = int(m.group(1)) if m else 0
    aid = saved_adapter(ran.out)
    if before["adapter_id"]:                          # the killed training continues: same adapter, last checkpoint
        assert aid == before["adapter_id"] and resumed == before["step"], (before, ran.out[-2000:])
    else:
        assert resumed == 0, ran.out[-2000:]
    after = inspect_state(state)
    assert after["adapter_id"] is None and aid in after["records"]
    assert_same_weights(weights(Path(after["records"][aid].peft_dir)), reference)
    no_leftovers(state / "adapters" / aid)
    return resumed


@pytest.mark.slow
def test_kill_during_train_then_resume_ends_like_an_unbroken_run(setup, zygote, unbroken, tmp_path):
    """TRIALS seeded kills: one in four anywhere in the run (start-up, dataset, model load included), the others
    at a random moment after a random milestone (training started, checkpoint k written) and before the next one
    (the end of the run after the last: the final adapter, the GGUF export, the record)."""
    reference, ref = unbroken
    rng = random.Random(20241124)
    milestones = sorted(ref.lines.items(), key=lambda kv: kv[1]) + [("end", ref.seconds)]
    resumed_from: list[int] = []
    unrecorded = 0                # kills that left a fully trained adapter unrecorded (see the test below)
    t_start = time.monotonic()
    for trial in range(TRIALS):
        tdir = tmp_path / f"t{trial}"
        tdir.mkdir()
        state = fresh_state(setup, tdir / "state")
        if trial % 4 == 0:
            ran = zygote.run(train_argv(setup, state), tdir / "killed.txt", kill_after=rng.uniform(0, ref.seconds))
        else:
            i = rng.randrange(len(milestones) - 1)
            (line, t), (_, t_next) = milestones[i], milestones[i + 1]
            ran = zygote.run(train_argv(setup, state), tdir / "killed.txt", after_line=re.escape(line.strip()),
                             kill_after=rng.uniform(0, t_next - t))
        before = inspect_state(state)
        unrecorded += sum(1 for d in state.glob("adapters/*") if d.name not in before["records"]
                          and d.name != before["adapter_id"] and (d / "checkpoints" / f"step-{STEPS:06d}").is_dir())
        if ran.rc == 0:                               # it finished before the kill: nothing to resume
            assert set(before["records"]) == {saved_adapter(ran.out)}
            resumed_from.append(STEPS)
            continue
        assert ran.rc == -signal.SIGKILL, ran.out[-3000:]
        resumed_from.append(finish_and_compare(zygote, setup, state, tdir, reference, before))
    took = time.monotonic() - t_start
    print(f"\n{TRIALS} kills in {took:.0f}s (unbroken run {ref.seconds:.1f}s); resumed from steps {resumed_from}; "
          f"{unrecorded} left a trained adapter unrecorded")
    # the kills landed at different moments: before the first checkpoint, between checkpoints, near the end
    assert len(set(resumed_from)) >= 3 and min(resumed_from) < STEPS, resumed_from


@pytest.mark.slow
@pytest.mark.parametrize("die_at", [
    "torch:save",                                          # mid-write of the first checkpoint: its state file
    "sleepy_tui.training.torch_trainer:_save_adapter",     # ditto, before its adapter files
])
def test_kill_while_writing_the_first_checkpoint(setup, zygote, unbroken, tmp_path, die_at):
    state = fresh_state(setup, tmp_path / "state")
    ran = zygote.run(train_argv(setup, state), tmp_path / "killed.txt", die_at=die_at)
    assert ran.rc == -signal.SIGKILL and "checkpoint at step" not in ran.out, ran.out[-2000:]
    adapter = state / "adapters" / re.search(r"-> \S+/adapters/(\S+)", ran.out).group(1)
    assert list((adapter / "checkpoints").glob(".tmp-step-*"))      # the half-written checkpoint, under a temp name
    before = inspect_state(state)
    assert before["adapter_id"] == adapter.name and before["step"] == 0
    assert finish_and_compare(zygote, setup, state, tmp_path, unbroken[0], before) == 0


@pytest.mark.slow
def test_kill_between_training_and_recording_resumes_without_retraining(setup, zygote, unbroken, tmp_path):
    state = fresh_state(setup, tmp_path / "state")
    ran = zygote.run(train_argv(setup, state), tmp_path / "killed.txt",
                     die_at="sleepy_tui.training.gguf_export:export_gguf_lora")
    assert ran.rc == -signal.SIGKILL and f"checkpoint at step {STEPS}" in ran.out, ran.out[-2000:]
    killed = re.search(r"-> \S+/adapters/(\S+)", ran.out).group(1)
    before = inspect_state(state)
    assert before["adapter_id"] == killed and before["step"] == STEPS        # fails today: the id is already None
    assert finish_and_compare(zygote, setup, state, tmp_path, unbroken[0], before) == STEPS
