"""Does weighting the loss toward the fix teach more than the plain reply loss? (issue 16: the lesson's tokens)

Arms, each trained in its own process by the torch trainer on the same dataset, steps, batch size and seed:
  plain   --copy-weight 1: every reply token alike (the default)
  focus   --copy-weight W: the reply tokens that copy the prompt (training.base.copied_mask) weigh W, the fix 1

Data: the reference fixes of the training koans (train split; training.dataset.reference_examples, with the
buggy program's diagnostics in the prompt). Both arms are judged only on koans training never sees, and never
on the frozen set:
  held-out loss     the validation slice's reference fixes: mean cross-entropy on the changed reply tokens (the
                    fix) and on the copied ones, for the base and each arm
  validation rate   the validation slice run by llama.cpp with each arm's GGUF LoRA and with the base, one
                    greedy attempt a koan (`sleepy eval --validation`)

Every stage is kept under --work and reused when run again (a trained arm, a finished validation run).

usage: python bench/bench_loss_focus.py [--model NAME] [--steps N] [--weight W] [--threads N] [--arms A ..]
                                         [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, record, table


def write_data(work: Path, quick: bool) -> tuple[Path, Path]:
    """(train.jsonl, heldout.jsonl): the reference fixes of the train split and of the validation slice."""
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine
    from sleepy_tui.training.dataset import reference_examples
    train, held = work / "train.jsonl", work / "heldout.jsonl"
    if train.is_file() and held.is_file():
        return train, held
    engine = Engine(Settings(backend="fake", state_dir=str(work / "state-data")))
    try:
        corpus = engine.corpus()
        koans_train, koans_held = corpus.train_set, corpus.validation_set
        if quick:
            koans_train, koans_held = koans_train[:4], koans_held[:2]
        for path, koans in ((train, koans_train), (held, koans_held)):
            rows = reference_examples(corpus, koans, sandbox=engine.sandbox)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            tmp.replace(path)
    finally:
        engine.close()
    return train, held


def train_arm(args, data: Path, out: Path, weight: float) -> dict:
    """Train (or resume, or find finished) one arm; its wall time and loss log."""
    cmd = [sys.executable, "-m", "sleepy_tui.training.torch_trainer", str(data), str(out), "--base-model",
           args.model, "--steps", str(args.steps), "--copy-weight", str(weight), "--threads",
           str(args.train_threads or args.threads),
           "--checkpoint-every", str(max(1, args.steps // 3))]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0 or not (out / "adapter").is_dir():
        raise RuntimeError(f"training the {weight} arm failed:\n{r.stderr[-3000:]}")
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    return {"wall": time.perf_counter() - t0, "log": log}


def child_loss(args) -> int:
    """Held-out cross-entropy of the base (args.adapter "") or base + adapter: changed, copied and all tokens."""
    import torch
    import torch.nn.functional as F

    from sleepy_tui.devices import fast_bf16
    from sleepy_tui.training.base import copied_mask, encode_example, read_dataset
    from sleepy_tui.training.base_model import load_base
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dtype = torch.bfloat16 if fast_bf16("cpu") else torch.float32
    model, tok = load_base(args.model, device="cpu", dtype=dtype)
    if args.adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    sums = {"changed": [0.0, 0], "copied": [0.0, 0]}
    with torch.no_grad():
        for row in read_dataset(Path(args.data)):
            toks, offset = encode_example(tok, row["messages"])
            toks = toks[:1024]
            mask = copied_mask(toks, offset)
            logits = model(input_ids=torch.tensor([toks])).logits[0, offset - 1:len(toks) - 1].float()
            ce = F.cross_entropy(logits, torch.tensor(toks[offset:]), reduction="none")
            for c, v in zip(mask, ce.tolist()):
                part = sums["copied" if c else "changed"]
                part[0] += v
                part[1] += 1
    out = {k: (s / n if n else None) for k, (s, n) in sums.items()}
    out["changed_tokens"], out["copied_tokens"] = sums["changed"][1], sums["copied"][1]
    print("RESULT " + json.dumps(out))
    return 0


def heldout_loss(args, held: Path, adapter: Path | None, cache: Path) -> dict:
    if cache.is_file():
        return json.loads(cache.read_text())
    cmd = [sys.executable, __file__, "--child-loss", "--data", str(held), "--model", args.model, "--threads",
           str(args.threads), "--adapter", str(adapter or "")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT / "bench")
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"held-out loss failed:\n{r.stderr[-3000:]}")
    cache.write_text(line[7:])
    return json.loads(line[7:])


def validation_rate(args, work: Path, adapter: Path | None, name: str) -> dict:
    """The validation slice with the base or with one arm's adapter (exported to GGUF for llama.cpp)."""
    cache = work / f"validation-{name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine
    from sleepy_tui.models import resolve
    gguf = ""
    if adapter is not None:
        from sleepy_tui.training.gguf_export import export_gguf_lora
        gguf = str(export_gguf_lora(adapter, work / f"{name}.gguf", base_gguf=resolve(args.model).path))
    s = Settings(backend="embedded", model=args.model, adapter=gguf, threads=args.threads,
                 state_dir=str(work / f"state-{name}"))
    engine = Engine(s)
    try:
        run_id = engine.validation_run(None)
        m = engine.run_metrics(run_id)
        from sleepy_tui.metrics import koan_outcomes
        passed = sorted(k for k, o in koan_outcomes(engine.episodes(run_id)).items() if o.passed)
    finally:
        engine.close()
    out = {"passed": m.passed, "total": m.total, "rate": m.pass_rate, "koans": passed}
    cache.write_text(json.dumps(out))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="SmolLM2, 1 step, a few koans, no validation run: a "
                                                         "smoke test, not recorded")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a model of the table")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--weight", type=float, default=0.1, help="the focus arm's copy weight")
    ap.add_argument("--threads", type=int, default=1, help="threads of the held-out loss and validation runs")
    ap.add_argument("--train-threads", type=int, default=0, help="the trainer's threads (0: --threads)")
    ap.add_argument("--arms", nargs="+", default=["plain", "focus"], choices=["plain", "focus"],
                    help="which arms to train (default both)")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "sleepy-tui" / "bench" / "loss_focus"))
    ap.add_argument("--child-loss", action="store_true")
    ap.add_argument("--data")
    ap.add_argument("--adapter", default="")
    args = ap.parse_args()
    if args.child_loss:
        return child_loss(args)
    if args.quick:
        args.model, args.steps = "smollm2-135m", 1
        import tempfile
        args.work = tempfile.mkdtemp(prefix="bench_loss_focus_")
    work = Path(args.work) / f"{args.model}-{args.steps}"
    work.mkdir(parents=True, exist_ok=True)
    train, held = write_data(work, args.quick)
    arms = {name: w for name, w in (("plain", 1.0), ("focus", args.weight)) if name in args.arms}
    results: dict = {}
    base_loss = heldout_loss(args, held, None, work / "heldout-base.json")
    base_val = None if args.quick else validation_rate(args, work, None, "base")
    for name, weight in arms.items():
        out = work / name
        tr = train_arm(args, train, out, weight)
        results[name] = {"weight": weight, "train": tr,
                         "held": heldout_loss(args, held, out / "adapter", work / f"heldout-{name}.json"),
                         "val": None if args.quick else validation_rate(args, work, out / "adapter", name)}
        print(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k != 'train'})}", flush=True)

    def f(x) -> str:
        return "-" if x is None else f"{x:.3f}"

    def val(v) -> str:
        return "-" if v is None else f"{v['passed']}/{v['total']} ({v['rate']:.0%})"
    rows = [["base", "-", "-", "-", "-", f(base_loss["changed"]), f(base_loss["copied"]), val(base_val)]]
    for name, r in results.items():
        log = r["train"]["log"]
        rows.append([name, f"{r['weight']:g}", f"{sum(x['seconds'] for x in log if 'seconds' in x) or r['train']['wall']:.0f}",
                     f"{f(log[0]['loss'])} -> {f(log[-1]['loss'])}",
                     f"{f(log[0].get('changed_loss'))} -> {f(log[-1].get('changed_loss'))}",
                     f(r["held"]["changed"]), f(r["held"]["copied"]), val(r["val"])])
    n_train = sum(1 for _ in open(train))
    n_held = sum(1 for _ in open(held))
    body = (f"{args.model}, LoRA r=8 on q/k/v/o, {args.steps} steps, batch 4, {args.train_threads or args.threads} "
            f"training thread(s); trained on "
            f"the reference fixes of {n_train} training koans, judged on the {n_held} koans of the validation "
            f"slice (never trained on; the frozen set plays no part). Held-out loss: mean cross-entropy per reply "
            f"token of the slice's reference fixes, on the tokens of the fix (changed: "
            f"{base_loss['changed_tokens']} tokens) and on those that copy the broken program (copied: "
            f"{base_loss['copied_tokens']}). Validation: one greedy attempt a koan in llama.cpp with the arm's GGUF "
            f"LoRA.\n\n"
            + table(["arm", "copy weight", "train s", "train loss first -> last", "train changed loss",
                     "held-out changed", "held-out copied", "validation passed"], rows))
    if not args.quick:
        for name, r in results.items():
            body += f"\n\n{name} passed: {', '.join(r['val']['koans']) or 'none'}"
        body += f"\n\nbase passed: {', '.join(base_val['koans']) or 'none'}"
    cmd = f"python bench/bench_loss_focus.py --model {args.model} --steps {args.steps} --weight {args.weight:g} " \
          f"--threads {args.threads}" + (f" --train-threads {args.train_threads}" if args.train_threads else "") \
        + (f" --arms {' '.join(args.arms)}" if len(args.arms) < 2 else "")
    record("Training: loss focus on the fix (copy weight)", cmd, body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
