"""The transformers and mlx backends on a tiny randomly initialised llama built here (no downloads).

The tiny model has the embedded SmolLM2 tokenizer (read from its GGUF) and 2 layers of width 64. Random
weights say nothing, but greedy decoding is exact, so the tests compare what a backend streams with what the
library produces directly, and mlx with transformers on the same weights.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from sleepy_tui.backends import BackendUnavailable, GenOptions

ASK = [{"role": "system", "content": "You fix Rust."}, {"role": "user", "content": "fn main() { let x = 5; }"}]
GREEDY = GenOptions(temperature=0.0, seed=0, max_tokens=12)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sleepy_tui.backends.embedded import embedded_gguf_path
    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.5,  # big weights: varied greedy tokens
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def hf_greedy(model_dir: Path, adapter: Path | None = None, max_new_tokens: int = 12) -> tuple[str, int]:
    """What transformers itself generates greedily for ASK: (text, prompt tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    enc = tok.apply_chat_template(ASK, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    n = enc["input_ids"].shape[1]
    return tok.decode(out[0, n:], skip_special_tokens=True), n


# ---- transformers -------------------------------------------------------------------------------------------

def test_transformers_streams_what_generate_produces(tiny_model):
    from sleepy_tui.backends.transformers_backend import TransformersBackend
    b = TransformersBackend(model=str(tiny_model))
    pieces: list[str] = []
    r = b.chat(ASK, GREEDY, on_text=pieces.append)
    expected, n_in = hf_greedy(tiny_model)
    assert r.text == expected and len(r.text.strip()) > 10
    assert len(pieces) > 3 and "".join(pieces) == r.text
    assert (r.tokens_in, r.tokens_out) == (n_in, 12)
    assert b.describe() == f"transformers:{tiny_model}"
    assert b.load() is TransformersBackend(model=str(tiny_model)).load()  # loaded once per process


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft calling transformers
def test_transformers_applies_a_peft_adapter(tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sleepy_tui.backends.transformers_backend import TransformersBackend
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))  # random B: the adapter changes outputs
    lora.save_pretrained(tmp_path / "adapter")
    r = TransformersBackend(model=str(tiny_model), adapter=str(tmp_path / "adapter")).chat(ASK, GREEDY)
    assert r.text == hf_greedy(tiny_model, tmp_path / "adapter")[0]
    assert r.text != hf_greedy(tiny_model)[0]


def test_transformers_cancel_stops_generation(tiny_model):
    from sleepy_tui.backends.transformers_backend import TransformersBackend
    cancel = threading.Event()
    r = TransformersBackend(model=str(tiny_model)).chat(ASK, GenOptions(max_tokens=400),
                                                        on_text=lambda _t: cancel.set(), cancel=cancel)
    assert r.cancelled and 0 < len(r.text) < 40
    assert 1 <= r.tokens_out <= 3 and r.tokens_in > 20          # counted up to the cancel
    assert not [t for t in threading.enumerate() if t.name == "transformers-generate"]


def test_transformers_explains_bad_paths(tiny_model, tmp_path):
    from sleepy_tui.backends.transformers_backend import TransformersBackend
    with pytest.raises(BackendUnavailable, match="adapter not found"):
        TransformersBackend(model=str(tiny_model), adapter=str(tmp_path / "nope"))
    with pytest.raises(BackendUnavailable, match="has no adapter_config.json"):
        TransformersBackend(model=str(tiny_model), adapter=str(tmp_path))
    with pytest.raises(BackendUnavailable, match="model not found"):
        TransformersBackend(model=str(tmp_path / "missing-model"))
    with pytest.raises(BackendUnavailable, match="holds no model"):
        TransformersBackend(model=str(tmp_path))


# ---- mlx ----------------------------------------------------------------------------------------------------

def _mlx_or_skip() -> None:
    from sleepy_tui.backends.mlx_backend import mlx_problem
    problem = mlx_problem()
    if problem:
        pytest.skip(f"mlx-lm does not import here: {problem}")


def test_mlx_matches_transformers_on_the_same_weights(tiny_model):
    _mlx_or_skip()
    from sleepy_tui.backends.mlx_backend import MlxBackend
    b = MlxBackend(model=str(tiny_model))
    result: dict = {}
    pieces: list[str] = []
    # the app generates on a worker thread: do the same
    worker = threading.Thread(target=lambda: result.update(r=b.chat(ASK, GREEDY, on_text=pieces.append)))
    worker.start()
    worker.join(60)
    r = result["r"]
    expected, n_in = hf_greedy(tiny_model)
    # mlx-lm's streaming detokenizer drops the leading space of a reply
    assert r.text.lstrip() == expected.lstrip() and len(r.text.strip()) > 10
    assert len(pieces) > 3 and "".join(pieces) == r.text
    assert (r.tokens_in, r.tokens_out) == (n_in, 12)


def test_mlx_applies_an_adapter_folder(tiny_model, tmp_path):
    _mlx_or_skip()
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from sleepy_tui.backends.mlx_backend import MlxBackend
    model, _ = mlx_lm.load(str(tiny_model))
    model.freeze()
    params = {"rank": 4, "scale": 8.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "self_attn.v_proj"]}
    linear_to_lora_layers(model, 2, params)
    mx.random.seed(1)
    weights = {k: mx.random.normal(v.shape) * 0.5 for k, v in tree_flatten(model.trainable_parameters())}
    adapter = tmp_path / "mlx-adapter"
    adapter.mkdir()
    mx.save_safetensors(str(adapter / "adapters.safetensors"), weights)
    (adapter / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "num_layers": 2,
                                                             "lora_parameters": params}))
    base = MlxBackend(model=str(tiny_model)).chat(ASK, GREEDY).text
    tuned = MlxBackend(model=str(tiny_model), adapter=str(adapter)).chat(ASK, GREEDY).text
    assert tuned.strip() and tuned != base
    with pytest.raises(BackendUnavailable, match="has no adapter_config.json"):
        MlxBackend(model=str(tiny_model), adapter=str(tmp_path))


