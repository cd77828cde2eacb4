"""A model served by a local Ollama, through the official `ollama` client.

Ollama keeps models in its own store, so failures are about the server: not running, or the model not
pulled. Both become a BackendUnavailable naming the command that fixes it. A LoRA adapter (GGUF) is applied
by creating a derived Ollama model once (`FROM base` + `ADAPTER`); it must have been trained on that base.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from .base import Backend, BackendUnavailable, Chunk, GenOptions, Message, register

DEFAULT_MODEL = "qwen2.5-coder:1.5b-instruct-q4_K_M"
DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_PORT = 11434


def normalize_host(host: str, where: str = "ollama_host") -> str:
    """'localhost', '0.0.0.0:11434', 'http://h' ... -> 'scheme://host:port' (what the client connects to).

    Anything else (a bad port, an unclosed IPv6 bracket, spaces) is a BackendUnavailable naming `where`."""
    given = host
    host = (host or DEFAULT_HOST).strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    try:
        parts = urlsplit(host)
        port = parts.port
        if parts.scheme not in ("http", "https") or any(c.isspace() for c in parts.netloc):
            raise ValueError("expected http(s)://host:port")
    except ValueError as e:
        raise BackendUnavailable(f"{where}: {given!r} is not an Ollama address ({e}): give host:port or "
                                 "http://host:port") from None
    hostname = parts.hostname or "127.0.0.1"
    if ":" in hostname:  # IPv6
        hostname = f"[{hostname}]"
    port = port or (443 if parts.scheme == "https" and ":" not in parts.netloc else DEFAULT_PORT)
    return f"{parts.scheme}://{hostname}:{port}{parts.path}"


def resolve_host(configured: str = "") -> str:
    """The settings' host; OLLAMA_HOST (Ollama's own variable) counts when the settings keep the default."""
    env = os.environ.get("OLLAMA_HOST", "")
    if env and (not configured or normalize_host(configured) == normalize_host(DEFAULT_HOST)):
        return normalize_host(env, "OLLAMA_HOST")
    return normalize_host(configured)


def _with_tag(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _not_running(host: str) -> BackendUnavailable:
    return BackendUnavailable(f"Ollama is not running at {host}: start it with `ollama serve`")


def _no_model(model: str) -> BackendUnavailable:
    return BackendUnavailable(f"Ollama has no model {model}: run `ollama pull {model}`")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def served_models(host: str = "", timeout: float = 1.0) -> tuple[set[str] | None, str]:
    """The models an Ollama at `host` has pulled (each name with its tag), or None and a one-line reason when
    nothing answers there like Ollama."""
    import httpx
    import ollama
    host = resolve_host(host)
    try:
        with ollama.Client(host=host, timeout=timeout) as client:
            listing = client.list()
    except (ConnectionError, httpx.TransportError):
        return None, f"Ollama not reachable at {host}"
    except (ollama.ResponseError, ValueError) as e:  # something answers, but not like Ollama
        return None, f"Ollama at {host} answered oddly: {_one_line(e)}"
    return {_with_tag(getattr(m, "model", None) or m.get("name") or "") for m in listing.models}, f"Ollama at {host}"


def ollama_available(host: str = "", model: str = DEFAULT_MODEL, timeout: float = 1.0) -> tuple[bool, str]:
    """Does an Ollama answer at `host`, and does it have `model`? Returns (ok, a one-line reason)."""
    model = model or DEFAULT_MODEL
    names, where = served_models(host, timeout)
    if names is None:
        return False, where
    if _with_tag(model) in names:
        return True, f"{where} has {model}"
    return False, f"{where} has no model {model} (run `ollama pull {model}`)"


@register("ollama")
@dataclass(eq=False)
class OllamaBackend(Backend):
    model: str = DEFAULT_MODEL
    adapter: str | None = None
    host: str = ""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0     # the first request waits while Ollama loads the model
    name: str = field(default="ollama", init=False)
    max_parallel = 64  # a server queues or batches concurrent requests

    def __post_init__(self) -> None:
        self.model = self.model or DEFAULT_MODEL
        self.adapter = self.adapter or None
        self.host = resolve_host(self.host)
        self._client = None
        self._served: str | None = None   # the Ollama model name requests use (derived when an adapter is set)

    @classmethod
    def from_settings(cls, settings) -> "OllamaBackend":
        return cls(model=settings.model, adapter=settings.adapter or None, host=settings.ollama_host)

    def describe(self) -> str:
        return super().describe() + f" @ {self.host}"

    def client(self):
        if self._client is None:
            import httpx
            import ollama
            self._client = ollama.Client(host=self.host,
                                         timeout=httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def stream(self, messages: list[Message], options: GenOptions) -> Iterator[Chunk]:
        import httpx
        import ollama
        opts = {"temperature": options.temperature, "num_predict": options.max_tokens}
        if options.seed is not None:
            opts["seed"] = options.seed
        parts = None
        try:
            model = self.served_model()
            parts = self.client().chat(model=model, messages=messages, stream=True, options=opts)
            n = 0
            for part in parts:
                text = part.message.content if part.message is not None else ""
                if part.done:  # the exact counts come with the last message
                    yield Chunk(text or "", tokens_in=part.prompt_eval_count, tokens_out=part.eval_count)
                elif text:
                    n += 1     # Ollama streams a token a message: a stream stopped early still has a count
                    yield Chunk(text, tokens_out=n)
        except ollama.ResponseError as e:
            raise self._explain(e) from None
        except (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout):
            raise _not_running(self.host) from None
        except httpx.TransportError as e:
            raise BackendUnavailable(f"Ollama at {self.host} stopped answering: {_one_line(e) or type(e).__name__}") \
                from None
        finally:
            if parts is not None:
                parts.close()  # an early stop (cancel) releases the HTTP stream

    def _explain(self, e) -> BackendUnavailable:
        if e.status_code == 404 or "not found" in str(e.error).lower():
            return _no_model(self.model)
        return BackendUnavailable(f"Ollama at {self.host} failed: {_one_line(e.error)}")

    def served_model(self) -> str:
        """The model to request: the base, or (once created) the base with the adapter applied."""
        if self._served is None:
            self._served = self._create_adapter_model() if self.adapter else self.model
        return self._served

    def _create_adapter_model(self) -> str:
        path = Path(self.adapter)
        if not path.is_file():
            raise BackendUnavailable(f"adapter not found: {path}")
        if path.suffix != ".gguf":
            raise BackendUnavailable(f"Ollama applies GGUF LoRA adapters; {path} is not a .gguf file")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        base = re.sub(r"[^a-zA-Z0-9._-]+", "-", self.model)
        derived = f"sleepy-{base}-{h.hexdigest()[:12]}"
        client = self.client()
        digest = client.create_blob(path)
        client.create(model=derived, from_=self.model, adapters={path.name: digest})
        return derived
