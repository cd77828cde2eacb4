"""A small stand-in for an Ollama server: the parts of its HTTP API the `ollama` client uses, scripted.

    with OllamaStub(models=["m:1"], replies=["Hello world"]) as server:
        Client(host=server.url).chat(...)

Chat replies are queued strings (or lists of pieces); a string streams word by word. Streaming is real:
each NDJSON line is flushed on its own, and `hold_after_first` makes the server wait after the first
piece until `release` is set, so a test can see the client handle a chunk before the rest exists.
Every request is recorded in `requests` as (method, path, json body or None).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "0.0.0-stub"


def _pieces(reply: str | list[str]) -> list[str]:
    if isinstance(reply, list):
        return reply
    return re.findall(r"\S+\s*|\s+", reply) or [""]


class OllamaStub:
    def __init__(self, models: list[str] | tuple[str, ...] = (), replies: list[str | list[str]] | None = None,
                 *, prompt_tokens: int = 17, hold_after_first: bool = False):
        self.models = [m if ":" in m else m + ":latest" for m in models]
        self.replies = list(replies or [])
        self.prompt_tokens = prompt_tokens
        self.hold_after_first = hold_after_first
        self.release = threading.Event()
        self.sent_pieces = 0          # pieces of the current chat reply written so far
        self.requests: list[tuple[str, str, dict | None]] = []
        self.blobs: dict[str, int] = {}
        self.created: dict[str, dict] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    def start(self) -> "OllamaStub":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="ollama-stub",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "OllamaStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def has(self, model: str) -> bool:
        return (model if ":" in model else model + ":latest") in self.models

    # ---- HTTP ----

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    return self.rfile.read(n)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return b""

            def _json(self, status: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, model: str) -> None:
                self._json(404, {"error": f"model '{model}' not found"})

            def do_HEAD(self) -> None:
                stub.requests.append(("HEAD", self.path, None))
                m = re.fullmatch(r"/api/blobs/(sha256:[0-9a-f]+)", self.path)
                self.send_response(200 if m and m.group(1) in stub.blobs else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                stub.requests.append(("GET", self.path, None))
                if self.path == "/":
                    data = b"Ollama is running"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif self.path == "/api/version":
                    self._json(200, {"version": VERSION})
                elif self.path == "/api/tags":
                    self._json(200, {"models": [
                        {"name": m, "model": m, "modified_at": "2025-01-01T00:00:00Z", "size": 1000,
                         "digest": "0" * 64, "details": {"format": "gguf", "family": "llama"}}
                        for m in stub.models]})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                raw = self._body()
                if self.path.startswith("/api/blobs/"):
                    stub.requests.append(("POST", self.path, None))
                    stub.blobs[self.path.rsplit("/", 1)[-1]] = len(raw)
                    self.send_response(201)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.loads(raw or b"{}")
                stub.requests.append(("POST", self.path, body))
                if self.path == "/api/show":
                    if not stub.has(body.get("model", "")):
                        return self._not_found(body.get("model", ""))
                    return self._json(200, {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
                                            "details": {"format": "gguf", "family": "llama"},
                                            "model_info": {}, "capabilities": ["completion"]})
                if self.path == "/api/create":
                    return self._create(body)
                if self.path == "/api/chat":
                    return self._chat(body)
                self._json(404, {"error": "not found"})

            def _create(self, body: dict) -> None:
                base = body.get("from", "")
                if not stub.has(base):
                    return self._not_found(base)
                missing = [d for d in (body.get("adapters") or {}).values() if d not in stub.blobs]
                if missing:
                    return self._json(400, {"error": f"blob {missing[0]} not found"})
                name = body["model"] if ":" in body["model"] else body["model"] + ":latest"
                stub.created[name] = body
                stub.models.append(name)
                self._json(200, {"status": "success"})

            def _chat(self, body: dict) -> None:
                model = body.get("model", "")
                if not stub.has(model):
                    return self._not_found(model)
                if not stub.replies:
                    return self._json(500, {"error": "stub has no reply queued"})
                pieces = _pieces(stub.replies.pop(0))
                stub.sent_pieces = 0
                eval_count = len(pieces)
                final = {"model": model, "created_at": "2025-01-01T00:00:00Z", "done": True, "done_reason": "stop",
                         "total_duration": 1000, "prompt_eval_count": stub.prompt_tokens, "eval_count": eval_count}
                if not body.get("stream", True):
                    stub.sent_pieces = len(pieces)
                    return self._json(200, {**final, "message": {"role": "assistant", "content": "".join(pieces)}})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i, piece in enumerate(pieces):
                        stub.sent_pieces = i + 1   # counted before it is written: the client may read it at once
                        self._line({"model": model, "created_at": "2025-01-01T00:00:00Z", "done": False,
                                    "message": {"role": "assistant", "content": piece}})
                        if i == 0 and stub.hold_after_first:
                            stub.release.wait(10)
                    self._line({**final, "message": {"role": "assistant", "content": ""}})
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (cancel)
                    pass

            def _line(self, obj: dict) -> None:
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        return Handler
