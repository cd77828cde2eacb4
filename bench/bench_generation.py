"""Generation: tokens/s of each local backend on the same prompt and length.

The model through llama.cpp is the baseline; the same GGUF through transformers (and, for SmolLM2, mlx-lm on the
CPU) is measured against it. Model loading is excluded (each backend is warmed once).
With --models: llama.cpp's speed on each model of the table that is on this machine, on 1 and 2 threads.
usage: python bench/bench_generation.py [--quick] [--tokens N] [--runs R] [--models] [--model NAME] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from common import record, table

from sleepy_tui.backends.base import BackendUnavailable, GenOptions
from sleepy_tui.koans import load_corpus
from sleepy_tui.prompts import build_messages


def backends(model: str = "", threads: int = 0, mlx: bool = True):
    """(label, factory): the same GGUF through llama.cpp, through transformers (de-quantized from it) and, for
    the shipped SmolLM2, through mlx-lm."""
    from sleepy_tui.backends.embedded import EmbeddedBackend, embedded_hf_dir
    yield "embedded (llama.cpp)", lambda: EmbeddedBackend(model=model, engine="llama.cpp", n_threads=threads)

    def transformers():
        if threads:
            import torch
            torch.set_num_threads(threads)
        return EmbeddedBackend(model=model, engine="transformers")
    yield "embedded (transformers)", transformers

    def mlx_lm():
        from sleepy_tui.backends.mlx_backend import MlxBackend
        return MlxBackend(model=str(embedded_hf_dir()))
    if mlx:
        yield "mlx-lm (CPU)", mlx_lm


def table_models(threads: tuple[int, ...]):
    """(label, factory) for each table model that is here and verifies, on each thread count."""
    from sleepy_tui import models
    from sleepy_tui.backends.embedded import EmbeddedBackend
    for spec in models.table().models:
        st = models.status(spec)
        for n in threads:
            label = f"{spec.name} ({st.size / 1e6:,.0f} MB), {n} thread{'s' if n > 1 else ''}"
            if not st.ready:
                yield label, None, st.problem
                continue
            yield label, (lambda name=spec.name, n=n: EmbeddedBackend(model=name, n_threads=n, engine="llama.cpp")), ""


def by_model(messages, tokens: int, runs: int, quick: bool) -> None:
    rows, base = [], {}
    for label, make, problem in table_models((1,) if quick else (1, 2)):
        if make is None:
            rows.append([label, "absent", "", problem])
            continue
        rate, out = measure(make, messages, tokens, runs)
        threads = label.rsplit(", ", 1)[1]
        if label.startswith("smollm2"):
            base[threads] = rate
        rows.append([label, f"{rate:.1f}", (threads, rate), f"{out} tokens generated"])
    for row in rows:                    # the ratio to SmolLM2 on the same thread count, once all are measured
        if row[2]:
            threads, rate = row[2]
            row[2] = f"{rate / base[threads]:.2f}x" if threads in base else ""
    body = (f"llama.cpp (`EmbeddedBackend`), same prompt (a frozen koan's first prompt), greedy, up to {tokens} new "
            f"tokens, median of {runs} run(s), model load excluded.\n\n"
            + table(["model, threads", "tokens/s", "vs smollm2-135m", "note"], rows))
    record("Generation speed by model", " ".join(["python", "bench/bench_generation.py"] + sys.argv[1:]), body,
           quick)


def measure(make, messages, tokens: int, runs: int) -> tuple[float, int]:
    backend = make()
    opts = GenOptions(temperature=0.0, seed=0, max_tokens=tokens)
    backend.chat(messages, GenOptions(temperature=0.0, seed=0, max_tokens=8))  # load + warm
    rates, outs = [], []
    for _ in range(runs):
        r = backend.chat(messages, opts)
        rates.append(r.tokens_out / (r.ms / 1000))
        outs.append(r.tokens_out)
    backend.close()
    return statistics.median(rates), int(statistics.median(outs))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", action="store_true", help="each table model on 1 and 2 threads (llama.cpp)")
    ap.add_argument("--model", default="smollm2-135m", help="the table model (or GGUF) of the backend comparison; "
                                                            "mlx-lm runs only for smollm2-135m")
    ap.add_argument("--threads", type=int, default=0, help="threads of llama.cpp and torch (0: their defaults)")
    args = ap.parse_args()
    tokens, runs = (16, 1) if args.quick else (args.tokens, args.runs)
    koan = load_corpus().eval_set[0] if load_corpus().eval_set else None
    messages = build_messages(koan) if koan else [{"role": "user", "content": "Write a Rust function adding two numbers."}]
    if args.models:
        by_model(messages, tokens, runs, args.quick)
        return 0
    rows, base = [], None
    from sleepy_tui.models import resolve
    label = resolve(args.model).name
    for name, make in backends(args.model, args.threads, mlx=label == "smollm2-135m"):
        try:
            rate, out = measure(make, messages, tokens, runs)
        except BackendUnavailable as e:
            rows.append([name, "unavailable", "", str(e)])
            continue
        base = base or rate
        rows.append([name, f"{rate:.1f}", f"{rate / base:.2f}x", f"{out} tokens generated"])
    body = (f"{label}, the same GGUF in each backend (transformers de-quantizes it); same prompt (a frozen koan's "
            f"first prompt), greedy, up to {tokens} new tokens, median of {runs} runs, model load excluded"
            + (f", {args.threads} thread(s)" if args.threads else "") + ".\n\n"
            + table(["backend", "tokens/s", "vs llama.cpp", "note"], rows))
    record("Generation speed", " ".join(["python", "bench/bench_generation.py"] + sys.argv[1:]), body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