def test_mlx_missing_says_what_to_install(monkeypatch):
    from sleepy_tui.backends.mlx_backend import MlxBackend
    monkeypatch.setitem(sys.modules, "mlx_lm", None)
    with pytest.raises(BackendUnavailable, match=r"pip install mlx-lm"):
        MlxBackend(model="anything")


@pytest.mark.slow
def test_mlx_default_model_is_the_embedded_one_converted_once(tmp_path):
    """No model: the embedded GGUF, written once as safetensors under the state folder, then run by mlx-lm."""
    _mlx_or_skip()
    from sleepy_tui import locations
    from sleepy_tui.backends.embedded import embedded_hf_dir
    from sleepy_tui.backends.mlx_backend import MlxBackend
    b = MlxBackend()
    r = b.chat([{"role": "user", "content": "Write a Rust function that adds two numbers."}],
               GenOptions(temperature=0.0, max_tokens=20))
    assert "rust" in r.text.lower() and r.tokens_out == 20, r.text
    folder = embedded_hf_dir()
    assert folder.parent == locations.state_dir() / "models"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"


def test_mlx_runs_a_table_model_from_the_safetensors_copy_of_its_gguf(monkeypatch, tmp_path):
    """A table model (or a GGUF path) is what mlx-lm gets as its safetensors copy; the shipped SmolLM2 keeps the
    folder it always had; a model that is not pulled says what to run, in one line, for backend and trainer."""
    _mlx_or_skip()
    from sleepy_tui.backends import embedded
    from sleepy_tui.backends.mlx_backend import MlxBackend
    from sleepy_tui.training.base import TrainingUnavailable
    from sleepy_tui.training.mlx_trainer import resolve_base_model
    made = []

    def fake_copy(gguf, name, root=None):
        made.append((gguf.name, name, root))
        return tmp_path / f"{name}-hf"
    monkeypatch.setattr(embedded, "gguf_hf_dir", fake_copy)
    assert MlxBackend(model="smollm2-135m")._model_path() == str(tmp_path / "SmolLM2-135M-Instruct-hf")
    assert resolve_base_model("SmolLM2-135M-Instruct", tmp_path / "cache") == tmp_path / "SmolLM2-135M-Instruct-hf"
    assert made[-1] == (embedded.EMBEDDED_GGUF_NAME, "SmolLM2-135M-Instruct", tmp_path / "cache")
    gguf = tmp_path / "my-model.gguf"
    gguf.write_bytes(embedded.embedded_gguf_path().read_bytes())
    assert MlxBackend(model=str(gguf))._model_path() == str(tmp_path / "my-model-hf")
    monkeypatch.setenv("SLEEPY_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    with pytest.raises(BackendUnavailable, match="sleepy models pull qwen2.5-coder-0.5b"):
        MlxBackend(model="qwen2.5-coder-0.5b")._model_path()
    with pytest.raises(TrainingUnavailable, match="sleepy models pull qwen2.5-coder-0.5b"):
        resolve_base_model("qwen2.5-coder-0.5b")
