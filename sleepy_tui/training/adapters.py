"""Versioned adapters under state/adapters/<id>/, with what they were trained on and how they scored.

The promoted ("current") adapter is the one the agent uses; the gate decides promotion, a person can
promote or roll back by hand. `meta.json` in each folder mirrors the store's record.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..atomic import write_json
from ..config import backend_kind
from ..records import AdapterRecord
from ..store import Store


class AdapterError(ValueError):
    pass


def new_adapter_id(cycle: int) -> str:
    return f"c{cycle:03d}-{time.strftime('%Y%m%d-%H%M%S')}"


def adapter_dir(store: Store, adapter_id: str) -> Path:
    return store.dir / "adapters" / adapter_id


def record(store: Store, meta: AdapterRecord | dict) -> AdapterRecord:
    """Write an adapter's record to the store and its folder's meta.json (a dict is checked as a record)."""
    rec = meta if isinstance(meta, AdapterRecord) else AdapterRecord.checked(meta)
    write_json(adapter_dir(store, rec.adapter_id) / "meta.json", rec.to_dict())
    store.save_adapter(rec)
    return rec


def get(store: Store, adapter_id: str) -> AdapterRecord:
    for a in store.adapters():
        if a.adapter_id == adapter_id:
            return a
    raise AdapterError(f"unknown adapter {adapter_id!r} (see `sleepy adapters list`)")


def current(store: Store) -> AdapterRecord | None:
    aid = store.get_value("current_adapter")
    return get(store, aid) if aid else None


def promote(store: Store, adapter_id: str, reason: str = "by hand") -> AdapterRecord:
    meta = get(store, adapter_id)
    history = store.get_value("adapter_history", [])
    prev = store.get_value("current_adapter")
    if prev != adapter_id:
        history.append(prev)
    store.set_value("adapter_history", history)
    store.set_value("current_adapter", adapter_id)
    # the next gate compares against this model's own eval (none yet: the baseline eval finds or runs one)
    store.set_value("current_eval_run", meta.eval_run_id)
    return record(store, replace(meta, promoted=True, promoted_reason=reason, promoted_at=time.time()))


def rollback(store: Store) -> str | None:
    """Back to the adapter that was current before the last promotion (None: the base model)."""
    history = store.get_value("adapter_history", [])
    if not history and not store.get_value("current_adapter"):
        raise AdapterError("nothing to roll back: the base model is already current")
    prev = history.pop() if history else None
    left = store.get_value("current_adapter")
    store.set_value("adapter_history", history)
    store.set_value("current_adapter", prev)
    # the baseline is the eval of the model that is current again (the base model's: found or run anew)
    store.set_value("current_eval_run", get(store, prev).eval_run_id if prev else None)
    if left:
        record(store, replace(get(store, left), promoted=False, rolled_back_at=time.time()))
    return prev


def path_for_backend(meta: AdapterRecord | None, backend: str) -> str:
    """The adapter file or folder a backend loads (config.BACKEND_KINDS: GGUF for llama.cpp and Ollama, the
    peft or mlx folder for transformers and mlx)."""
    if not meta:
        return ""
    kind = backend_kind(backend)
    key = kind.adapter if kind and kind.adapter != "any" else None
    path = getattr(meta, key) if key else next((getattr(meta, k) for k in ("gguf", "peft_dir", "mlx_dir")
                                                 if getattr(meta, k)), "")
    if not path:
        raise AdapterError(f"adapter {meta.adapter_id} has no {key or 'usable'} form for the {backend} backend")
    return path
