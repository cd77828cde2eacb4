"""Training: useful (non-padding) tokens/s and peak memory of the torch trainer against a minimal hand-written
peft loop on the same model, data, sequence length and batch size; the share of processed tokens that are
padding; and the MLX trainer against the `mlx_lm.lora` command on the same data.

Each contender runs in its own process so that peak RSS is its own.
usage: python bench/bench_training.py [--quick] [--steps N] [--batch B] [--skip-mlx]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, record, table


def dataset(path: Path, n: int) -> Path:
    """Reference fixes of training koans in the agent's prompt format: realistic lengths, varied."""
    from sleepy_tui.koans import load_corpus
    from sleepy_tui.training.dataset import reference_examples
    rows = reference_examples(load_corpus())[:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_ours(data: Path, steps: int, batch: int, seq: int, out: Path, threads: int) -> dict:
    from sleepy_tui.events import TrainStep
    from sleepy_tui.training.base import TrainConfig
    from sleepy_tui.training.torch_trainer import TorchTrainer
    tokens = []
    cfg = TrainConfig(steps=steps, batch_size=batch, max_seq_len=seq, checkpoint_every=10**9, warmup_steps=1)
    t0 = time.perf_counter()
    res = TorchTrainer(threads=threads).train(
        data, cfg, out, on_event=lambda e: tokens.append(e) if isinstance(e, TrainStep) else None, resume=False)
    wall = time.perf_counter() - t0
    stats = json.loads((out / "train_stats.json").read_text()) if (out / "train_stats.json").exists() else {}
    return {"wall": wall, "losses": res.losses, **stats}


def run_baseline(data: Path, steps: int, batch: int, seq: int, threads: int) -> dict:
    """The loop a user would write first: peft on the same base, examples in file order, padded per batch."""
    import torch
    torch.set_num_threads(threads)
    from peft import LoraConfig, get_peft_model
    from sleepy_tui.training.base import read_dataset
    from sleepy_tui.training.base_model import load_base
    torch.manual_seed(0)
    model, tok = load_base("")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    rows = read_dataset(data)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    useful = processed = 0
    t0 = time.perf_counter()
    for step in range(steps):
        chunk = [rows[(step * batch + i) % len(rows)] for i in range(batch)]
        ids, labels = [], []
        for r in chunk:
            prompt = tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=True)
            full = tok.apply_chat_template(r["messages"], tokenize=True)
            if hasattr(prompt, "input_ids"):
                prompt, full = prompt["input_ids"], full["input_ids"]
            full = list(full)[:seq]
            ids.append(full)
            labels.append([-100] * min(len(prompt), len(full)) + full[len(prompt):])
        width = max(map(len, ids))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        x = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
        y = torch.tensor([l + [-100] * (width - len(l)) for l in labels])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        useful += int(mask.sum())
        processed += x.numel()
    wall = time.perf_counter() - t0
    return {"wall": wall, "useful_tokens": useful, "processed_tokens": processed}


