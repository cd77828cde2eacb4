"""The torch trainer in its own process (training/process_trainer.py), on a tiny random llama: it ends like the
trainer in process, a stop checkpoints and ends the child, a killed child is one clear error and its last
checkpoint resumes, and the child runs at the nice value of the thread that started it."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading

import pytest

from sleepy_tui import events as ev
from sleepy_tui.priority import lower_this_thread, this_thread_nice
from sleepy_tui.training.base import TrainConfig
from sleepy_tui.training.process_trainer import ProcessTrainer, TrainerCrashed
from sleepy_tui.training.torch_trainer import TorchTrainer, checkpoints

from fixtures_training import build_tiny_llama, cached_tokenizer, run_trainer, write_dataset

STEPS = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, pytestconfig):
    root = tmp_path_factory.mktemp("process_tiny")
    model = build_tiny_llama(root / "model", cached_tokenizer(pytestconfig, root / "tokenizer"))
    return model, write_dataset(root / "train.jsonl")


def _config(model, **kw) -> TrainConfig:
    return dataclasses.replace(TrainConfig(base_model=str(model), steps=STEPS, batch_size=2, learning_rate=5e-3,
                                           warmup_steps=1, lora_rank=4, lora_alpha=8, max_seq_len=256,
                                           checkpoint_every=3, seed=0, precision="float32"), **kw)


@pytest.fixture(scope="module")
def in_process(tiny, tmp_path_factory):
    model, data = tiny
    out = tmp_path_factory.mktemp("in_process")
    return TorchTrainer(threads=1).train(data, _config(model), out, on_event=ev.ignore, resume=False)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_child_process_trains_like_the_trainer_in_process(tiny, in_process, tmp_path):
    model, data = tiny
    trainer = ProcessTrainer(threads=1)
    events: list = []
    result = run_trainer(trainer, data, _config(model), tmp_path / "run", events=events, resume=False)
    assert not result.stopped and result.steps == STEPS and _gone(trainer.pid)
    assert result.losses == pytest.approx(in_process.losses, rel=1e-4)
    kinds = [e.kind for e in events]
    assert "TrainStarted" in kinds and kinds.count("TrainStep") == STEPS and kinds[-1] == "TrainDone"
    assert all(isinstance(e, ev.Event) for e in events)          # the same event objects, not dicts
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_stop_checkpoints_ends_the_child_and_resumes_exactly(tiny, in_process, tmp_path):
    model, data = tiny
    out, stop, trainer = tmp_path / "run", threading.Event(), ProcessTrainer(threads=1)

    def stop_after_the_first_step(e):   # the child gets SIGTERM during its next steps
        if isinstance(e, ev.TrainStep):
            stop.set()

    first = run_trainer(trainer, data, _config(model), out, stop=stop, resume=False,
                        hook=stop_after_the_first_step)
    assert first.stopped and 1 <= first.steps < STEPS and _gone(trainer.pid)
    assert [s for s, _ in checkpoints(out)][-1] == first.steps       # the last checkpoint is where it stopped
    last = ProcessTrainer(threads=1).train(data, _config(model), out, on_event=ev.ignore)
    assert not last.stopped and last.steps == STEPS
    assert last.losses == pytest.approx(in_process.losses, rel=1e-4)


def test_a_killed_child_is_one_clear_error_and_its_checkpoint_resumes(tiny, in_process, tmp_path):
    model, data = tiny
    out, trainer = tmp_path / "run", ProcessTrainer(threads=1)

    def kill_after_the_first_checkpoint(e):
        if isinstance(e, ev.CheckpointSaved):
            os.kill(trainer.pid, signal.SIGKILL)                     # as the kernel's out-of-memory killer does

    events: list = []
    with pytest.raises(TrainerCrashed, match="killed \\(SIGKILL: out of memory\\?\\)") as e:
        run_trainer(trainer, data, _config(model, checkpoint_every=1), out, events=events, resume=False,
                    hook=kill_after_the_first_checkpoint)
    assert "--resume" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(events[-1], ev.TrainError) and events[-1].message == str(e.value)
    assert [s for s, _ in checkpoints(out)][0] >= 1                  # at least the one it was killed after
    last = ProcessTrainer(threads=1).train(data, _config(model), out, on_event=ev.ignore)
    assert last.steps == STEPS and last.losses == pytest.approx(in_process.losses, rel=1e-4)


def test_the_child_runs_at_the_nice_value_of_the_thread_that_started_it(tiny, tmp_path):
    model, data = tiny
    trainer, seen = ProcessTrainer(threads=1), {}

    def worker():                                  # as the app's training worker does
        seen["thread"] = lower_this_thread()
        config = _config(model, steps=1, checkpoint_every=0)
        trainer.train(data, config, tmp_path / "run", on_event=ev.ignore, resume=False)

    t = threading.Thread(target=worker)
    t.start()
    t.join(300)
    if seen["thread"] is None:
        pytest.skip("no per-thread nice value on this platform")
    assert trainer.child_nice == seen["thread"] > (this_thread_nice() or 0)
