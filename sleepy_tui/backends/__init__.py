"""Model backends: one streaming contract (base.py), many servers."""

from .base import Backend, BackendUnavailable, Chunk, GenOptions, Reply, register, registered

__all__ = ["Backend", "BackendUnavailable", "Chunk", "GenOptions", "Reply", "register", "registered"]
