"""The OpenAI-compatible backend against a tiny local server speaking server-sent events."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sleepy_tui.backends import BackendUnavailable, GenOptions
from sleepy_tui.backends.openai_backend import OpenAIBackend

ASK = [{"role": "system", "content": "fix rust"}, {"role": "user", "content": "fn main() { let x: i32 = \"a\"; }"}]


class SSEServer:
    """POST /v1/chat/completions streams `reply` split on spaces; GET /v1/models lists `models`."""

    def __init__(self, reply: str = "", models: tuple[str, ...] = ("tiny-coder",), *, usage: bool = True,
                 reject_stream_options: bool = False):
        self.reply, self.models, self.usage = reply, list(models), usage
        self.reject_stream_options = reject_stream_options
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"   # the body ends when the connection closes

            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    return self._json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in server.models]})
                self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": "not found"}})
                if body["model"] not in server.models:
                    return self._json(404, {"error": {"message": f"model {body['model']} does not exist",
                                                      "type": "invalid_request_error", "code": "model_not_found"}})
                if server.reject_stream_options and "stream_options" in body:
                    return self._json(400, {"error": {"message": "Unrecognized request argument supplied: "
                                                                 "stream_options", "type": "invalid_request_error"}})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = server.reply.split(" ")
                pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
                base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
                for i, piece in enumerate(pieces):
                    delta = {"content": piece} if i else {"role": "assistant", "content": piece}
                    self._event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                if server.usage and body.get("stream_options", {}).get("include_usage"):
                    self._event({**base, "choices": [], "usage": {"prompt_tokens": 31, "completion_tokens":
                                                                   len(pieces), "total_tokens": 31 + len(pieces)}})
                self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, obj: dict) -> None:
                self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
                self.wfile.flush()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def serve():
    servers: list[SSEServer] = []

    def start(*args, **kwargs) -> SSEServer:
        servers.append(SSEServer(*args, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_streams_and_reports_usage(serve):
    server = serve("fn main() { let x: &str = \"a\"; }")
    b = OpenAIBackend(model="tiny-coder", base_url=server.url)
    pieces: list[str] = []
    r = b.chat(ASK, GenOptions(temperature=0.1, seed=3, max_tokens=50), on_text=pieces.append)
    assert r.text == "fn main() { let x: &str = \"a\"; }"
    assert pieces[:3] == ["fn ", "main() ", "{ "] and len(pieces) == 9
    assert (r.tokens_in, r.tokens_out) == (31, 9)
    sent = server.requests[-1]
    assert sent["messages"] == ASK and sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert (sent["temperature"], sent["seed"], sent["max_tokens"]) == (0.1, 3, 50)


def test_no_model_takes_the_first_the_server_lists(serve):
    server = serve("ok", models=("served-model", "other"))
    b = OpenAIBackend(base_url=server.url)
    assert b.chat(ASK).text == "ok" and b.model == "served-model"
    assert server.requests[-1]["model"] == "served-model"


def test_a_server_without_stream_options_is_asked_again_and_events_are_counted(serve):
    server = serve("one two three", reject_stream_options=True)
    b = OpenAIBackend(model="tiny-coder", base_url=server.url)
    r = b.chat(ASK)
    assert r.text == "one two three"
    assert ["stream_options" in body for body in server.requests] == [True, False]
    assert r.tokens_out == 3                                   # no usage sent: one token an event
    b.chat(ASK)
    assert "stream_options" not in server.requests[-1]          # remembered


def test_unknown_model_and_server_down_are_one_line_errors(serve):
    server = serve("x")
    with pytest.raises(BackendUnavailable) as err:
        OpenAIBackend(model="gpt-9", base_url=server.url).chat(ASK)
    assert str(err.value) == f"the server at {server.url} has no model gpt-9: pass one it serves as --model"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(BackendUnavailable) as err:
        OpenAIBackend(model="m", base_url=url).chat(ASK)
    assert str(err.value) == f"no OpenAI-compatible server answers at {url}: start it, or set openai_base_url"
    with pytest.raises(BackendUnavailable, match=f"no OpenAI-compatible server answers at {url}"):
        OpenAIBackend(base_url=url).chat(ASK)   # listing models fails the same way