def child(args) -> int:
    data = Path(args.data)
    if args.child == "ours":
        with tempfile.TemporaryDirectory() as out:
            r = run_ours(data, args.steps, args.batch, args.seq, Path(out), args.threads)
    elif args.child == "baseline":
        r = run_baseline(data, args.steps, args.batch, args.seq, args.threads)
    elif args.child == "mlx-ours":
        from sleepy_tui.training.base import TrainConfig
        from sleepy_tui.training.mlx_trainer import MlxTrainer
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            MlxTrainer().train(data, TrainConfig(steps=args.steps, batch_size=args.batch, max_seq_len=args.seq,
                                                 checkpoint_every=10**9), Path(out), on_event=lambda e: None,
                               resume=False)
            r = {"wall": time.perf_counter() - t0}
    else:  # mlx-cli: the mlx_lm.lora command on the same examples
        from sleepy_tui.backends.embedded import embedded_hf_dir
        with tempfile.TemporaryDirectory() as d:
            rows = [json.loads(l) for l in data.read_text().splitlines()]
            for name in ("train", "valid"):
                Path(d, f"{name}.jsonl").write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mlx_lm", "lora", "--model", str(embedded_hf_dir()), "--train",
                            "--data", d, "--iters", str(args.steps), "--batch-size", str(args.batch),
                            "--max-seq-length", str(args.seq), "--mask-prompt", "--adapter-path", str(Path(d, "a")),
                            "--steps-per-report", "1", "--val-batches", "0", "--save-every", "100000"],
                           check=True, capture_output=True)
            r = {"wall": time.perf_counter() - t0}
    # mlx-cli trains in a child process of its own: its peak is that child's
    who = resource.RUSAGE_CHILDREN if args.child == "mlx-cli" else resource.RUSAGE_SELF
    peak_kib = max(resource.getrusage(who).ru_maxrss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    r["peak_rss_mib"] = peak_kib / 1024
    print("RESULT " + json.dumps(r))
    return 0


def spawn(which: str, data: Path, steps: int, batch: int, seq: int, threads: int = 1) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", which, "--data", str(data), "--steps", str(steps),
                          "--batch", str(batch), "--seq", str(seq), "--threads", str(threads)],
                         capture_output=True, text=True, cwd=ROOT / "bench")
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--skip-mlx", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for both (0: the trainer's default)")
    ap.add_argument("--child")
    ap.add_argument("--data")
    args = ap.parse_args()
    if args.child:
        return child(args)
    steps, batch = (2, 2) if args.quick else (args.steps, args.batch)
    if not args.threads:
        from sleepy_tui.training.torch_trainer import default_threads
        args.threads = default_threads()
    with tempfile.TemporaryDirectory() as d:
        data = dataset(Path(d, "data.jsonl"), 16 if args.quick else 64)
        ours = spawn("ours", data, steps, batch, args.seq, args.threads)
        base = spawn("baseline", data, steps, batch, args.seq, args.threads)
        mlx_rows = []
        if not args.skip_mlx:
            m_steps = 2 if args.quick else 5
            try:
                mo = spawn("mlx-ours", data, m_steps, 1, 512)
                mc = spawn("mlx-cli", data, m_steps, 1, 512)
                mlx_rows = [["MlxTrainer", m_steps, f"{mo['wall']:.1f}", f"{mo['peak_rss_mib']:.0f}",
                             f"{mc['wall'] / mo['wall']:.2f}x"],
                            ["mlx_lm.lora command", m_steps, f"{mc['wall']:.1f}", f"{mc['peak_rss_mib']:.0f}", "1.00x"]]
            except RuntimeError as e:
                mlx_rows = [["MlxTrainer vs mlx_lm.lora", "-", "-", "-", f"failed: {str(e).splitlines()[0]}"]]
    o_tps = ours["useful_tokens"] / ours["train_s"] if "train_s" in ours else ours["useful_tokens"] / ours["wall"]
    b_tps = base["useful_tokens"] / base["wall"]
    o_pad = 1 - ours["useful_tokens"] / ours["processed_tokens"]
    b_pad = 1 - base["useful_tokens"] / base["processed_tokens"]
    rows = [["TorchTrainer (length-bucketed)", f"{o_tps:.0f}", f"{o_tps / b_tps:.2f}x", f"{ours['peak_rss_mib']:.0f}",
             f"{ours['peak_rss_mib'] / base['peak_rss_mib']:.2f}x", f"{o_pad:.1%}"],
            ["hand-written peft loop", f"{b_tps:.0f}", "1.00x", f"{base['peak_rss_mib']:.0f}", "1.00x", f"{b_pad:.1%}"]]
    body = (f"SmolLM2-135M (embedded GGUF, de-quantized to fp32), LoRA r=8 on q/k/v/o, {steps} steps, batch {batch}, "
            f"max length {args.seq}, CPU, {args.threads} torch thread(s) each.\n\n"
            + table(["trainer", "useful tok/s", "throughput", "peak RSS MiB", "memory", "padding share"], rows)
            + "\n\nGoals: throughput at least 1.0x, memory at most 1.1x, padding under 10%.\n")
    if mlx_rows:
        body += "\n" + table(["MLX", "steps", "seconds", "peak RSS MiB", "speed vs command"], mlx_rows) + "\n"
    record("Training (LoRA)", " ".join(["python", "bench/bench_training.py"] + sys.argv[1:]), body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
