"""Training speed against the machine's own limit, and against the trainer as it was.

Contenders, each in its own process (peak RSS is its own), on the same dataset, steps, batch size and seed, so
they see the same examples in the same order:
  before   the float32 torch trainer of commit --before (read from git), length-grouped padded batches
  fp32     today's TorchTrainer with precision float32 (isolates what the batching change gives)
  now      today's TorchTrainer with its default precision (auto: bfloat16 where the CPU has native bf16)
mlx      (Apple silicon only) the MLX trainer against the `mlx_lm.lora` command

For each: useful (non-padding) tokens/s over the steady steps (the first, warm-up step left out; it is shown
separately), seconds a step, peak RSS, padding share, the loss of every step, and model-FLOPs utilization:
the FLOPs the steps need (forward, and backward to the inputs of the frozen layers and to the LoRA weights,
attention causal) divided by the dense matmul peak this script measures here, in the dtype the contender
computes in, with the same threads.

usage: python bench/bench_training.py [--model NAME] [--steps N] [--threads N] [--before REV] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, record, table

BEFORE = "6ef60dc"      # the last commit with the float32-only trainer


def dataset(path: Path, n: int) -> Path:
    """Reference fixes of training koans in the agent's prompt format: realistic lengths, varied."""
    from sleepy_tui.koans import load_corpus
    from sleepy_tui.training.dataset import reference_examples
    rows = reference_examples(load_corpus())[:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trainer_before(rev: str, folder: Path):
    """TorchTrainer as it was at `rev`, imported from its source in git."""
    src = subprocess.run(["git", "show", f"{rev}:sleepy_tui/training/torch_trainer.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    path = folder / "torch_trainer_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("sleepy_tui.training._torch_trainer_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.TorchTrainer


# ---- the machine's limit ---------------------------------------------------------------------------------------------

def matmul_peak(threads: int, dims: list[tuple[int, int, int]]) -> dict:
    """GFLOP/s of torch.mm in float32 and bfloat16: the best over `dims` (m, k, n), each timed a few times."""
    import torch
    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        best = 0.0
        for m, k, n in dims:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            for _ in range(2):
                a @ b
            reps = max(2, int(2e10 / (2 * m * k * n)))
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
        out[name] = best
    return out


# ---- what a step needs ----------------------------------------------------------------------------------------------

def step_flops(cfg: dict, lengths: list[tuple[int, int]], rank: int, targets: list[str]) -> float:
    """FLOPs of one LoRA step over examples of (tokens, reply offset): forward; backward to the inputs of every
    layer (the frozen weights need no gradient of their own) and to the LoRA weights; attention causal; the
    output layer on reply positions only. Embedding lookups and element-wise work count as zero."""
    d, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    shapes = {"q_proj": (d, heads * hd), "k_proj": (d, kv * hd), "v_proj": (d, kv * hd), "o_proj": (heads * hd, d),
              "gate_proj": (d, inter), "up_proj": (d, inter), "down_proj": (inter, d)}
    linear = sum(i * o for i, o in shapes.values())                 # weights of one block
    lora = sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets if t in shapes)
    total = 0.0
    for tokens, offset in lengths:
        replies = tokens - max(offset, 1)
        total += layers * tokens * (2 * linear + 2 * linear)        # forward + input gradients
        total += layers * tokens * 6 * lora                          # LoRA: forward, input and weight gradients
        total += layers * 3 * 2 * tokens * tokens * heads * hd       # QK^T and AV, causal: fwd 1x, bwd 2x
        total += replies * 4 * d * cfg["vocab_size"]                 # output layer: forward + input gradient
    return total


def plan_lengths(data: Path, model: str, steps: int, batch: int, seq: int, seed: int = 0) -> tuple[dict, list]:
    """The model's config and, per step, the (tokens, offset) of the examples the trainers take (BatchPlan)."""
    from transformers import AutoConfig, AutoTokenizer

    from sleepy_tui.training.base import encode_example, read_dataset
    from sleepy_tui.training.base_model import resolve_base
    from sleepy_tui.training.torch_trainer import BatchPlan
    base = resolve_base(model)
    tok = AutoTokenizer.from_pretrained(base)
    cfg = AutoConfig.from_pretrained(base).to_dict()
    ex = []
    for row in read_dataset(data):
        toks, offset = encode_example(tok, row["messages"])
        toks = toks[:seq]
        if offset < len(toks):
            ex.append((len(toks), offset))
    plan = BatchPlan([t for t, _ in ex], batch, seed)
    return cfg, [[ex[i] for i in plan.batch(s)] for s in range(steps)]


# ---- contenders (child processes) -----------------------------------------------------------------------------------

def child(args) -> int:
    from sleepy_tui.events import TrainStep
    from sleepy_tui.training.base import TrainConfig
    from sleepy_tui.training.torch_trainer import TorchTrainer
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as d:
        cls = trainer_before(args.before, Path(d)) if args.child == "before" else TorchTrainer
        precision = {"before": "float32", "fp32": "float32", "now": "auto"}[args.child]
        cfg = TrainConfig(base_model=args.model, steps=args.steps, batch_size=args.batch, max_seq_len=args.seq,
                          checkpoint_every=10**9, warmup_steps=1, precision=precision)
        steps: list[dict] = []

        def on_event(e) -> None:
            if isinstance(e, TrainStep):
                steps.append({"seconds": e.seconds, "loss": e.loss})

        t0 = time.perf_counter()
        res = cls(threads=args.threads).train(data, cfg, Path(d, "run"), on_event=on_event, resume=False)
        wall = time.perf_counter() - t0
        run = Path(d, "run")
        stats = json.loads((run / "train_stats.json").read_text())
        log = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
        tcfg = json.loads((run / "train_config.json").read_text())
    # the before-trainer's TrainStep has no `seconds`: take them from tokens and tokens/s
    seconds = [s["seconds"] for s in steps] if all(s["seconds"] for s in steps) else None
    r = {"wall": wall, "losses": res.losses, "stats": stats, "seconds": seconds,
         "tokens_per_s": [x["tokens_per_s"] for x in log], "dtype": tcfg.get("compute_dtype", "float32"),
         "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("RESULT " + json.dumps(r))
    return 0


def spawn(which: str, args, data: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--data", str(data), "--steps", str(args.steps), "--batch",
           str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads), "--model", args.model,
           "--before", args.before]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT / "bench")
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[7:])


def step_seconds(r: dict, per_step_useful: list[int]) -> list[float]:
    if r["seconds"]:
        return r["seconds"]
    return [u / t if t else 0.0 for u, t in zip(per_step_useful, r["tokens_per_s"])]


def loss_png(results: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for name, r in results.items():
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("reply loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="SmolLM2, 2 steps of short examples: a smoke test, not recorded")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a model of the table, a GGUF or HF folder")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for every contender (0: all CPUs)")
    ap.add_argument("--before", default=BEFORE, help="the commit whose trainer is the baseline")
    ap.add_argument("--only", nargs="+", default=["before", "fp32", "now"])
    ap.add_argument("--png", default=str(ROOT / "bench" / "training_loss.png"))
    ap.add_argument("--child")
    ap.add_argument("--data")
    ap.add_argument("--skip-mlx", action="store_true", help="(kept for old command lines; mlx is not run here)")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.model, args.steps, args.batch, args.only = "", 2, 2, ["before", "now"]
        args.seq = min(args.seq, 384)       # a smoke test: short examples (trimmed) keep it under a minute
    if not args.threads:
        from sleepy_tui.training.torch_trainer import default_threads
        args.threads = default_threads()
    with tempfile.TemporaryDirectory() as d:
        data = dataset(Path(d, "data.jsonl"), 16 if args.quick else 40)
        cfg, per_step = plan_lengths(data, args.model, args.steps, args.batch, args.seq)
        flops = [step_flops(cfg, ex, 8, ["q_proj", "k_proj", "v_proj", "o_proj"]) for ex in per_step]
        useful = [sum(t for t, _ in ex) for ex in per_step]
        d_, inter = cfg["hidden_size"], cfg["intermediate_size"]
        mean_len = sum(useful) / max(1, sum(len(ex) for ex in per_step))
        peak = matmul_peak(args.threads, [(2048, 2048, 2048), (int(mean_len), d_, inter), (int(mean_len), inter, d_)])
        results = {name: spawn(name, args, data) for name in args.only}
    rows, curves = [], []
    base = results.get("before") or next(iter(results.values()))
    base_steady = None
    for name, r in results.items():
        secs = step_seconds(r, useful)
        steady = list(range(1, len(secs))) or [0]
        tps = sum(useful[i] for i in steady) / sum(secs[i] for i in steady)
        mfu = sum(flops[i] for i in steady) / sum(secs[i] for i in steady) / (peak[r["dtype"]] * 1e9)
        base_steady = base_steady or tps
        rows.append([name, r["dtype"], f"{tps:.0f}", f"{tps / base_steady:.2f}x",
                     f"{sum(secs[i] for i in steady) / len(steady):.1f}", f"{secs[0]:.1f}", f"{mfu:.0%}",
                     f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x",
                     f"{r['stats'].get('padding_share') or 0:.1%}", f"{r['wall']:.0f}"])
        curves.append([name] + [f"{x:.3f}" for x in r["losses"]])
    names = list(results)
    gaps = []
    if "before" in results:
        ref = results["before"]["losses"]
        for name in names[1:]:
            diff = [abs(a - b) / max(b, 1e-9) for a, b in zip(results[name]["losses"], ref)]
            gaps.append(f"{name} vs before: mean |loss difference| {sum(diff) / len(diff):.1%} of the loss")
    wrote = not args.quick and loss_png(results, Path(args.png))
    title = args.model or "SmolLM2-135M (embedded)"
    body = (f"{title}, LoRA r=8 on q/k/v/o, {args.steps} steps, batch {args.batch}, max length {args.seq}, "
            f"{sum(len(e) for e in per_step)} examples seen, CPU, {args.threads} torch threads each; "
            f"the same examples in the same order for every contender. Dense matmul peak measured here: "
            f"float32 {peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s. Steady = every step but "
            f"the first; MFU = FLOPs the steady steps need / their time / the peak in the contender's dtype.\n\n"
            + table(["trainer", "dtype", "useful tok/s", "vs before", "s/step", "first step s", "MFU", "peak RSS MiB",
                     "memory", "padding", "wall s"], rows)
            + "\n\nLoss per step:\n\n" + table(["trainer"] + [str(i + 1) for i in range(args.steps)], curves)
            + ("\n\n" + "; ".join(gaps) + "." if gaps else "")
            + (f"\n\n![loss curves]({Path(args.png).relative_to(ROOT)})" if wrote else "")
            + "\n\nGoals (issue 16): at least 4x the useful tokens/s of the float32 trainer, at least 50% MFU, peak "
              "memory at most 1.1x, padding under 10%, loss curves within noise.\n")
    record("Training (LoRA): speed against the machine's limit", " ".join(["python", "bench/bench_training.py"]
                                                                           + sys.argv[1:]), body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
