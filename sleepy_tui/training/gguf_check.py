"""Is this file a GGUF LoRA adapter for that base model? Asked before llama.cpp sees the file.

llama.cpp trusts what it loads: a garbage file given as `lora_path` crashed the whole process (SIGSEGV) instead
of raising, leaving the run marked running and its sandbox folder behind. So the adapter is read here first
with gguf's own reader (which also checks that every tensor's data lies inside the file), and refused with one
line unless it is what llama.cpp expects (src/llama-adapter.cpp, and what gguf_export.py writes):
general.type "adapter", adapter.type "lora", the base's general.architecture, and for each adapted weight `W`
of the base a pair `W.lora_a` (ggml shape [in, r]) and `W.lora_b` ([r, out]) where W is [in, out].
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

MAGIC = b"GGUF"


class AdapterError(ValueError):
    """The file is not a LoRA adapter this base can load; the message is one line naming the file."""


@functools.lru_cache(maxsize=8)
def _base(path: str, size: int, mtime_ns: int) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    # The base GGUF is the model we run (shipped, or given by --model), not what is being checked; its header is
    # read with the export's fast reader (gguf's reader also parses the tokenizer arrays: seconds for SmolLM2).
    from .gguf_export import ExportError, _gguf_header
    try:
        meta, shapes = _gguf_header(Path(path))
    except (ExportError, OSError) as e:
        raise AdapterError(f"the base model {path} can't be read: {e}") from None
    return meta.get("general.architecture"), shapes


def base_info(base_gguf: str | os.PathLike) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    """(general.architecture, {tensor name: ggml shape}) of a model GGUF, cached per file version."""
    st = os.stat(base_gguf)
    return _base(str(base_gguf), st.st_size, st.st_mtime_ns)


def _string(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        value = field.contents()
    except Exception:  # noqa: BLE001 - a malformed field is as good as none
        return None
    return value if isinstance(value, str) else None


def check_lora_adapter(adapter: str | os.PathLike, base_gguf: str | os.PathLike) -> None:
    """Raise AdapterError unless `adapter` is a GGUF LoRA adapter whose tensors fit the model in `base_gguf`."""
    path = Path(adapter)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise AdapterError(f"adapter {path} is not a regular file")
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise AdapterError(f"adapter {path} can't be read: {e.strerror}") from None
    if magic != MAGIC:
        raise AdapterError(f"adapter {path} is not a GGUF file (it does not start with {MAGIC.decode()})")
    import gguf
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes the parser raise, it is damaged
        raise AdapterError(f"adapter {path} is a damaged GGUF file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    gtype = _string(reader, "general.type")
    if gtype != "adapter":
        raise AdapterError(f"adapter {path} is not a GGUF adapter (general.type is {gtype!r}, not 'adapter')")
    atype = _string(reader, "adapter.type")
    if atype != "lora":
        raise AdapterError(f"adapter {path} is not a LoRA adapter (adapter.type is {atype!r}, not 'lora')")
    arch = _string(reader, "general.architecture")
    base_arch, base_shapes = base_info(base_gguf)
    if arch != base_arch:
        raise AdapterError(f"adapter {path} is for architecture {arch!r}; the base model {Path(base_gguf).name} "
                           f"is {base_arch!r}")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in reader.tensors:
        weight, dot, part = t.name.rpartition(".")
        if not dot or part not in ("lora_a", "lora_b"):
            raise AdapterError(f"adapter {path}: tensor {t.name!r} is not a LoRA tensor (.lora_a / .lora_b)")
        pairs.setdefault(weight, {})[part] = tuple(int(d) for d in t.shape)
    if not pairs:
        raise AdapterError(f"adapter {path} holds no LoRA tensors")
    for weight, ab in pairs.items():
        if set(ab) != {"lora_a", "lora_b"}:
            missing = ({"lora_a", "lora_b"} - set(ab)).pop()
            raise AdapterError(f"adapter {path}: {weight}.{missing} is missing")
        want = base_shapes.get(weight)
        if want is None:
            raise AdapterError(f"adapter {path}: {weight} is not a tensor of the base model {Path(base_gguf).name} "
                               "(an adapter for another model?)")
        a, b = ab["lora_a"], ab["lora_b"]
        if len(a) != 2 or len(b) != 2 or len(want) != 2 or a[1] < 1 or a[1] != b[0] \
                or a[0] != want[0] or b[1] != want[1]:
            raise AdapterError(f"adapter {path}: {weight} has lora_a {list(a)} and lora_b {list(b)}, which do not "
                               f"fit the base's {list(want)} (an adapter for another model?)")
