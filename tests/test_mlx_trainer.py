"""The mlx-lm LoRA trainer on a tiny random llama (SmolLM2's tokenizer): loss, events, checkpoints, resume.

mlx's Linux CPU build runs matmuls on reference BLAS (a few GFLOP/s), so the runs are short and shared:
one unbroken 30-step run is checked from several sides, and one stopped + crashed + resumed run is compared
with it.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest

from sleepy_tui import events as ev
from sleepy_tui.training.base import TrainConfig, TrainingUnavailable
from sleepy_tui.training.mlx_trainer import mlx_problem

from fixtures_training import build_tiny_llama, cached_tokenizer, chat_rows, run_trainer, write_dataset

_PROBLEM = mlx_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"mlx can't run here: {_PROBLEM}")

STEPS = 30


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, pytestconfig) -> tuple[Path, Path]:
    """(model folder, dataset file): the tiny llama with the transformers default init (std 0.02)."""
    root = tmp_path_factory.mktemp("mlx_tiny")
    model = build_tiny_llama(root / "model", cached_tokenizer(pytestconfig, root / "tokenizer"), init_std=0.02)
    return model, write_dataset(root / "train.jsonl")


def _config(model: Path, **kw) -> TrainConfig:
    base = dict(base_model=str(model), steps=STEPS, learning_rate=1e-2, warmup_steps=2, lora_dropout=0.05,
                batch_size=2, checkpoint_every=10, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _train(tiny, out: Path, *, events: list | None = None, stop=None, resume=True, hook=None, **kw):
    from sleepy_tui.training.mlx_trainer import MlxTrainer
    model, data = tiny
    return run_trainer(MlxTrainer(), data, _config(model, **kw), out, events=events, stop=stop, resume=resume,
                       hook=hook)


@pytest.fixture(scope="module")
def unbroken(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlx_run") / "run"
    events: list = []
    t0 = time.perf_counter()
    result = _train(tiny, out, events=events, resume=False)
    return out, result, events, time.perf_counter() - t0


def _adapter_weights(folder: Path) -> dict:
    import mlx.core as mx
    import numpy as np
    return {k: np.array(v) for k, v in mx.load(str(folder / "adapters.safetensors")).items()}


# ---- pieces ----------------------------------------------------------------------------------------------------------

def test_only_the_reply_is_trained_on(tiny):
    import mlx.core as mx
    import numpy as np
    from mlx_lm.utils import load_tokenizer

    from sleepy_tui.training.mlx_trainer import encode_example, load_model, make_batch, reply_logits
    model_dir, _ = tiny
    tok = load_tokenizer(model_dir)
    rows = chat_rows()
    examples = [encode_example(tok, r["messages"]) for r in rows]
    tokens, positions, mask, weights, changed = make_batch(examples, [0, 1, 2])
    assert np.array_equal(np.array(weights), np.array(mask).astype(np.float32))     # copy_weight 1: plain
    targets = np.array(mx.take_along_axis(tokens, positions + 1, axis=1))
    for r, i in enumerate([0, 1, 2]):
        trained = tok.decode(targets[r][np.array(mask[r])].tolist())
        assert trained == rows[i]["messages"][-1]["content"] + "<|im_end|>\n"
    # the output layer on the reply positions only gives the model's own logits there
    model, _ = load_model(model_dir)
    full = mx.take_along_axis(model(tokens[:, :-1]), positions[..., None], axis=1)
    assert mx.allclose(reply_logits(model, tokens[:, :-1], positions), full, atol=1e-5).item()


def test_copied_reply_tokens_weigh_copy_weight_and_the_fix_1(tiny):
    import numpy as np
    from mlx_lm.utils import load_tokenizer

    from sleepy_tui.training.base import copied_mask
    from sleepy_tui.training.mlx_trainer import encode_example, make_batch
    tok = load_tokenizer(tiny[0])
    examples = [encode_example(tok, r["messages"]) for r in chat_rows()[:2]]
    copied = [copied_mask(t, o) for t, o in examples]
    _, _, mask, weights, changed = make_batch(examples, [1, 0], copied, copy_weight=0.25)
    mask, weights, changed = np.array(mask), np.array(weights), np.array(changed)
    for r, i in enumerate([1, 0]):
        n = len(copied[i])
        assert mask[r].sum() == n and changed[r, :n].tolist() == [not c for c in copied[i]]
        assert weights[r, :n].tolist() == [0.25 if c else 1.0 for c in copied[i]]
        assert not weights[r, n:].any() and not changed[r, n:].any()
    assert changed.any() and (mask & ~changed).any()           # both kinds are there


def test_a_focused_run_logs_the_changed_loss_and_starts_from_the_same_loss(tiny, unbroken, tmp_path):
    focused = _train(tiny, tmp_path / "focused", steps=2, checkpoint_every=0, copy_weight=0.0)
    log = [json.loads(line) for line in (tmp_path / "focused" / "loss.jsonl").read_text().splitlines()]
    assert all(r["changed_tokens"] > 0 and r["changed_loss"] > 0 for r in log)
    assert focused.losses[0] == pytest.approx(unbroken[1].losses[0], rel=1e-5)   # the plain loss, before an update


def test_lr_schedule_warms_up_then_decays():
    from sleepy_tui.training.mlx_trainer import lr_schedule
    cfg = TrainConfig(steps=10, learning_rate=1e-3, warmup_steps=3)
    lrs = [lr_schedule(cfg)(s).item() for s in range(10)]
    assert all(lr > 0 for lr in lrs)
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))
    const = TrainConfig(steps=10, learning_rate=1e-3, warmup_steps=0, lr_schedule="constant")
    assert [lr_schedule(const)(s).item() for s in (0, 9)] == pytest.approx([1e-3, 1e-3])


def test_config_fix_reads_rope_theta_from_transformers5_config(tmp_path):
    from sleepy_tui.backends.mlx_backend import mlx_config_fixes as _config_fixes
    (tmp_path / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 100000.0,
                                                                          "rope_type": "default"}}))
    assert _config_fixes(tmp_path) == {"rope_theta": 100000.0}
    (tmp_path / "config.json").write_text(json.dumps({"rope_theta": 5.0}))
    assert _config_fixes(tmp_path) == {}


# ---- one unbroken run ------------------------------------------------------------------------------------------------

def test_loss_falls(unbroken):
    out, result, _, seconds = unbroken
    print(f"\n{STEPS} steps of the tiny model in {seconds:.1f}s; "
          f"losses {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    assert len(result.losses) == STEPS and all(math.isfinite(x) for x in result.losses)
    assert sum(result.losses[:5]) / 5 > sum(result.losses[-5:]) / 5
    logged = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in logged] == result.losses
    assert set(logged[0]) == {"step", "loss", "lr", "tokens_per_s", "changed_loss", "changed_tokens"}
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["trainer"] == "mlx" and saved["steps"] == STEPS and saved["examples"] == 8


def test_events_arrive_in_order(unbroken):
    out, result, events, _ = unbroken
    kinds = [e.kind for e in events]
    assert kinds[0] == "TrainStarted" and kinds[-1] == "TrainDone" and "TrainError" not in kinds
    started, done = events[0], events[-1]
    assert (started.total_steps, started.examples, started.resumed_from, started.run_dir) == (STEPS, 8, 0, str(out))
    steps = [e for e in events if isinstance(e, ev.TrainStep)]
    assert [e.step for e in steps] == list(range(1, STEPS + 1))
    assert all(e.total_steps == STEPS and e.learning_rate > 0 and e.tokens_per_s > 0 and e.eta_s >= 0 for e in steps)
    assert steps[-1].eta_s == 0 and [e.loss for e in steps] == result.losses
    for i, e in enumerate(events):      # a checkpoint right after the step it holds
        if isinstance(e, ev.CheckpointSaved):
            assert isinstance(events[i - 1], ev.TrainStep) and events[i - 1].step == e.step
    assert [e.step for e in events if isinstance(e, ev.CheckpointSaved)] == [10, 20, 30]
    assert done.adapter_dir == str(out / "adapter") and done.steps == STEPS and not done.stopped
    assert (done.initial_loss, done.final_loss) == (result.losses[0], result.losses[-1])
    assert result.adapter_dir == out / "adapter" and not result.stopped


def test_checkpoints_hold_adapter_optimizer_and_state(unbroken):
    import mlx.core as mx
    out = unbroken[0]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-000010", "step-000020", "step-000030"]    # no temporary folders left behind
    # the last two whole; the older one reduced to its adapter (the validation slice may choose it)
    assert {p.name for p in (out / "checkpoints" / "step-000010").iterdir()} == {"adapters.safetensors",
                                                                                "adapter_config.json"}
    ck = out / "checkpoints" / "step-000020"
    assert {p.name for p in ck.iterdir()} == {"adapters.safetensors", "adapter_config.json",
                                              "optimizer.safetensors", "trainer_state.json"}
    opt = mx.load(str(ck / "optimizer.safetensors"))
    assert opt["step"].item() == 20
    assert any(k.endswith("lora_a.m") for k in opt) and any(k.endswith("lora_b.v") for k in opt)
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == 20 and len(state["rng_key"]) == 2 and len(state["log"]) == 20
    assert state["data_order"] == {"epoch": 4, "position": 8, "seed": 0}     # 20 steps x 2 of 8 examples


def test_final_adapter_loads_with_mlx_lm_and_changes_the_logits(tiny, unbroken):
    import mlx.core as mx
    import mlx_lm
    model_dir, _ = tiny
    out = unbroken[0]
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["lora_parameters"]["scale"] == 2.0
    assert set(cfg["lora_parameters"]["keys"]) == {f"self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    base, tok = mlx_lm.load(str(model_dir))
    tuned, _ = mlx_lm.load(str(model_dir), adapter_path=str(out / "adapter"))
    ids = mx.array([tok.apply_chat_template(chat_rows()[0]["messages"][:-1], add_generation_prompt=True)])
    diff = mx.abs(base(ids) - tuned(ids)).max().item()
    assert diff > 1e-3
    # the same weights as the last checkpoint
    final, last = _adapter_weights(out / "adapter"), _adapter_weights(out / "checkpoints" / "step-000030")
    assert final.keys() == last.keys() and all((final[k] == last[k]).all() for k in final)


def test_resume_of_a_finished_run_trains_nothing(tiny, unbroken, tmp_path):
    import shutil
    src, result, _, _ = unbroken
    out = tmp_path / "run"
    shutil.copytree(src, out)
    events: list = []
    again = _train(tiny, out, events=events)
    assert [e.kind for e in events] == ["TrainStarted", "TrainDone"] and events[0].resumed_from == STEPS
    assert again.losses == result.losses and again.steps == STEPS


def test_resume_refuses_a_different_setup(tiny, unbroken):
    out = unbroken[0]
    events: list = []
    with pytest.raises(ValueError, match="lora_rank"):
        _train(tiny, out, events=events, lora_rank=4)
    assert [e.kind for e in events] == ["TrainError"]


# ---- stop, crash, resume ---------------------------------------------------------------------------------------------

def test_stop_crash_and_resume_end_where_an_unbroken_run_does(tiny, unbroken, tmp_path):
    import numpy as np
    out = tmp_path / "run"
    ref_out, ref, _, _ = unbroken

    # 1. a stop request during step 12 is honoured before step 13: a checkpoint, stopped=True
    stop = threading.Event()
    events: list = []
    res = _train(tiny, out, events=events, stop=stop, resume=False,
                 hook=lambda e: isinstance(e, ev.TrainStep) and e.step == 12 and stop.set())
    assert res.stopped and res.steps == 12 and res.adapter_dir == out / "checkpoints" / "step-000012"
    assert [e.kind for e in events[-3:]] == ["TrainStep", "CheckpointSaved", "TrainDone"]
    assert events[-1].stopped and events[-2].step == 12
    assert not (out / "adapter").exists()

    # 2. resumed, then a crash in step 17 (after the step-12 checkpoint, before the next one)
    def crash(e):
        if isinstance(e, ev.TrainStep) and e.step == 17:
            raise Crash("power cut")
    events = []
    with pytest.raises(Crash):
        _train(tiny, out, events=events, hook=crash)
    assert events[0].resumed_from == 12 and events[1].step == 13 and events[-1].kind == "TrainError"

    # 3. resumed again from step 12: the log forgets steps 13..17 of the crashed run and the end is the same
    events = []
    res = _train(tiny, out, events=events)
    assert events[0].resumed_from == 12 and not res.stopped and res.steps == STEPS
    assert [e.step for e in events if isinstance(e, ev.TrainStep)] == list(range(13, STEPS + 1))
    assert np.allclose(res.losses, ref.losses, rtol=0, atol=1e-5)
    logged = [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert logged == list(range(1, STEPS + 1))
    got, want = _adapter_weights(out / "adapter"), _adapter_weights(ref_out / "adapter")
    assert got.keys() == want.keys()
    worst = max(float(np.abs(got[k] - want[k]).max()) for k in got)
    assert worst < 1e-5, f"resumed weights differ from the unbroken run's by {worst}"


def test_a_worker_thread_stops_when_asked(tiny, tmp_path):
    """As the app runs it: training in a worker thread, the stop set from another one."""
    stop, first_step = threading.Event(), threading.Event()
    box: dict = {}

    def work():
        box["result"] = _train(tiny, tmp_path / "run", stop=stop, resume=False,
                               hook=lambda e: isinstance(e, ev.TrainStep) and first_step.set())

    worker = threading.Thread(target=work)
    worker.start()
    assert first_step.wait(120)
    stop.set()
    worker.join(120)
    res = box["result"]
    assert res.stopped and 1 <= res.steps < STEPS
    assert res.adapter_dir == tmp_path / "run" / "checkpoints" / f"step-{res.steps:06d}"


def test_a_missing_base_model_is_reported(tiny, tmp_path):
    events: list = []
    from sleepy_tui.training.mlx_trainer import MlxTrainer
    with pytest.raises(TrainingUnavailable, match="local model folder"):
        MlxTrainer().train(tiny[1], TrainConfig(base_model=str(tmp_path / "nope"), steps=2), tmp_path / "run",
                           on_event=events.append)
    assert [e.kind for e in events] == ["TrainError"]


# ---- the real model --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_three_steps_on_the_embedded_smollm2(tmp_path):
    """base_model "" converts the embedded GGUF into an HF folder (cached) and trains on it."""
    import mlx.core as mx

    from sleepy_tui.training.mlx_trainer import MlxTrainer, load_model
    rows = [{"messages": [{"role": "system", "content": "Fix Rust."},
                          {"role": "user", "content": f"let x = {n}; x = 1;"},
                          {"role": "assistant", "content": f"let mut x = {n}; x = 1;"}]} for n in range(4)]
    data = write_dataset(tmp_path / "train.jsonl", rows)
    events: list = []
    t0 = time.perf_counter()
    res = MlxTrainer(cache_dir=tmp_path / "models").train(
        data, TrainConfig(steps=3, batch_size=1, warmup_steps=0, checkpoint_every=0), tmp_path / "run",
        on_event=events.append, resume=False)
    steps = [e for e in events if isinstance(e, ev.TrainStep)]
    print(f"\nSmolLM2-135M: 3 steps in {time.perf_counter() - t0:.0f}s (conversion included), "
          f"{steps[-1].tokens_per_s:.1f} tokens/s at the last step")
    assert res.steps == 3 and all(math.isfinite(x) and x < 5 for x in res.losses)
    base_dir = Path(json.loads((tmp_path / "run" / "train_config.json").read_text())["base_model_dir"])
    assert base_dir.parent == tmp_path / "models"
    base, tok = load_model(base_dir)
    tuned, _ = load_model(base_dir, adapter_path=res.adapter_dir)
    ids = mx.array([tok.apply_chat_template(rows[0]["messages"][:-1], add_generation_prompt=True)])
    assert mx.abs(base(ids) - tuned(ids)).max().item() > 0
