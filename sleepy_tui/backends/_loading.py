"""What the in-process backends share: a small cache of loaded models, and quiet loading.

Loading a model takes from a fraction of a second (llama.cpp) to half a minute (transformers de-quantizing a
GGUF), so each loaded model is kept for the process, keyed by what it was loaded from (model, adapter, ...).
The cache holds a few models at most: a sleep/eval cycle alternates the base and one candidate adapter, and
older adapters should not pile up in memory.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterator

MAX_MODELS = 3


class ModelCache:
    def __init__(self, max_items: int = MAX_MODELS):
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The cached value for `key`, loading it once (concurrent callers for the same key wait)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = load()
            with self._lock:
                self._items[key] = value
                self._loading.pop(key, None)
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)  # in-flight users keep their reference
            return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@contextlib.contextmanager
def quiet(hf: bool = False) -> Iterator[None]:
    """Hide progress bars and warnings that model loaders print (they would garble the TUI).

    With `hf`, also lower the transformers log level while loading (imports transformers)."""
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        if not hf:
            yield
            return
        import transformers.utils.logging as tlog
        level = tlog.get_verbosity()
        tlog.set_verbosity_error()
        try:
            yield
        finally:
            tlog.set_verbosity(level)


def save_plain_copy(tok, model, folder, dtype: str, **config_extra) -> None:
    """Write a transformers model loaded from a GGUF as a plain Hugging Face folder in `dtype` ("float32" or
    "bfloat16"): tokenizer, config without the GGUF quantization, one safetensors file (a tied lm_head left out)."""
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import save_file
    folder = Path(folder)
    tok.save_pretrained(folder)
    config = model.config.to_dict()
    config.pop("quantization_config", None)     # the copy is plain, not GGUF-quantized
    config.setdefault("architectures", [type(model).__name__])
    config["torch_dtype"] = config["dtype"] = dtype
    config.update(config_extra)
    tied = bool(config.get("tie_word_embeddings"))
    to = getattr(torch, dtype)
    state = {k: v.detach().to(to).contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
