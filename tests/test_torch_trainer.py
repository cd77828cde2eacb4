"""The torch LoRA trainer on a tiny random llama (SmolLM2's tokenizer): labels, batching, loss, events,
checkpoints, stop / crash + resume. The slow tests train the real SmolLM2-135M base for a few steps and run
the trainer under `accelerate launch` with two CPU processes.

One unbroken 30-step run is checked from several sides; stopped, crashed and resumed runs are compared with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sleepy_tui import events as ev
from sleepy_tui.training.base import TrainConfig
from sleepy_tui.training.torch_trainer import (IGNORE, STATE_FILE, BatchPlan, TorchTrainer, checkpoints, collate,
                                               encode_example, lr_factor)

from fixtures_training import build_tiny_llama, cached_tokenizer, chat_rows, run_trainer, varied_rows, write_dataset

STEPS = 30


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, pytestconfig) -> tuple[Path, Path]:
    """(model folder, dataset file)."""
    root = tmp_path_factory.mktemp("torch_tiny")
    model = build_tiny_llama(root / "model", cached_tokenizer(pytestconfig, root / "tokenizer"))
    return model, write_dataset(root / "train.jsonl")


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny[0])


def _config(model: Path, **kw) -> TrainConfig:
    base = dict(base_model=str(model), steps=STEPS, learning_rate=2e-2, warmup_steps=2, lora_dropout=0.05,
                batch_size=2, checkpoint_every=10, seed=0,
                target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    base.update(kw)
    return TrainConfig(**base)


def _train(tiny, out: Path, *, events: list | None = None, stop=None, resume=True, hook=None, **kw):
    model, data = tiny
    return run_trainer(TorchTrainer(), data, _config(model, **kw), out, events=events, stop=stop, resume=resume,
                       hook=hook)


def _adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(folder / "adapter_model.safetensors"))


def _assert_same_weights(a: dict, b: dict) -> None:
    import torch
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


@pytest.fixture(scope="module")
def unbroken(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_run") / "run"
    events: list = []
    t0 = time.perf_counter()
    result = _train(tiny, out, events=events, resume=False)
    return out, result, events, time.perf_counter() - t0


# ---- pieces ----------------------------------------------------------------------------------------------------------

def test_labels_mask_everything_but_the_reply(tokenizer):
    rows = chat_rows()
    examples = [encode_example(tokenizer, r["messages"]) for r in rows[:3]]
    batch = collate(examples, [0, 1, 2], pad_id=tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    for r, ((toks, offset), row) in enumerate(zip(examples, rows)):
        labels = batch["labels"][r].tolist()
        reply = [t for t in labels if t != IGNORE]
        assert tokenizer.decode(reply) == row["messages"][-1]["content"] + "<|im_end|>\n"
        assert labels[:offset] == [IGNORE] * offset                  # system, user and the assistant header
        assert labels[offset:len(toks)] == toks[offset:]
        assert labels[len(toks):] == [IGNORE] * (width - len(toks))   # padding
        assert batch["attention_mask"][r].tolist() == [1] * len(toks) + [0] * (width - len(toks))
        prompt = tokenizer.decode(toks[:offset])
        assert prompt.endswith("<|im_start|>assistant\n") and row["messages"][1]["content"] in prompt


BROKEN = """fn main() {
    let s = String::from("hi");
    let t = s;
    println!("{} {}", s, t);
}"""


def _repair_example(tokenizer):
    fixed = BROKEN.replace("let t = s;", "let t = s.clone();")
    messages = [{"role": "system", "content": "Fix the Rust program."},
                {"role": "user", "content": f"```rust\n{BROKEN}\n```\nerror[E0382]: borrow of moved value: `s`"},
                {"role": "assistant", "content": f"```rust\n{fixed}\n```"}]
    return encode_example(tokenizer, messages)


def test_copied_mask_leaves_the_fix_and_marks_the_program_it_repeats(tokenizer):
    from sleepy_tui.training.base import copied_mask
    toks, offset = _repair_example(tokenizer)
    mask = copied_mask(toks, offset)
    reply = toks[offset:]
    assert len(mask) == len(reply) and 0.6 < sum(mask) / len(mask) < 0.95
    changed = tokenizer.decode([t for t, c in zip(reply, mask) if not c])
    copied = tokenizer.decode([t for t, c in zip(reply, mask) if c])
    assert "clone" in changed and "<|im_end|>" in changed
    assert "println" in copied and "String::from" in copied and "clone" not in copied
    assert copied_mask(toks, offset, min_run=10 ** 6) == [False] * len(reply)    # nothing copies a run that long


def test_copy_weight_weighs_copied_reply_tokens_and_nothing_else(tokenizer):
    from sleepy_tui.training.base import copied_mask
    ex = _repair_example(tokenizer)
    toks, offset = ex
    mask = copied_mask(toks, offset)
    batch = collate([ex], [0], pad_id=tokenizer.pad_token_id, copied=[mask], copy_weight=0.1)
    w, changed = batch["weights"][0].tolist(), batch["changed"][0].tolist()
    assert w[:offset] == [0.0] * offset and not any(changed[:offset])
    assert w[offset:] == pytest.approx([0.1 if c else 1.0 for c in mask])
    assert changed[offset:] == [not c for c in mask]
    plain = collate([ex], [0], pad_id=tokenizer.pad_token_id)
    assert plain["weights"][0].tolist()[offset:] == [1.0] * (len(toks) - offset)


def test_a_run_with_copied_tokens_down_weighted_learns_otherwise_and_logs_the_changed_loss(tiny, unbroken, tmp_path):
    out, whole, _, _ = unbroken
    focused = _train(tiny, tmp_path / "focused", steps=3, checkpoint_every=0, copy_weight=0.0)
    plain = _train(tiny, tmp_path / "plain", steps=3, checkpoint_every=0)
    log = [json.loads(line) for line in (tmp_path / "focused" / "loss.jsonl").read_text().splitlines()]
    assert all(r["changed_tokens"] > 0 and r["changed_loss"] > 0 for r in log)
    # the first step's loss is the plain mean before any update: the same; the updates then differ
    assert focused.losses[0] == pytest.approx(plain.losses[0], rel=1e-6)
    assert focused.losses[1:] != pytest.approx(plain.losses[1:], rel=1e-4)
    assert plain.losses[0] == pytest.approx(whole.losses[0], rel=1e-6)


def test_length_grouped_batches_waste_little_on_padding(tokenizer):
    import random
    lengths = [len(encode_example(tokenizer, r["messages"])[0]) for r in varied_rows(48)]
    assert max(lengths) > 5 * min(lengths)
    plan = BatchPlan(lengths, batch_size=4, seed=0)
    assert plan.padding_share() < 0.10
    # every example once an epoch, a different order each epoch, the same order for the same seed
    for e in range(3):
        assert sorted(i for b in plan.epoch(e) for i in b) == list(range(48))
    assert plan.epoch(0) != plan.epoch(1)
    assert [BatchPlan(lengths, 4, seed=0).batch(g) for g in range(30)] == [plan.batch(g) for g in range(30)]
    assert [BatchPlan(lengths, 4, seed=1).batch(g) for g in range(12)] != [plan.batch(g) for g in range(12)]
    # batches in arrival order would pad far more
    order = list(range(48))
    random.Random(0).shuffle(order)
    useful = sum(lengths)
    processed = sum(max(lengths[i] for i in order[j:j + 4]) * 4 for j in range(0, 48, 4))
    assert 1 - useful / processed > 0.25


def test_lr_schedule_warms_up_then_decays():
    f = lr_factor(TrainConfig(steps=20, warmup_steps=4, lr_schedule="cosine"))
    warm = [f(s) for s in range(4)]
    assert warm == sorted(warm) and 0 < warm[0] < warm[-1] < 1
    assert f(4) == pytest.approx(1.0)
    decay = [f(s) for s in range(4, 20)]
    assert decay == sorted(decay, reverse=True) and decay[-1] < 0.05
    assert lr_factor(TrainConfig(steps=10, warmup_steps=0, lr_schedule="constant"))(9) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(TrainConfig(lr_schedule="step"))


# ---- one unbroken run ------------------------------------------------------------------------------------------------

def test_loss_falls(unbroken):
    _, result, _, _ = unbroken
    losses = result.losses
    assert len(losses) == STEPS and result.steps == STEPS and not result.stopped
    assert sum(losses[:5]) / 5 > sum(losses[-5:]) / 5 + 1.0


def test_events_and_run_folder(unbroken):
    out, result, events, _ = unbroken
    kinds = [e.kind for e in events]
    assert kinds[0] == "Notice" and "loading the base model" in events[0].message   # said before the load
    assert kinds[1] == "TrainStarted" and kinds[-1] == "TrainDone"
    steps = [e for e in events if isinstance(e, ev.TrainStep)]
    assert [e.step for e in steps] == list(range(1, STEPS + 1))
    assert all(e.tokens_per_s > 0 and e.eta_s >= 0 for e in steps) and steps[-1].eta_s == 0
    assert steps[0].learning_rate < steps[2].learning_rate          # warmup
    assert steps[-1].learning_rate < steps[2].learning_rate         # cosine decay
    assert [e.step for e in events if isinstance(e, ev.CheckpointSaved)] == [10, 20, 30]
    done = events[-1]
    assert done.adapter_dir == str(out / "adapter") and done.final_loss == result.losses[-1]
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in log] == pytest.approx(result.losses)
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["trainer"] == "torch" and cfg["steps"] == STEPS and cfg["examples"] == 8
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["steps"] == STEPS and 0 <= stats["padding_share"] < 0.10 and stats["peak_rss_mib"] > 0
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_final_adapter_loads_with_peft(unbroken, tiny):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    out = unbroken[0]
    base = AutoModelForCausalLM.from_pretrained(tiny[0])
    x = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = base(x).logits
        tuned = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
        after = tuned(x).logits
    assert not torch.allclose(before, after)


def test_checkpoints_rotate(unbroken):
    import torch
    out = unbroken[0]
    assert [s for s, _ in checkpoints(out)] == [20, 30]              # the last two
    assert not list((out / "checkpoints").glob(".tmp-*")) and not list(out.glob(".tmp-*"))
    folder = checkpoints(out)[-1][1]
    assert {"adapter_config.json", "adapter_model.safetensors", STATE_FILE} <= {p.name for p in folder.iterdir()}
    state = torch.load(folder / STATE_FILE, weights_only=True)
    assert state["step"] == 30 and state["config"]["steps"] == STEPS
    assert {"optimizer", "scheduler", "rng", "data_order", "dataset_sha256", "log"} <= set(state)
    assert {"torch", "python", "numpy"} <= set(state["rng"][0])
    _assert_same_weights(_adapter_weights(folder), _adapter_weights(out / "adapter"))


def test_resuming_a_finished_run_trains_nothing(unbroken, tiny):
    out, result, _, _ = unbroken
    events: list = []
    again = _train(tiny, out, events=events)
    assert again.steps == STEPS and again.losses == pytest.approx(result.losses)
    assert not [e for e in events if isinstance(e, ev.TrainStep)]


# ---- stop, crash, resume ---------------------------------------------------------------------------------------------

def test_stop_crash_and_resume_end_like_an_unbroken_run(tiny, unbroken, tmp_path):
    out = tmp_path / "run"
    stop = threading.Event()

    def stop_at_7(e):
        if isinstance(e, ev.TrainStep) and e.step == 7:
            stop.set()

    events: list = []
    first = _train(tiny, out, events=events, stop=stop, resume=False, hook=stop_at_7)
    assert first.stopped and first.steps == 7                        # within one step of the request
    assert first.adapter_dir == out / "checkpoints" / "step-000007"
    assert events[-1] == ev.TrainDone(adapter_dir=str(first.adapter_dir), steps=7, initial_loss=first.losses[0],
                                      final_loss=first.losses[-1], stopped=True)
    assert [s for s, _ in checkpoints(out)] == [7]

    def crash_at_13(e):
        if isinstance(e, ev.TrainStep) and e.step == 13:
            raise Crash("power cut")

    events = []
    with pytest.raises(Crash):
        _train(tiny, out, events=events, hook=crash_at_13)
    started = next(e for e in events if not isinstance(e, ev.Notice))
    assert isinstance(started, ev.TrainStarted) and started.load_s > 0
    assert (started.run_dir, started.total_steps, started.examples, started.resumed_from) == (str(out), STEPS, 8, 7)
    assert isinstance(events[-1], ev.TrainError) and "power cut" in events[-1].message
    assert [s for s, _ in checkpoints(out)] == [7, 10]

    events = []
    last = _train(tiny, out, events=events)                          # resumes from step 10
    started = next(e for e in events if isinstance(e, ev.TrainStarted))
    assert started.resumed_from == 10 and not last.stopped and last.steps == STEPS
    assert last.losses == pytest.approx(unbroken[1].losses, rel=1e-5)
    _assert_same_weights(_adapter_weights(out / "adapter"), _adapter_weights(unbroken[0] / "adapter"))
    log = [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert log == list(range(1, STEPS + 1))


# ---- precision ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_each_precision_resumes_exactly(tiny, tmp_path, precision):
    """Both compute dtypes, chosen explicitly (auto depends on the CPU): a stopped run resumed ends with the
    weights of an unbroken one, and the trained weights and optimizer state stay float32."""
    import torch
    kw = dict(steps=8, checkpoint_every=0, precision=precision)
    whole = _train(tiny, tmp_path / "whole", resume=False, **kw)
    stop = threading.Event()

    def stop_at_3(e):
        if isinstance(e, ev.TrainStep) and e.step == 3:
            stop.set()

    out = tmp_path / "run"
    assert _train(tiny, out, stop=stop, resume=False, hook=stop_at_3, **kw).steps == 3
    last = _train(tiny, out, **kw)
    assert last.losses == pytest.approx(whole.losses, rel=1e-5)
    weights = _adapter_weights(out / "adapter")
    _assert_same_weights(weights, _adapter_weights(tmp_path / "whole" / "adapter"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    state = torch.load(checkpoints(out)[-1][1] / STATE_FILE, weights_only=True)
    assert {t.dtype for s in state["optimizer"]["state"].values() for t in s.values() if t.dim()} == {torch.float32}
    assert json.loads((out / "train_config.json").read_text())["compute_dtype"] == precision


def test_bfloat16_learns_like_float32(tiny, tmp_path):
    """The same run in both dtypes: the loss curves stay close (bf16 rounds the frozen weights and activations,
    not the LoRA update)."""
    kw = dict(steps=12, checkpoint_every=0, lora_dropout=0.0)
    fp32 = _train(tiny, tmp_path / "fp32", resume=False, precision="float32", **kw).losses
    bf16 = _train(tiny, tmp_path / "bf16", resume=False, precision="bfloat16", **kw).losses
    assert bf16 == pytest.approx(fp32, rel=0.05)
    assert bf16[-1] < bf16[0] - 1.0


def test_auto_precision_follows_the_hardware(monkeypatch):
    from sleepy_tui import devices
    from sleepy_tui.training.torch_trainer import pick_precision
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert pick_precision("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "fma"})
    assert pick_precision("auto", "cpu") == "float32"
    assert pick_precision("bfloat16", "cpu") == "bfloat16" and pick_precision("float32", "cpu") == "float32"
    assert pick_precision("auto", "mps") == "float32"
    with pytest.raises(ValueError, match="precision"):
        pick_precision("fp8", "cpu")


def test_stop_between_micro_batches_undoes_the_step(tiny, tmp_path, monkeypatch):
    """With grad_accum, a stop arriving mid-step ends the run at the last whole step; resuming repeats the
    interrupted step exactly."""
    from sleepy_tui.training import torch_trainer
    kw = dict(steps=8, grad_accum=2, batch_size=2, checkpoint_every=0)   # on a CPU: 4 forward calls a step
    whole = _train(tiny, tmp_path / "whole", resume=False, **kw)

    stop = threading.Event()
    calls = {"n": 0}
    real = torch_trainer._reply_loss_module

    def counting(peft_model):
        module = real(peft_model)
        forward = module.forward

        def counted(*a, **k):
            calls["n"] += 1
            if calls["n"] == 4 * 5 + 1:        # the first micro-batch of step 6
                stop.set()
            return forward(*a, **k)

        module.forward = counted
        return module

    monkeypatch.setattr(torch_trainer, "_reply_loss_module", counting)
    out = tmp_path / "run"
    first = _train(tiny, out, stop=stop, resume=False, **kw)
    assert first.stopped and first.steps == 5 and [s for s, _ in checkpoints(out)] == [5]
    monkeypatch.setattr(torch_trainer, "_reply_loss_module", real)
    last = _train(tiny, out, **kw)
    assert last.losses == pytest.approx(whole.losses, rel=1e-5)
    _assert_same_weights(_adapter_weights(out / "adapter"), _adapter_weights(tmp_path / "whole" / "adapter"))


def test_resume_refuses_a_changed_setup(tiny, unbroken, tmp_path):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(unbroken[0], out)
    events: list = []
    with pytest.raises(ValueError, match="learning_rate"):
        _train(tiny, out, events=events, learning_rate=1e-3)
    assert isinstance(events[-1], ev.TrainError) and "can't resume" in events[-1].message
    # the checkpoint-free fields may change
    again = _train(tiny, out, checkpoint_every=7)
    assert again.steps == STEPS


def test_errors_are_reported_then_raised(tiny, tmp_path):
    events: list = []
    with pytest.raises(ValueError, match="not found in the model"):
        _train(tiny, tmp_path / "run", events=events, target_modules=("qkv_proj",))
    assert isinstance(events[-1], ev.TrainError) and "q_proj" in events[-1].message   # names what there is
    events = []
    with pytest.raises(ValueError):
        _train(tiny, tmp_path / "run2", events=events, max_seq_len=8)                    # prompts fill it
    assert isinstance(events[-1], ev.TrainError) and "max_seq_len" in events[-1].message


# ---- slow: the real base, and two processes --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """Shared by the slow tests of both modules: the embedded GGUF is converted once a session (30-60 s), or
    once for good with $SLEEPY_CACHE_DIR set."""
    env = os.environ.get("SLEEPY_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.getbasetemp() / "sleepy-model-cache"


@pytest.mark.slow
def test_real_smollm2_trains_and_exports(real_cache, tmp_path):
    """A few steps on the embedded SmolLM2-135M (de-quantized from its GGUF), then the GGUF export loads in
    llama.cpp next to the same GGUF."""
    from sleepy_tui.training.gguf_export import export_gguf_lora
    data = write_dataset(tmp_path / "train.jsonl")
    cfg = TrainConfig(steps=3, batch_size=2, max_seq_len=256, learning_rate=1e-3, warmup_steps=1, checkpoint_every=2,
                      precision="bfloat16")
    events: list = []
    result = TorchTrainer(cache_dir=real_cache).train(data, cfg, tmp_path / "run", on_event=events.append,
                                                       resume=False)
    assert result.steps == 3 and all(0 < x < 20 for x in result.losses)
    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    assert stats["compute_dtype"] == "bfloat16"
    print(f"\nSmolLM2-135M, CPU: {stats['tokens_per_s']:.0f} tokens/s, padding {stats['padding_share']:.1%}, "
          f"peak RSS {stats['peak_rss_mib']:.0f} MiB")
    gguf = export_gguf_lora(result.adapter_dir, tmp_path / "adapter.gguf")
    pytest.importorskip("llama_cpp")
    from sleepy_tui.backends.embedded import new_llama
    from sleepy_tui.training.base_model import embedded_gguf_path
    llm = new_llama(model_path=str(embedded_gguf_path()), lora_path=str(gguf), n_ctx=256, n_threads=1,
                          verbose=False)
    assert llm.create_completion("fn main() {", max_tokens=4, temperature=0)["choices"][0]["text"] is not None


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tiny, tmp_path):
    """Runnable unchanged under `accelerate launch`: two CPU processes (gloo) split the batches; rank 0 writes.

    (`--multi_gpu` is what makes accelerate start local processes; without a GPU they run on the CPU.
    `accelerate launch --cpu` starts one process.)"""
    pytest.importorskip("accelerate")
    model, data = tiny
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "sleepy_tui.training.torch_trainer", str(data), str(out), "--base-model", str(model),
           "--steps", "6", "--batch-size", "2", "--checkpoint-every", "3", "--learning-rate", "0.02"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kinds = [e["kind"] for e in lines]
    assert kinds.count("TrainStep") == 6 and kinds[-1] == "TrainDone"   # events from rank 0 only
    assert json.loads((out / "train_config.json").read_text())["world_size"] == 2
    # 6 steps x 2 processes x 2 examples = 3 epochs of the 8 examples: each example seen 3 times, so the
    # processes took different batches
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    total = sum(len(encode_example(tok, r["messages"])[0]) for r in chat_rows())
    assert json.loads((out / "train_stats.json").read_text())["useful_tokens"] == 3 * total
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert [s for s, _ in checkpoints(out)] == [3, 6]


def test_lora_on_the_last_layers_only(tiny, tmp_path):
    """lora_layers=1 on the 2-layer model: adapter weights for layer 1 alone, and the loss still falls."""
    result = _train(tiny, tmp_path / "run", resume=False, steps=12, checkpoint_every=0, lora_layers=1)
    names = _adapter_weights(result.adapter_dir).keys()
    assert names and all(".layers.1." in n for n in names), sorted(names)
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
