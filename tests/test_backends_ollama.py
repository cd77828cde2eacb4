"""The Ollama backend against a stub of Ollama's HTTP API (tests/ollama_server.py), with the real client."""

from __future__ import annotations

import socket

import pytest
from ollama_server import OllamaStub

from sleepy_tui.backends import BackendUnavailable, GenOptions
from sleepy_tui.backends.ollama_backend import OllamaBackend, normalize_host, ollama_available

MODEL = "qwen2.5-coder:1.5b-instruct-q4_K_M"
ASK = [{"role": "user", "content": "fix this"}]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _no_ollama_env(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)


def test_streams_chunk_by_chunk_and_counts_tokens():
    with OllamaStub(models=[MODEL], replies=["fn add(a: i32) -> i32 { a }"], prompt_tokens=42,
                    hold_after_first=True) as server:
        b = OllamaBackend(host=server.url)
        seen: list[tuple[str, int]] = []

        def on_text(text: str) -> None:
            seen.append((text, server.sent_pieces))
            server.release.set()   # the stub sends the rest only now

        r = b.chat(ASK, GenOptions(temperature=0.3, seed=5, max_tokens=99), on_text=on_text)
    assert r.text == "fn add(a: i32) -> i32 { a }"
    assert seen[0] == ("fn ", 1)          # the first piece arrived while the server still held the rest
    assert [t for t, _ in seen] == ["fn ", "add(a: ", "i32) ", "-> ", "i32 ", "{ ", "a ", "}"]
    assert (r.tokens_in, r.tokens_out) == (42, 8)
    method, path, body = server.requests[-1]
    assert (method, path, body["model"], body["stream"]) == ("POST", "/api/chat", MODEL, True)
    assert body["options"] == {"temperature": 0.3, "seed": 5, "num_predict": 99}
    assert body["messages"] == ASK


def test_cancel_closes_the_stream():
    import threading
    with OllamaStub(models=[MODEL], replies=["one two three four five"]) as server:
        cancel = threading.Event()
        r = OllamaBackend(host=server.url).chat(ASK, on_text=lambda _t: cancel.set(), cancel=cancel)
    assert r.cancelled and r.text == "one "


def test_a_stream_stopped_after_the_code_block_still_counts_tokens():
    reply = ["```rust\n", "fn main() {}\n", "```", "\n", "Hope ", "this ", "helps!"]
    with OllamaStub(models=[MODEL], replies=[reply]) as server:
        r = OllamaBackend(host=server.url).chat(ASK, GenOptions(stop_after_code=True))
    assert r.text == "```rust\nfn main() {}\n```"
    assert r.tokens_out == 3        # counted while streaming; Ollama's own count comes only at the end


def test_missing_model_says_to_pull_it():
    with OllamaStub(models=["llama3:8b"], replies=["x"]) as server:
        with pytest.raises(BackendUnavailable) as err:
            OllamaBackend(model=MODEL, host=server.url).chat(ASK)
    assert str(err.value) == f"Ollama has no model {MODEL}: run `ollama pull {MODEL}`"


def test_server_down_says_to_start_it():
    url = closed_port_url()
    with pytest.raises(BackendUnavailable) as err:
        OllamaBackend(host=url).chat(ASK)
    assert str(err.value) == f"Ollama is not running at {url}: start it with `ollama serve`"


def test_ollama_available_both_ways():
    with OllamaStub(models=[MODEL, "smollm2"]) as server:
        assert ollama_available(server.url, MODEL) == (True, f"Ollama at {server.url} has {MODEL}")
        assert ollama_available(server.url, "smollm2:latest")[0]    # a name without tag means :latest
        ok, why = ollama_available(server.url, "qwen2.5-coder:7b")
        assert not ok and why == (f"Ollama at {server.url} has no model qwen2.5-coder:7b "
                                  "(run `ollama pull qwen2.5-coder:7b`)")
    url = closed_port_url()
    assert ollama_available(url, MODEL, timeout=0.5) == (False, f"Ollama not reachable at {url}")


def test_a_gguf_adapter_becomes_a_derived_model(tmp_path):
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF-lora-bytes")
    with OllamaStub(models=["smollm2:135m"], replies=["ok", "again"]) as server:
        b = OllamaBackend(model="smollm2:135m", adapter=str(adapter), host=server.url)
        assert b.chat(ASK).text == "ok" and b.chat(ASK).text == "again"
        (name, request), = server.created.items()
        chats = [body["model"] for m, p, body in server.requests if p == "/api/chat"]
        with pytest.raises(BackendUnavailable, match="adapter not found"):
            OllamaBackend(adapter=str(tmp_path / "nope.gguf"), host=server.url).chat(ASK)
    assert name.startswith("sleepy-smollm2-135m-") and request["from"] == "smollm2:135m"
    digest = request["adapters"]["adapter.gguf"]
    assert server.blobs[digest] == len(b"GGUF-lora-bytes")
    assert chats == [name.removesuffix(":latest")] * 2        # created once, used for every reply


def test_normalize_host():
    assert normalize_host("localhost") == "http://localhost:11434"
    assert normalize_host("0.0.0.0:8080") == "http://0.0.0.0:8080"
    assert normalize_host("https://ollama.example") == "https://ollama.example:443"
    assert normalize_host("http://127.0.0.1:11434/") == "http://127.0.0.1:11434"
