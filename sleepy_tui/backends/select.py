"""From settings to a backend: the named one, or `auto` (Ollama when it answers and has the model, else the
embedded model). Backend modules are imported only when chosen, so heavy libraries (torch, llama_cpp, mlx)
load only for the backend in use.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..config import BACKEND_KINDS
from .base import Backend, BackendUnavailable, Factory, registered

MODULES = {b.name: b.module for b in BACKEND_KINDS if b.module}
AUTO_PROBE_TIMEOUT_S = 1.5   # auto asks Ollama this long before falling back to the embedded model


def backend_factory(name: str) -> Factory:
    """The registered factory for `name`, importing its module on first use."""
    if name not in registered() and name in MODULES:
        importlib.import_module(f"{__package__}.{MODULES[name]}")
    factories = registered()
    if name not in factories:
        names = ", ".join(sorted(factories | MODULES))
        raise BackendUnavailable(f"unknown backend {name!r} (choose from auto, {names})")
    return factories[name]


def build(name: str, settings) -> Backend:
    factory = backend_factory(name)
    from_settings = getattr(factory, "from_settings", None)
    if from_settings is not None:
        return from_settings(settings)
    return factory(model=settings.model, adapter=settings.adapter or None)


def make_backend(settings, *, on_notice: Callable[[str], None] | None = None) -> Backend:
    """The backend the settings name; `auto` chooses and says why through `on_notice`."""
    notice = on_notice or (lambda _m: None)
    backend = _auto(settings, notice) if settings.backend == "auto" else build(settings.backend, settings)
    if settings.backend != "auto" and getattr(backend, "note", ""):
        notice(backend.note)
    return backend


def _auto(settings, notice: Callable[[str], None]) -> Backend:
    from ..models import table
    spec = table().find(settings.model) if settings.model else None   # a table model: ask Ollama for its twin
    if settings.adapter:
        why = "an adapter is set"
    else:
        from .ollama_backend import DEFAULT_MODEL, ollama_available
        model = spec.ollama if spec else settings.model or DEFAULT_MODEL
        ok, why = ollama_available(settings.ollama_host, model, timeout=AUTO_PROBE_TIMEOUT_S)
        if ok:
            backend = build("ollama", settings.replace(model=model) if spec else settings)
            notice(f"{why}; using it")
            return backend
    # an Ollama model name means nothing to the embedded backend: it runs table models and GGUF files
    keep = spec is not None or settings.model.endswith(".gguf")
    embedded = build("embedded", settings if keep or not settings.model else settings.replace(model=""))
    how = "llama.cpp" if embedded.engine == "llama.cpp" else "transformers, llama-cpp-python not importable"
    note = f"; {embedded.note}" if embedded.note and embedded.engine == "llama.cpp" else ""
    notice(f"{why}; using the embedded {embedded.model} ({how}){note}")
    return embedded
