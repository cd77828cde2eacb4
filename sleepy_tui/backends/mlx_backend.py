"""A model run by mlx-lm (Apple silicon; mlx[cpu] elsewhere), with an optional mlx-lm LoRA adapter folder.

No model: the embedded SmolLM2-135M-Instruct. A table model (`qwen2.5-coder-0.5b`) or a GGUF path is copied once
from its GGUF into a safetensors folder that mlx-lm can load (see `hf_copy`), so the mlx backend and trainer work
offline on the same weights as llama.cpp.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ._loading import ModelCache, quiet
from .base import Backend, BackendUnavailable, Chunk, GenOptions, Message, register

_MODELS = ModelCache()


def mlx_problem() -> str | None:
    """Why mlx-lm can't be used here (None: it imports)."""
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError from a missing shared library
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


@register("mlx")
@dataclass(eq=False)
class MlxBackend(Backend):
    model: str = ""                  # an mlx/HF model folder or hub id; empty: the embedded model
    adapter: str | None = None       # an mlx-lm adapter folder (adapters.safetensors + adapter_config.json)
    name: str = field(default="mlx", init=False)

    def __post_init__(self) -> None:
        from .embedded import EMBEDDED_MODEL_NAME
        problem = mlx_problem()
        if problem:
            raise BackendUnavailable(f"the mlx backend needs mlx-lm ({problem}): pip install mlx-lm "
                                     "(on Linux: pip install 'mlx[cpu]' mlx-lm)")
        self.model = self.model or EMBEDDED_MODEL_NAME
        self.adapter = self.adapter or None
        if self.adapter:
            a = Path(self.adapter)
            if not a.exists():
                raise BackendUnavailable(f"adapter not found: {a}")
            if not (a / "adapter_config.json").is_file():
                raise BackendUnavailable(f"mlx-lm loads adapter folders: {a} has no adapter_config.json")

    @classmethod
    def from_settings(cls, settings) -> "MlxBackend":
        return cls(model=settings.model, adapter=settings.adapter or None)

    def _model_path(self) -> str:
        from .embedded import hf_copy, is_gguf_model
        if is_gguf_model(self.model):        # a table model or a GGUF file: its safetensors copy
            return str(hf_copy(self.model))
        p = Path(self.model).expanduser()
        if p.exists():
            return str(p)
        if p.is_absolute() or self.model.startswith((".", "~")):
            raise BackendUnavailable(f"model not found: {self.model}")
        return self.model  # a hub id

    def load(self):
        """(model, tokenizer, lock), loaded once per process for this model and adapter."""
        return _MODELS.get((self.model, self.adapter), self._load)

    def _load(self):
        import mlx_lm
        path = self._model_path()
        try:
            with quiet():
                model, tok = mlx_lm.load(path, adapter_path=self.adapter,
                                         model_config=mlx_config_fixes(Path(path)) or None)[:2]
        except Exception as e:  # noqa: BLE001 - mlx-lm raises many kinds (FileNotFoundError, ValueError, hub errors)
            what = self.model + (f" with adapter {self.adapter}" if self.adapter else "")
            raise BackendUnavailable(f"mlx-lm could not load {what}: {str(e).strip().splitlines()[0]}") from None
        return model, tok, threading.Lock()

    def stream(self, messages: list[Message], options: GenOptions) -> Iterator[Chunk]:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler
        model, tok, lock = self.load()
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        last = None
        with lock:
            if options.seed is not None:
                mx.random.seed(options.seed)
            for last in stream_generate(model, tok, prompt, max_tokens=options.max_tokens,
                                        sampler=make_sampler(temp=options.temperature)):
                if last.text:  # counts ride on every chunk: a stream stopped early still reports them
                    yield Chunk(last.text, tokens_in=last.prompt_tokens, tokens_out=last.generation_tokens)
        if last is not None:
            yield Chunk(tokens_in=last.prompt_tokens, tokens_out=last.generation_tokens)


def mlx_config_fixes(model_dir: Path) -> dict:
    """Config overrides mlx-lm needs for folders written by transformers >= 5.

    transformers 5 writes `rope_parameters: {rope_theta, rope_type}` instead of a top-level `rope_theta`;
    mlx-lm's llama reads only the latter and would silently fall back to 10000 (SmolLM2 uses 100000).
    """
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    rope = cfg.get("rope_parameters")
    fixes: dict = {}
    if isinstance(rope, dict) and "rope_theta" not in cfg and "rope_theta" in rope:
        fixes["rope_theta"] = float(rope["rope_theta"])
        if rope.get("rope_type", "default") != "default" and "rope_scaling" not in cfg:
            fixes["rope_scaling"] = dict(rope)
    return fixes

