"""Any local Hugging Face causal LM (a folder, a GGUF file, or a hub id already in the local cache) with
transformers, plus an optional peft adapter folder.

Runs on cuda, else mps, else cpu. `generate` runs in a thread and feeds a TextIteratorStreamer, which this
generator drains; an early close (cancel) stops generation at the next token.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ._loading import ModelCache, quiet
from .base import Backend, BackendUnavailable, Chunk, GenOptions, Message, register

_MODELS = ModelCache()


def pick_device(preferred: str = "") -> str:
    from ..devices import DeviceError
    from ..devices import pick_device as pick
    try:
        return pick(preferred)
    except DeviceError as e:
        raise BackendUnavailable(str(e)) from None


def resolve_source(model: str) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name inside it or None) for `from_pretrained`."""
    from .embedded import EMBEDDED_MODEL_NAME, embedded_gguf_path
    if model == EMBEDDED_MODEL_NAME:
        p = embedded_gguf_path()
        return str(p.parent), p.name
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name
    if p.is_dir():
        if (p / "config.json").is_file():
            return str(p), None
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(p), ggufs[0].name
        raise BackendUnavailable(f"{p} holds no model: expected config.json (a Hugging Face model folder) or "
                                 "one .gguf file")
    if p.is_absolute() or model.startswith((".", "~")) or p.suffix == ".gguf":
        raise BackendUnavailable(f"model not found: {model}")
    return model, None  # a hub id: from_pretrained finds it in the local cache (or downloads it)


def _dtype_kwarg() -> str:
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


@register("transformers")
@dataclass(eq=False)
class TransformersBackend(Backend):
    model: str = ""                  # empty: the embedded SmolLM2-135M-Instruct GGUF
    adapter: str | None = None       # a peft adapter folder
    device: str = ""                 # empty: cuda, then mps, then cpu
    name: str = field(default="transformers", init=False)

    def __post_init__(self) -> None:
        from .embedded import EMBEDDED_MODEL_NAME
        self.model = self.model or EMBEDDED_MODEL_NAME
        self.adapter = self.adapter or None
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendUnavailable(f"the transformers backend needs {' and '.join(missing)}: "
                                     f"pip install {' '.join(missing)}")
        if self.adapter:
            a = Path(self.adapter)
            if not a.exists():
                raise BackendUnavailable(f"adapter not found: {a}")
            if not (a / "adapter_config.json").is_file():
                raise BackendUnavailable(f"transformers loads peft adapters: {a} has no adapter_config.json")
            if importlib.util.find_spec("peft") is None:
                raise BackendUnavailable("loading an adapter needs peft: pip install peft")
        self.source, self.gguf_file = resolve_source(self.model)

    @classmethod
    def from_settings(cls, settings) -> "TransformersBackend":
        return cls(model=settings.model, adapter=settings.adapter or None)

    def load(self):
        """(model, tokenizer, lock), loaded once per process for this source, adapter and device."""
        device = pick_device(self.device)
        key = (self.source, self.gguf_file, self.adapter, device)
        return _MODELS.get(key, lambda: self._load(device))

    def _load(self, device: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        dtype = torch.float32
        if device == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif device == "mps":
            dtype = torch.float16
        extra = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        try:
            with quiet(hf=True):
                tok = AutoTokenizer.from_pretrained(self.source, **extra)
                model = AutoModelForCausalLM.from_pretrained(self.source, **extra, **{_dtype_kwarg(): dtype})
                if self.adapter:
                    from peft import PeftModel
                    model = PeftModel.from_pretrained(model, self.adapter).merge_and_unload()
        except (OSError, ValueError) as e:
            what = self.model + (f" with adapter {self.adapter}" if self.adapter else "")
            raise BackendUnavailable(f"transformers could not load {what}: {str(e).strip().splitlines()[0]}") \
                from None
        model.to(device).eval()
        if not getattr(tok, "chat_template", None):
            raise BackendUnavailable(f"{self.model} has no chat template: use an instruct/chat model")
        return model, tok, threading.Lock()

    def stream(self, messages: list[Message], options: GenOptions) -> Iterator[Chunk]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer, set_seed
        model, tok, lock = self.load()
        stop = threading.Event()

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        n_in = int(enc["input_ids"].shape[1])
        streamer = _CountingStreamer(TextIteratorStreamer)(tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(max_new_tokens=options.max_tokens, streamer=streamer,
                      stopping_criteria=StoppingCriteriaList([StopWhenAsked()]),
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        result: dict = {}

        def generate() -> None:
            try:
                with torch.inference_mode():
                    out = model.generate(**enc, **kwargs)
                result["tokens_out"] = int(out.shape[1]) - n_in
            except BaseException as e:  # noqa: BLE001 - re-raised on the consumer's thread
                result["error"] = e
                streamer.end()

        with lock:  # one generation per loaded model at a time
            if options.seed is not None:
                set_seed(options.seed)
            worker = threading.Thread(target=generate, name="transformers-generate", daemon=True)
            worker.start()
            try:
                for text in streamer:
                    if text:  # counts ride on every chunk: a stream stopped early still reports them
                        yield Chunk(text, tokens_in=n_in, tokens_out=streamer.generated)
            finally:
                stop.set()
                worker.join()
        if "error" in result:
            raise result["error"]
        yield Chunk(tokens_in=n_in, tokens_out=result.get("tokens_out"))


def _CountingStreamer(base):
    """A TextIteratorStreamer that also counts the tokens generated so far (built lazily: transformers is heavy)."""
    class CountingStreamer(base):
        generated = 0

        def put(self, value):
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                self.generated += int(value.numel())
            super().put(value)

    return CountingStreamer

