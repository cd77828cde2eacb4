"""Any OpenAI-compatible chat server (llama.cpp server, vLLM, LM Studio, ...) by base URL, with the `openai` client.

Token counts come from the server's usage report (`stream_options.include_usage`); a server that rejects
that option is asked again without it, and the counts are then estimated. No model: the first one the
server lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from .base import Backend, BackendUnavailable, Chunk, GenOptions, Message, register

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def _one_line(text) -> str:
    return " ".join(str(text).split())


@register("openai")
@dataclass(eq=False)
class OpenAIBackend(Backend):
    model: str = ""                 # empty: the first model the server lists
    adapter: str | None = None      # not supported: serve the adapted model under its own name
    base_url: str = DEFAULT_BASE_URL
    api_key: str = "none"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    name: str = field(default="openai", init=False)
    max_parallel = 64  # a server queues or batches concurrent requests

    def __post_init__(self) -> None:
        if self.adapter:
            raise BackendUnavailable("the openai backend can't apply an adapter: serve the adapted model under its "
                                     "own name and pass it as --model")
        self.adapter = None
        self.base_url = (self.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._client = None
        self._usage_option = True   # cleared when the server rejects stream_options

    @classmethod
    def from_settings(cls, settings) -> "OpenAIBackend":
        return cls(model=settings.model, adapter=settings.adapter or None, base_url=settings.openai_base_url,
                   api_key=settings.openai_api_key)

    def describe(self) -> str:
        return f"{self.name}:{self.model or '?'} @ {self.base_url}"

    def client(self):
        if self._client is None:
            import openai   # openai.Timeout: the one its HTTP library takes (httpx in older releases, httpx2 in newer)
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "none", max_retries=0,
                                         timeout=openai.Timeout(self.read_timeout_s, connect=self.connect_timeout_s))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _unavailable(self, e: Exception) -> BackendUnavailable:
        import openai
        if isinstance(e, openai.APIConnectionError):
            return BackendUnavailable(f"no OpenAI-compatible server answers at {self.base_url}: start it, or set "
                                      "openai_base_url")
        if isinstance(e, openai.AuthenticationError):
            return BackendUnavailable(f"the server at {self.base_url} refused the API key: set openai_api_key")
        if isinstance(e, openai.NotFoundError):
            return BackendUnavailable(f"the server at {self.base_url} has no model {self.model}: pass one it "
                                      "serves as --model")
        status = getattr(e, "status_code", None)
        return BackendUnavailable(f"the server at {self.base_url} failed" + (f" ({status})" if status else "")
                                  + f": {_one_line(getattr(e, 'message', e))}")

    def served_model(self) -> str:
        if not self.model:
            import openai
            try:
                ids = [m.id for m in self.client().models.list()]
            except openai.APIError as e:
                raise self._unavailable(e) from None
            if not ids:
                raise BackendUnavailable(f"the server at {self.base_url} lists no models: pass one as --model")
            self.model = ids[0]
        return self.model

    def _open(self, messages: list[Message], options: GenOptions):
        import openai
        kwargs = dict(model=self.served_model(), messages=messages, stream=True, temperature=options.temperature,
                      max_tokens=options.max_tokens)
        if options.seed is not None:
            kwargs["seed"] = options.seed
        if self._usage_option:
            try:
                return self.client().chat.completions.create(**kwargs, stream_options={"include_usage": True})
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                if "stream_options" not in str(e) and "include_usage" not in str(e):
                    raise
                self._usage_option = False
        return self.client().chat.completions.create(**kwargs)

    def stream(self, messages: list[Message], options: GenOptions) -> Iterator[Chunk]:
        import openai
        events = None
        try:
            events = self._open(messages, options)
            n = 0
            for event in events:
                for choice in event.choices or ():
                    text = choice.delta.content if choice.delta is not None else None
                    if text:
                        n += 1  # servers send about a token an event: a count until usage arrives (if it does)
                        yield Chunk(text, tokens_out=n)
                if event.usage is not None:
                    yield Chunk(tokens_in=event.usage.prompt_tokens, tokens_out=event.usage.completion_tokens)
        except openai.APIError as e:
            raise self._unavailable(e) from None
        finally:
            if events is not None:
                events.close()
