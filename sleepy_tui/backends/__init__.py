"""Model backends: one streaming contract (base.py), many servers; `make_backend` picks one from Settings.

Importing this package loads no model library: each backend module imports its own (ollama, llama_cpp,
torch/transformers, mlx, openai) when it is chosen.
"""

from .base import Backend, BackendUnavailable, Chunk, GenOptions, Reply, register, registered
from .fake import ScriptedBackend
from .select import make_backend

__all__ = ["Backend", "BackendUnavailable", "Chunk", "GenOptions", "Reply", "ScriptedBackend", "make_backend",
           "register", "registered"]
